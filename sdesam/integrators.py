"""Discrete SAM-family integrators on a ``Problem`` (DESIGN §3.3).

    SGD          x ← x − η g_γ
    SAM (Eq. 1)  x ← x − η ∇f_γ(x + ρ g_γ/‖g_γ‖)
    USAM         x ← x − η ∇f_γ(x + ρ g_γ)
    Reverse-SAM  x ← x − η ∇f_γ(x − ρ g_γ/‖g_γ‖)                   (Appendix A)
    ASAM         x ← x − η ∇f_γ(x + ρ T²g_γ/‖Tg_γ‖),  T = diag(|x| + ξ)  (Kwon et al. 2021)
    EGR          x ← x − η (g_γ + ρ ∇²f_γ g_γ/‖g_γ‖) = x − η ∇[f_γ + ρ‖∇f_γ‖]
    Eigen-SAM    x ← x − η ∇f_γ(x + ρ ε_γ),  ε_γ = u_γ + α sign(⟨g_γ, v̂⟩) v̂⊥  (Eq. 7–8)
    ideal Eigen-SAM: Eigen-SAM with an exact top eigenvector every step (``IdealEigenSAM``)

Every step draws one fresh minibatch per trajectory, i.i.d. across steps (uniform
B-subsets, as the SDE theory assumes), from the generator keyed (seed, step).
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import perturbations
from ._checks import check_choice, check_int, check_nonnegative
from .curvature.power import power_iteration, random_unit_vector
from .dynamics import Dynamics, RunState
from .eigenpairs import MAX_DENSE_DIM, EigenSolverMixin, check_hessian_subset, top_eigenvector
from .problem import Problem, seeded_generator
from .refresh import RefreshSchedule

__all__ = ["SGD", "SAM", "USAM", "ReverseSAM", "EGR", "Perturbed", "ASAM", "EigenSAM", "STREAM_BATCH", "STREAM_NOISE",
           "STREAM_INIT", "STREAM_EIGEN", "IdealEigenSAM"]

# Independent random streams of a run: generator key = (seed, stream, step).
STREAM_BATCH, STREAM_NOISE, STREAM_INIT = 0, 1, 2
STREAM_EIGEN = 3          # Lanczos start vectors of the eigenvector-driven dynamics


def draw_batches(problem: Problem, seed: int, index: int, num_trajectories: int,
                 per_trajectory: int = 1) -> Tensor:
    """Minibatches of step (or SDE sub-step) ``index``: LongTensor (M, per_trajectory, B).

    Keyed by (seed, STREAM_BATCH, index), so the draw is reproducible and independent
    of what ran before.
    """
    gen = seeded_generator(seed, STREAM_BATCH, index, device=problem.device)
    return problem.sample_batches(num_trajectories * per_trajectory, gen).reshape(
        num_trajectories, per_trajectory, -1)


def step_batches(problem: Problem, state: RunState) -> Tensor:
    """One minibatch per trajectory for the current step of ``state``: (M, B)."""
    return draw_batches(problem, state.seed, state.step, state.x.shape[0])[:, 0]


class SGD(Dynamics):
    """x ← x − η g_γ."""

    name = "sgd"

    def __init__(self, problem: Problem, eta: float, rho: float | None = None):
        # ``rho`` is accepted (and unused) so that all dynamics share one signature.
        super().__init__(problem, eta)

    def _step(self, state):
        batch = step_batches(self.problem, state)
        state.x.add_(self.problem.gradient(state.x, batch), alpha=-self.eta)


class _Perturbed(Dynamics):
    """x ← x − η ∇f_γ(x + ρ ε_γ) for a perturbation rule ε_γ = rule(g_γ)."""

    rule: perturbations.PerturbationRule

    def __init__(self, problem: Problem, eta: float, rho: float):
        super().__init__(problem, eta)
        self.rho = check_nonnegative("rho", rho)

    def config(self):
        return {**super().config(), "rho": self.rho, **self.rule.config()}

    def _perturbed_step(self, state: RunState, batch: Tensor, eigvec: Tensor | None = None,
                        rule: perturbations.PerturbationRule | None = None):
        rule = rule or self.rule
        g = self.problem.gradient(state.x, batch)
        eps = rule(g, eigvec, x=state.x)
        state.x.add_(self.problem.gradient(torch.add(state.x, eps, alpha=self.rho), batch), alpha=-self.eta)

    def _step(self, state):
        self._perturbed_step(state, step_batches(self.problem, state))


class SAM(_Perturbed):
    """Discrete SAM, paper Eq. 1: ε = g/‖g‖."""

    name = "sam"
    rule = perturbations.SAM()


class USAM(_Perturbed):
    """Unnormalised SAM: ε = g."""

    name = "usam"
    rule = perturbations.USAM()


class ReverseSAM(_Perturbed):
    """Reverse-SAM (Appendix A): ε = −g/‖g‖."""

    name = "reverse_sam"
    rule = perturbations.ReverseSAM()


class EGR(_Perturbed):
    """Explicit gradient regularisation with coefficient ρ: x ← x − η v¹ (SAM rule)."""

    name = "egr"
    rule = perturbations.SAM()

    def _step(self, state):
        batch = step_batches(self.problem, state)
        tv = self.problem.taylor(state.x, batch, self.rule, self.rho, order=1)
        state.x.add_(tv.v, alpha=-self.eta)


class Perturbed(_Perturbed):
    """x ← x − η ∇f_γ(x + ρ ε_γ) for any rule that needs no eigenvector estimate — e.g. a
    rule of your own (``docs/rules.md``).

    Args:
        problem, eta, rho: as for SAM.
        rule: a ``PerturbationRule`` or a rule name; rules with ``needs_point`` get x.
    """

    name = "perturbed"

    def __init__(self, problem: Problem, eta: float, rho: float, rule="sam"):
        super().__init__(problem, eta, rho)
        self.rule = perturbations.get_rule(rule)
        if self.rule.needs_eigenvector:
            raise ValueError(f"rule={self.rule!r} needs an eigenvector estimate: use EigenSAM")


class ASAM(Perturbed):
    """Adaptive SAM (Kwon et al. 2021): ε = T²g/‖Tg‖ with T = diag(|x| + ξ), x the
    current point; ``xi`` = ξ ≥ 0 (0 = davda54/sam's ``adaptive=True``)."""

    name = "asam"

    def __init__(self, problem: Problem, eta: float, rho: float, xi: float = 0.0):
        super().__init__(problem, eta, rho, rule=perturbations.ASAM(xi))


class EigenSAM(_Perturbed):
    """Eigen-SAM, paper Algorithms 1–2 with Eq. 7–8.

    Args:
        problem, eta, rho: as for SAM.
        alpha: alignment strength α ≥ 0 (paper 0.2).
        p: refresh interval of the eigenvector estimate, in steps (paper 100).
        q: power iterations per refresh, on the current minibatch (paper 5).
        p_counting: ``"global"`` (paper: counter t₁ = 1, 2, … over the whole run) or
            ``"epoch"`` (official code: the counter restarts every ``steps_per_epoch``).
        first_refresh: ``"start"`` (paper Alg. 2: refresh when t₁ mod p = 1, so v̂
            exists from the first step) or ``"after_p"`` (official code: refresh when
            t₁ mod p = 1 but not at t₁ = 1, i.e. at 0-based counts k = p, 2p, …; until
            the first refresh of the run ε = g unnormalised, i.e. USAM). With
            ``p_counting="epoch"`` this is the official schedule (``RefreshSchedule``).
        renormalize: use ε/‖ε‖ instead of Eq. 8's unnormalised ε (a variant; neither
            the paper nor the official code renormalises).
        steps_per_epoch: for ``p_counting="epoch"``; default ⌊n/B⌋.

    The first estimate is warm-started from a random unit vector drawn from the
    run's seed; later ones from the previous v̂ (stored in ``state.extra["eigvec"]``).
    """

    name = "eigen_sam"

    def __init__(self, problem: Problem, eta: float, rho: float, alpha: float = 0.2, p: int = 100,
                 q: int = 5, *, p_counting: str = "global", first_refresh: str = "start",
                 renormalize: bool = False, steps_per_epoch: int | None = None):
        super().__init__(problem, eta, rho)
        self.rule = perturbations.EigenSAM(alpha, renormalize=renormalize)
        self.q = check_int("q", q, 1)
        spe = steps_per_epoch if steps_per_epoch is not None else problem.n_train // problem.batch_size
        self.schedule = RefreshSchedule(p, p_counting, first_refresh, check_int("steps_per_epoch", spe, 1))

    @property
    def steps_per_epoch(self) -> int:
        return self.schedule.steps_per_epoch

    def config(self):
        s = self.schedule
        return {**super().config(), "p": s.p, "q": self.q, "p_counting": s.p_counting,
                "first_refresh": s.first_refresh, "steps_per_epoch": s.steps_per_epoch}

    def refreshes_at(self, step: int) -> bool:
        """Whether v̂ is re-estimated at 0-based global step ``step``."""
        return self.schedule.refreshes_at(step)

    def init_state(self, x0=None, seed=0):
        state = super().init_state(x0, seed)
        gen = seeded_generator(state.seed, STREAM_INIT, 0, device=self.problem.device)
        state.extra["eigvec"] = random_unit_vector(state.x.shape, generator=gen, dtype=state.x.dtype,
                                                   device=self.problem.device)
        return state

    def _step(self, state):
        batch = step_batches(self.problem, state)
        if self.refreshes_at(state.step):
            result = power_iteration(lambda v: self.problem.hvp(state.x, batch, v),
                                     state.extra["eigvec"], self.q)
            state.extra["eigvec"] = result.vector
            state.extra["has_estimate"] = state.x.new_ones(())
        if self.schedule.first_refresh == "after_p" and "has_estimate" not in state.extra:
            self._perturbed_step(state, batch, rule=perturbations.USAM())
        else:
            self._perturbed_step(state, batch, state.extra["eigvec"])


class IdealEigenSAM(EigenSolverMixin, _Perturbed):
    """"Ideal" Eigen-SAM: Eq. 1 with Eigen-SAM's ε_γ (Eq. 7–8) and an exact eigenvector
    at every step — the discrete process that ``sde.EigenSAMSDE`` models.

        x ← x − η ∇f_γ(x + ρ ε_γ),   ε_γ = u_γ + α·sign⟨g_γ, v⟩·v⊥,  v⊥ = v − ⟨v, u_γ⟩u_γ,

    where v is the top (largest algebraic) eigenvector, recomputed every step, of the
    full-batch Hessian ∇²f(x) (``eigvec_source="full"``: exact over the enumerated
    minibatches of a toy, or over ``hessian_subset`` training examples of a
    ``ModuleProblem``, all n when None) or of the step's minibatch Hessian H_γ
    (``"minibatch"``). Unlike Algorithm 2 there is no refresh interval and no power
    iteration: the eigenvector is exact (dense ``eigh``) or converged Lanczos
    (residual ≤ ``eig_tol``·‖H‖, warm-started from the previous step).

    ``last_eigenpairs`` holds the step's ``eigenpairs.TopEigenpairs`` (gap, residual).
    """

    name = "ideal_eigen_sam"

    def __init__(self, problem: Problem, eta: float, rho: float, alpha: float = 0.2, *,
                 eigvec_source: str = "full", hessian_subset: Tensor | None = None, eig_method: str = "auto",
                 eig_tol: float = 1e-3, eig_max_iters: int = 100, max_dense_dim: int = MAX_DENSE_DIM):
        super().__init__(problem, eta, rho)
        self.rule = perturbations.EigenSAM(alpha)
        self.eigvec_source = check_choice("eigvec_source", eigvec_source, {"full", "minibatch"})
        self.hessian_subset = check_hessian_subset(problem, hessian_subset) if eigvec_source == "full" else None
        self._init_eigensolver(eig_method, eig_tol, eig_max_iters, max_dense_dim)
        self.last_eigenpairs = None

    def config(self):
        sub = None if self.hessian_subset is None else int(self.hessian_subset.numel())
        return {**super().config(), "eigvec_source": self.eigvec_source, "hessian_subset_size": sub,
                **self._eig_config()}

    def _step(self, state):
        self._warm = state.extra.get("eig_warm")
        batch = step_batches(self.problem, state)                     # (M, B)
        eig = top_eigenvector(self, state.x, state.x, batch, state.step, state.seed)
        self.last_eigenpairs = eig
        if self.eig_method == "lanczos":
            state.extra["eig_warm"] = eig.vector.clone()
        self._perturbed_step(state, batch, eig.vector)
