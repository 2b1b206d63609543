"""Discrete SAM-family methods on a ``Problem`` (docs/math.md §3).

    SGD          x ← x − η g_γ
    SAM (Eq. 1)  x ← x − η Φ(g_γ, ∇f_γ(x + ρ ε_γ)),   ε_γ = rule(g_γ), Φ an update map
                 rules: SAM g/‖g‖, USAM g, Reverse-SAM −g/‖g‖, ASAM T²g/‖Tg‖, Fisher-SAM, yours;
                 update maps: the perturbed gradient (SAM), GSAM, WSAM; m-SAM splits γ into
                 m micro-batches, each perturbed along its own gradient, and averages
    EGR          x ← x − η (g_γ + ρ ∇²f_γ g_γ/‖g_γ‖) = x − η ∇[f_γ + ρ‖∇f_γ‖]   (Appendix A)
    Eigen-SAM    x ← x − η ∇f_γ(x + ρ ε_γ),  ε_γ = u_γ + α sign(⟨g_γ, v̂⟩) v̂⊥     (Eq. 7–8, Alg. 2)
    ideal Eigen-SAM: Eigen-SAM with an exact top eigenvector every step
    SAM-SVAG     l steps of x ← x − (η/l)[c₁Φ_{γ₁} + c₂Φ_{γ₂}] per η, c₁,₂ = (1 ± √(2l−1))/2

Every step draws one fresh minibatch per trajectory, i.i.d. across steps (uniform
B-subsets, as the SDE theory assumes), from the generator keyed (seed, batch stream,
step); a rule that samples draws from (seed, rule stream, step).

Names in records: the method's (``sdesam.updates.method_name``): ``"sam"``, ``"usam"``,
``"asam"``, ``"sign_sam"`` (a rule of your own), ``"gsam"``, ``"wsam"``, ``"msam"``;
``"sgd"``, ``"egr"``, ``"eigen_sam"``, ``"ideal_eigen_sam"``, ``"<method>_svag"``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import rules
from ._checks import check_int, check_nonnegative
from ._streams import STREAM_INIT, STREAM_RULE, draw_batches, seeded_generator, substep_key
from .curvature.power import power_iteration, random_unit_vector
from .dynamics import Dynamics, RunState
from .eigenpairs import MAX_DENSE_DIM, EigenSolverMixin
from .problem import Problem
from .refresh import RefreshSchedule
from .updates import get_update, method_name

__all__ = ["DiscreteSGD", "DiscreteSAM", "DiscreteEGR", "DiscreteEigenSAM", "IdealEigenSAM", "SAMSVAG",
           "svag_coefficients", "step_batches"]


def step_batches(problem: Problem, state: RunState, substep: int = 0, per_trajectory: int = 1,
                 substeps: int = 1) -> Tensor:
    """Minibatches of the current step of ``state`` (its sub-step ``substep`` of ``substeps``):
    (M, B), or (M, per_trajectory, B)."""
    b = draw_batches(problem, state.seed, state.step, state.x.shape[0], per_trajectory, substep, substeps=substeps)
    return b[:, 0] if per_trajectory == 1 else b


class DiscreteSGD(Dynamics):
    """x ← x − η g_γ."""

    name = "sgd"

    def __init__(self, problem: Problem, eta: float):
        super().__init__(problem, eta)

    def _step(self, state):
        batch = step_batches(self.problem, state)
        state.x.add_(self.problem.gradient(state.x, batch), alpha=-self.eta)


class DiscreteSAM(Dynamics):
    """x ← x − η Φ(g_γ, ∇f_γ(x + ρ ε_γ)) for a perturbation rule and an update map.

    Args:
        problem: the ``Problem``.
        eta: learning rate η > 0.
        rho: radius ρ ≥ 0.
        rule: a ``PerturbationRule`` or a rule name (default SAM's ε = g/‖g‖; Eq. 1).
            Rules that need an eigenvector estimate belong to ``DiscreteEigenSAM`` /
            ``IdealEigenSAM``.
        update: an ``UpdateMap`` or its name (default: the perturbed gradient itself).
        micro_batches: m ≥ 1 (m-SAM): the minibatch of B examples is split into m
            micro-batches of B/m (m must divide B); each takes its own ε and perturbed
            gradient, and Φ is averaged over them. m = 1 is the plain method.
    """

    def __init__(self, problem: Problem, eta: float, rho: float, rule="sam", update=None,
                 micro_batches: int = 1):
        super().__init__(problem, eta)
        self.rho = check_nonnegative("rho", rho)
        self.rule = rules.get_rule(rule)
        self.update = get_update(update)
        self.micro_batches = check_micro_batches(problem, micro_batches)
        self._micro = problem.with_batch_size(problem.batch_size // self.micro_batches) \
            if self.micro_batches > 1 else problem
        if self.rule.needs_eigenvector and not self._supplies_eigenvector:
            raise ValueError(f"rule={self.rule!r} needs an eigenvector estimate: use eigen_sam "
                             "(Algorithm 2) or ideal_eigen_sam")

    _supplies_eigenvector = False
    #: ``observer(step, x, batch, eps)``, when set, sees every perturbation ε_γ the method
    #: forms (x (M, d), batch (M, B), eps (M, d); per micro-batch for m-SAM) — for diagnostics
    #: such as the alignment of ε with the minibatch Hessian's top eigenvector.
    observer = None
    _current_step = 0

    @property
    def name(self) -> str:
        return method_name(self.rule.name, self.update, self.micro_batches)

    def config(self):
        return {**super().config(), "rho": self.rho, **self.rule.config(), **self.update.config(),
                "micro_batches": self.micro_batches}

    def rule_generator(self, state: RunState, substep: int = 0, substeps: int = 1) -> torch.Generator | None:
        """The generator of a rule that samples: keyed by (seed, rule stream, step, sub-step)."""
        if not self.rule.needs_generator:
            return None
        return seeded_generator(*substep_key(state.seed, STREAM_RULE, state.step, substep, substeps),
                                device=self.problem.device)

    def direction(self, x: Tensor, batch: Tensor, eigvec: Tensor | None = None,
                  generator: torch.Generator | None = None, rule=None) -> Tensor:
        """Φ(g_γ, ∇f_γ(x + ρ ε_γ)) for points x (*Sx, d) and minibatches (*Sb, B), shape (*S, d);
        with m micro-batches the mean of Φ over them."""
        rule = rule or self.rule
        if self.micro_batches > 1:
            m = self.micro_batches
            micro = batch.reshape(*batch.shape[:-1], m, batch.shape[-1] // m)
            xm = x.unsqueeze(-2)
            em = None if eigvec is None or eigvec.dim() == 1 else eigvec.unsqueeze(-2)
            return self._direction(self._micro, xm, micro, em if em is not None else eigvec,
                                   generator, rule).mean(-2)
        return self._direction(self.problem, x, batch, eigvec, generator, rule)

    def _direction(self, problem, x, batch, eigvec, generator, rule):
        g = problem.gradient(x, batch)
        eps = rule(g, eigvec, x=x, generator=generator)
        if self.observer is not None:
            self.observer(self._current_step, x, batch, eps)
        p = problem.gradient(x + self.rho * eps, batch)
        return p if self.update.is_identity else self.update(g, p)

    def _eigvec(self, state: RunState, batch: Tensor) -> Tensor | None:
        """The eigenvector the rule aligns with this step (hook of the Eigen-SAM dynamics)."""
        return None

    def _step(self, state):
        self._current_step = state.step
        batch = step_batches(self.problem, state)
        eigvec = self._eigvec(state, batch)
        state.x.add_(self.direction(state.x, batch, eigvec, self.rule_generator(state)), alpha=-self.eta)


def check_micro_batches(problem: Problem, micro_batches) -> int:
    """m ≥ 1 dividing the batch size B (m-SAM)."""
    m = check_int("micro_batches", micro_batches, 1)
    if problem.batch_size % m:
        raise ValueError(f"micro_batches={m} must divide the batch size B={problem.batch_size}")
    return m


class DiscreteEGR(DiscreteSAM):
    """Explicit gradient regularisation with coefficient ρ: x ← x − η v¹ (SAM rule), the
    gradient of f_γ + ρ‖∇f_γ‖ (Appendix A)."""

    def __init__(self, problem: Problem, eta: float, rho: float):
        super().__init__(problem, eta, rho)

    @property
    def name(self) -> str:
        return "egr"

    def _step(self, state):
        batch = step_batches(self.problem, state)
        tv = self.problem.taylor(state.x, batch, self.rule, self.rho, order=1)
        state.x.add_(tv.v, alpha=-self.eta)


class DiscreteEigenSAM(DiscreteSAM):
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

    _supplies_eigenvector = True

    def __init__(self, problem: Problem, eta: float, rho: float, alpha: float = 0.2, p: int = 100,
                 q: int = 5, *, p_counting: str = "global", first_refresh: str = "start",
                 renormalize: bool = False, steps_per_epoch: int | None = None):
        super().__init__(problem, eta, rho, rule=rules.EigenSAMRule(alpha, renormalize=renormalize))
        self.q = check_int("q", q, 1)
        spe = steps_per_epoch if steps_per_epoch is not None else max(1, problem.n_train // problem.batch_size)
        self.schedule = RefreshSchedule(p, p_counting, first_refresh, check_int("steps_per_epoch", spe, 1))

    @property
    def name(self) -> str:
        return "eigen_sam"

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
        gen = seeded_generator(state.seed, STREAM_INIT, 0)
        state.extra["eigvec"] = random_unit_vector(state.x.shape, generator=gen, dtype=state.x.dtype,
                                                   device=self.problem.device)
        return state

    def _step(self, state):
        self._current_step = state.step
        batch = step_batches(self.problem, state)
        if self.refreshes_at(state.step):
            result = power_iteration(lambda v: self.problem.hvp(state.x, batch, v),
                                     state.extra["eigvec"], self.q)
            state.extra["eigvec"] = result.vector
            state.extra["has_estimate"] = state.x.new_ones(())
        if self.schedule.first_refresh == "after_p" and "has_estimate" not in state.extra:
            direction = self.direction(state.x, batch, rule=rules.USAMRule())
        else:
            direction = self.direction(state.x, batch, state.extra["eigvec"])
        state.x.add_(direction, alpha=-self.eta)


class IdealEigenSAM(EigenSolverMixin, DiscreteSAM):
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

    _supplies_eigenvector = True

    def __init__(self, problem: Problem, eta: float, rho: float, alpha: float = 0.2, *,
                 eigvec_source: str = "full", hessian_subset: Tensor | None = None, eig_method: str = "auto",
                 eig_tol: float = 1e-3, eig_max_iters: int = 100, max_dense_dim: int = MAX_DENSE_DIM):
        super().__init__(problem, eta, rho, rule=rules.EigenSAMRule(alpha))
        self._init_eigensolver(eig_method, eig_tol, eig_max_iters, max_dense_dim,
                               eigvec_source=eigvec_source, hessian_subset=hessian_subset)
        self.last_eigenpairs = None

    @property
    def name(self) -> str:
        return "ideal_eigen_sam"

    def config(self):
        return {**super().config(), **self._eig_config()}

    def _eigvec(self, state, batch):
        eig = self.top_eigenvector(state.x, state.x, batch, state.seed, state.step)
        self.last_eigenpairs = eig
        return eig.vector


def svag_coefficients(l: int) -> tuple[float, float]:
    """SVAG's c₁, c₂ = (1 ± √(2l − 1))/2: c₁ + c₂ = 1 and c₁² + c₂² = l."""
    s = math.sqrt(2 * l - 1)
    return (1 + s) / 2, (1 - s) / 2


class SAMSVAG(DiscreteSAM):
    """SAM-SVAG: SVAG (Li, Malladi & Arora 2021) applied to a SAM-family method.

    One step of size η is l steps of

        x ← x − (η/l) [c₁ Φ_{γ₁}(x) + c₂ Φ_{γ₂}(x)],   c₁,₂ = (1 ± √(2l − 1))/2,

    with two independent minibatches, each taking its own rule's perturbed gradient,
    Φ_γ = Φ(g_γ, ∇f_γ(x + ρ ε_γ)). Per unit of time its mean is E Φ_γ and its covariance
    η·Cov Φ_γ for every l, and its higher moments vanish as l → ∞, where it converges
    weakly to the untruncated SAM SDE (``sde.UntruncatedSAMSDE``): drift −E Φ_γ,
    diffusion η·Cov Φ_γ. l = 1 (c₁ = 1, c₂ = 0) is the discrete method itself, bit for bit
    (one minibatch, the same draws).

    Args:
        problem, eta, rho, rule, update, micro_batches: as ``DiscreteSAM``.
        l: SVAG's factor l ≥ 1.

    Sub-step j of step k draws its two minibatches from the key of its start time k + j/l.
    """

    def __init__(self, problem: Problem, eta: float, rho: float, l: int = 1, rule="sam", update=None,
                 micro_batches: int = 1):
        super().__init__(problem, eta, rho, rule=rule, update=update, micro_batches=micro_batches)
        self.l = check_int("l", l, 1)
        self.c1, self.c2 = svag_coefficients(self.l)

    @property
    def name(self) -> str:
        return super().name + "_svag"

    def config(self):
        return {**super().config(), "l": self.l, "c1": self.c1, "c2": self.c2}

    def increment(self, x: Tensor, batches: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One SVAG step's increment −(η/l)[c₁Φ_{γ₁}(x) + c₂Φ_{γ₂}(x)] for x (M, d) and the two
        minibatches of each trajectory, batches (M, 2, B); shape (M, d)."""
        phi = self.direction(x[:, None, :], batches, None, generator)
        h = self.eta / self.l
        return phi[:, 0] * (-h * self.c1) + phi[:, 1] * (-h * self.c2)

    def _step(self, state):
        if self.l == 1:
            return super()._step(state)
        self._current_step = state.step
        for j in range(self.l):
            batches = step_batches(self.problem, state, substep=j, per_trajectory=2, substeps=self.l)  # (M, 2, B)
            state.x.add_(self.increment(state.x, batches, self.rule_generator(state, j, self.l)))
