"""The SGD SDE and the second- and third-order SAM SDEs (DESIGN §3.2).

    dX = b(X) dt + √η Σ(X)^{1/2} dW,    time t = kη.

| model    | drift b   | diffusion Σ                                                    |
|----------|-----------|----------------------------------------------------------------|
| SGD-SDE  | −E v⁰     | Σ¹¹                                                            |
| SAM-SDE2 | −E v¹     | Σ¹¹ + ρ(Σ¹² + Σ¹²ᵀ)                             (paper Eq. 3)  |
| SAM-SDE3 | −E v²     | Σ¹¹ + ρ(Σ¹² + Σ¹²ᵀ) + ρ²(Σ²² + ½(Σ¹³ + Σ¹³ᵀ))    (paper Eq. 4)  |

Expectations over minibatches: exact when ``n_batches="exact"`` (all C(n, B)
minibatches, for toy problems), else Monte Carlo over K i.i.d. minibatches drawn
fresh at every Euler sub-step.

Diffusion (``diffusion="taylor"``, the default): the sample covariance of the
per-minibatch Taylor vectors v^order, represented by G = [v_1 − v̄, …, v_K − v̄]/√(K−1)
(d × K; 1/√N with exact enumeration) so that G Gᵀ = Cov(v) and √η G ΔW samples the
noise at cost O(dK) — no d × d matrix is ever formed. Cov(v^order) equals the table's
Σ up to ρ³ (SDE2: ρ²Σ²²) or ρ³ (SDE3: ρ³/2 (Σ²³ + Σ²³ᵀ) + ρ⁴/4 Σ³³) terms, below
each model's own error, and is positive semi-definite by construction.
``diffusion="paper"`` uses the table's exact formula, an indefinite combination of the
sample blocks, projected to PSD inside the span of the samples; the fraction of
negative eigenvalue mass dropped is kept in ``last_dropped_mass``.

Drift-noise correction: the drift estimate v̄ from K samples carries Δt²Σ/K of extra
variance per sub-step. ``correct_drift_noise=True`` (default, Monte Carlo only)
scales the diffusion by c = √(1 − Δt/(ηK)) so that the total per-sub-step covariance
is exactly η Δt Σ.

The SDE classes implement torchsde's interface (``noise_type="general"``,
``sde_type="ito"``, ``f``, ``g``, ``f_and_g_prod``) so ``torchsde.sdeint(sde, y0, ts,
dt=sde.dt, method="euler")`` integrates them; they are also ``Dynamics`` with a
fixed-step Euler–Maruyama loop of their own (``solver="euler"``, the default,
measured faster because it skips torchsde's interval bookkeeping). The minibatches of
sub-step i are keyed by (seed, i) with i = round(t/Δt), so ``f``, ``g`` and
``f_and_g_prod`` at the same time see the same minibatches, whoever calls them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._checks import check_choice, check_int, check_nonnegative
from .dynamics import Dynamics, RunState
from .eigenpairs import (MAX_DENSE_DIM, EigenSolverMixin, check_hessian_subset, minibatch_top_eigenpairs,
                         top_eigenvector)
from .integrators import STREAM_EIGEN, STREAM_NOISE, draw_batches
from .oracles import check_order
from .perturbations import Direction, EigenSAM, get_rule
from .problem import Problem, derived_seed, seeded_generator

__all__ = ["SAMFamilySDE", "SGDSDE", "SAMSDE2", "SAMSDE3", "AlignedSDE", "AlignedSDE5", "AlignedSDE6",
           "EigenSAMSDE"]


class SAMFamilySDE(Dynamics):
    """dX = −E[v^order] dt + √η Cov(v^order)^{1/2} dW for a perturbation rule.

    Args:
        problem: the ``Problem``.
        eta: learning rate η (sets the noise scale √η and the time of one step).
        rho: SAM radius ρ ≥ 0 (ignored for order 0).
        order: 0 (SGD-SDE), 1 (SAM-SDE2), 2 (SAM-SDE3).
        rule: perturbation rule (default SAM's g/‖g‖).
        n_batches: K ≥ 2 Monte Carlo minibatches per sub-step, or ``"exact"`` to
            enumerate all minibatches (toy problems).
        substeps: m ≥ 1 Euler sub-steps per η (Δt = η/m). Default 1.
        correct_drift_noise: apply c = √(1 − Δt/(ηK)) (Monte Carlo only).
        diffusion: ``"taylor"`` (Cov of v, PSD, default) or ``"paper"`` (exact table
            formula projected to PSD).
        solver: ``"euler"`` (own loop) or ``"torchsde"`` (``torchsde.sdeint``, method
            "euler", Brownian increments from a ``BrownianInterval``).
        seed: seed for direct torchsde use (``Dynamics`` runs set it per run).
    """

    noise_type = "general"
    sde_type = "ito"
    #: subclasses that compute the eigenvector a rule needs (``EigenSAMSDE``) set this
    supplies_eigenvector = False
    #: whether the drift needs the components h, t of the Taylor vectors (``AlignedSDE``)
    taylor_components = False

    def __init__(self, problem: Problem, eta: float, rho: float = 0.0, order: int = 2, *,
                 rule="sam", n_batches: int | str = 8, substeps: int = 1,
                 correct_drift_noise: bool = True, diffusion: str = "taylor",
                 solver: str = "euler", seed: int = 0):
        super().__init__(problem, eta)
        self.rho = check_nonnegative("rho", rho)
        self.order = check_order(order)
        self.rule = get_rule(rule)
        if self.rule.needs_eigenvector and not self.supplies_eigenvector:
            raise ValueError(f"the SDEs support rules without an eigenvector estimate, got {self.rule!r}")
        if n_batches == "exact":
            self.exact = True
            self._all_batches = problem.enumerate_batches()
            self.n_batches = self._all_batches.shape[0]
        else:
            self.exact = False
            self.n_batches = check_int("n_batches (K, needed for a covariance)", n_batches, 2)
        self.substeps = check_int("substeps", substeps, 1)
        self.dt = self.eta / self.substeps
        self.correct_drift_noise = bool(correct_drift_noise)
        self.diffusion = check_choice("diffusion", diffusion, {"taylor", "paper"})
        self.solver = check_choice("solver", solver, {"euler", "torchsde"})
        self.seed = int(seed)
        self.last_dropped_mass = None
        self._cache = None

    # -- description ----------------------------------------------------------------
    @property
    def noise_correction(self) -> float:
        """c = √(1 − Δt/(ηK)) when the correction applies, else 1."""
        if self.exact or not self.correct_drift_noise:
            return 1.0
        return math.sqrt(1.0 - self.dt / (self.eta * self.n_batches))

    @property
    def brownian_size(self) -> int:
        """Number of Brownian channels: K (or N), or 3K / 2K for the paper diffusion."""
        return self.n_batches * (self.order + 1 if self.diffusion == "paper" else 1)

    def config(self):
        return {**super().config(), "rho": self.rho, "order": self.order, **self.rule.config(),
                "n_batches": "exact" if self.exact else self.n_batches,
                "n_batches_value": self.n_batches, "substeps": self.substeps, "dt": self.dt,
                "correct_drift_noise": self.correct_drift_noise, "noise_correction": self.noise_correction,
                "diffusion": self.diffusion, "solver": self.solver}

    # -- drift and diffusion --------------------------------------------------------
    def substep_index(self, t) -> int:
        return int(round(float(t) / self.dt))

    def _batches(self, M: int, index: int) -> Tensor:
        if self.exact:
            return self._all_batches                     # (N, B), shared by all trajectories
        return draw_batches(self.problem, self.seed, index, M, self.n_batches)   # (M, K, B)

    def drift_and_factor(self, t, y: Tensor) -> tuple[Tensor, Tensor]:
        """(b, F) at time t for states y (M, d): drift b (M, d) and the diffusion factor
        F (M, d, brownian_size) with F Fᵀ = η c² Σ̂, so dX = b dt + F dW."""
        index = self.substep_index(t)
        if self._cache is not None and self._cache[0] == index and torch.equal(self._cache[1], y):
            return self._cache[2], self._cache[3]
        M = y.shape[0]
        batches = self._batches(M, index)
        tv = self._taylor(y[:, None, :], batches, index)
        K = tv.v.shape[1]
        denom = K if self.exact else K - 1               # population vs. unbiased covariance
        scale = math.sqrt(self.eta) * self.noise_correction
        vbar = tv.v.mean(1)
        if self.diffusion == "taylor":
            factor = (tv.v - vbar[:, None]).transpose(1, 2) * (scale / math.sqrt(denom))
        else:
            factor = self._paper_factor(tv, denom) * scale
        w = self._drift_vectors(tv, y[:, None, :], batches, index)
        drift = -(vbar if w is tv.v else w.mean(1))
        self._cache = (index, y.clone(), drift, factor)
        return drift, factor

    def _taylor(self, x: Tensor, batches: Tensor, index: int):
        """Per-minibatch Taylor vectors at x (M, 1, d) for ``batches`` (hook: a subclass
        may supply the rule's eigenvector)."""
        return self.problem.taylor(x, batches, self.rule, self.rho, self.order,
                                   components=self.taylor_components or self.diffusion == "paper")

    def _drift_vectors(self, tv, x: Tensor, batches: Tensor, index: int) -> Tensor:
        """Per-minibatch vectors w_γ (M, K, d) whose mean is minus the drift (hook; the
        SAM family's is v^order itself, which the diffusion's covariance is also made of)."""
        return tv.v

    def _paper_factor(self, tv, denom: int) -> Tensor:
        """A factor F (M, d, (order+1)K) with F Fᵀ = PSD part of the table's Σ̂."""
        rho = self.rho
        comps = [tv.g] + ([tv.h] if self.order >= 1 else []) + ([tv.t] if self.order == 2 else [])
        A = torch.cat([c - c.mean(1, keepdim=True) for c in comps], dim=1).transpose(1, 2)  # (M, d, J)
        K = tv.g.shape[1]
        eye = torch.eye(K, dtype=A.dtype, device=A.device)
        # coefficient blocks C_ab with Σ̂ = Σ_ab C_ab Cov(a, b): [[1, ρ, ρ²/2], [ρ, ρ², 0], [ρ²/2, 0, 0]]
        coef = [[1.0, rho, rho * rho / 2], [rho, rho * rho, 0.0], [rho * rho / 2, 0.0, 0.0]]
        if self.order == 1:
            coef = [[1.0, rho], [rho, 0.0]]
        elif self.order == 0:
            coef = [[1.0]]
        Mmat = torch.cat([torch.cat([c * eye for c in row], 1) for row in coef], 0) / denom
        Q, R = torch.linalg.qr(A)                                        # A = Q R
        S = R @ Mmat @ R.transpose(1, 2)
        lam, V = torch.linalg.eigh(0.5 * (S + S.transpose(1, 2)))
        neg = lam.clamp_max(0).abs().sum(-1)
        total = lam.abs().sum(-1).clamp_min(torch.finfo(lam.dtype).tiny)
        self.last_dropped_mass = (neg / total).max().item()
        factor = Q @ (V * lam.clamp_min(0).sqrt()[:, None, :])     # (M, d, min(d, J))
        J = A.shape[-1]
        if factor.shape[-1] < J:     # d < J: pad so the number of Brownian channels stays J
            factor = torch.cat([factor, factor.new_zeros(*factor.shape[:-1], J - factor.shape[-1])], -1)
        return factor

    # torchsde interface ---------------------------------------------------------------
    def f(self, t, y):
        """Drift b(y), shape (M, d)."""
        return self.drift_and_factor(t, y)[0]

    def g(self, t, y):
        """Diffusion matrix, shape (M, d, brownian_size)."""
        return self.drift_and_factor(t, y)[1]

    def f_and_g_prod(self, t, y, v):
        """(b(y), F(y) v) for Brownian increments v (M, brownian_size)."""
        drift, factor = self.drift_and_factor(t, y)
        return drift, torch.einsum("mdk,mk->md", factor, v)

    # -- Dynamics -------------------------------------------------------------------
    def init_state(self, x0=None, seed=0):
        state = super().init_state(x0, seed)
        self.seed = state.seed
        return state

    def brownian_increment(self, state: RunState, index: int) -> Tensor:
        """ΔW ~ N(0, Δt I) for sub-step ``index``, keyed by (seed, noise stream, index)."""
        gen = seeded_generator(state.seed, STREAM_NOISE, index, device=self.problem.device)
        M = state.x.shape[0]
        return torch.randn(M, self.brownian_size, generator=gen, dtype=state.x.dtype,
                           device=self.problem.device) * math.sqrt(self.dt)

    def euler_substep(self, state: RunState, index: int, dW: Tensor) -> None:
        """X ← X + b Δt + F ΔW at sub-step ``index`` (time index·Δt)."""
        drift, gprod = self.f_and_g_prod(index * self.dt, state.x, dW)
        state.x += drift * self.dt + gprod

    def _step(self, state):
        self.seed = state.seed
        if self.solver == "torchsde":
            state.x = self._torchsde_step(state)
            return
        for j in range(self.substeps):
            index = state.step * self.substeps + j
            self.euler_substep(state, index, self.brownian_increment(state, index))

    def _torchsde_step(self, state: RunState) -> Tensor:
        import torchsde
        t0 = state.step * self.eta
        # A fresh BrownianInterval per step, seeded by (seed, step), so that steps are
        # independent and a resumed run draws the same increments.
        entropy = derived_seed(state.seed, STREAM_NOISE, state.step)
        bm = torchsde.BrownianInterval(t0=t0, t1=t0 + self.eta, size=(state.x.shape[0], self.brownian_size),
                                       dtype=state.x.dtype, device=state.x.device, entropy=entropy)
        ts = torch.tensor([t0, t0 + self.eta], dtype=state.x.dtype, device=state.x.device)
        ys = torchsde.sdeint(self, state.x, ts, bm=bm, dt=self.dt, method="euler")
        return ys[-1]


class SGDSDE(SAMFamilySDE):
    """SGD SDE (Li et al. 2017): drift −∇f, diffusion Σ¹¹."""

    name = "sgd_sde"

    def __init__(self, problem, eta, rho: float = 0.0, **kwargs):
        super().__init__(problem, eta, rho, order=0, **kwargs)


class SAMSDE2(SAMFamilySDE):
    """Second-order SAM SDE (Compagnoni et al. 2023, paper Eq. 3)."""

    name = "sam_sde2"

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, order=1, **kwargs)


class SAMSDE3(SAMFamilySDE):
    """Third-order SAM SDE (Luo et al., paper Eq. 4)."""

    name = "sam_sde3"

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, order=2, **kwargs)


# ------------------------------------------------------------------------------------
# Corollary 4.1.1's aligned-limit SDEs (paper Eq. 5–6) and an Eigen-SAM SDE (DESIGN §3.3b)
# ------------------------------------------------------------------------------------
class AlignedSDE(EigenSolverMixin, SAMFamilySDE):
    """The aligned-limit SDEs of Corollary 4.1.1 (paper Eq. 5 and Eq. 6).

    With H_γ = ∇²f_γ(x), (λ₁, v₁) its top (largest algebraic) eigenpair per minibatch,
    u_γ = g_γ/‖g_γ‖ and s* = sign⟨g_γ, v₁⟩ (sign 0 = 0):

        Eq. 5  drift −E[g_γ + ρ H_γ u_γ + (ρ²/2) ∇³f_γ[v₁, v₁]]
        Eq. 6  drift −E[g_γ + ρ s* λ₁ v₁ + (ρ²/2) ∇³f_γ[v₁, v₁]]

    ρH_γu_γ = ρ∇‖∇f_γ‖ and ∇³f_γ[v₁, v₁] = ∇λ₁(H_γ) (simple λ₁, Assumption B.2); both
    are invariant under v₁ → −v₁. The diffusion is SAM-SDE3's (Eq. 4) in either
    representation (``diffusion="taylor"``: Cov of SAM's Taylor vectors v²; ``"paper"``:
    the table formula): only the drift changes. When every u_γ = ±v₁ both drifts equal
    SAM-SDE3's. H_γu_γ and ∇³f_γ[v₁, v₁] come from the problem's Taylor oracles (SAM's
    with ``components=True``, and ``perturbations.Direction`` with ε = v₁).

    v₁ per minibatch and sub-step: ``sdesam.eigenpairs.minibatch_top_eigenpairs``
    (dense float64 ``eigh`` when d ≤ ``max_dense_dim``, else Lanczos warm-started from
    the previous sub-step's v₁ of the same minibatch slot, residual ≤ ``eig_tol``·‖H_γ‖).

    Diagnostics: ``eigen_history`` gets one dict per sub-step (sub-step index, smallest
    gap λ₁ − λ₂ and smallest relative gap (λ₁ − λ₂)/‖H_γ‖ over the minibatches, largest
    residual ‖H_γ v₁ − λ₁ v₁‖ computed from the oracle's H_γ v₁, mean λ₁, products spent),
    and a ``RuntimeWarning`` is issued once, naming the sub-step and step, when a
    relative gap falls below ``gap_rtol`` or below the relative residual of v₁ (∇λ₁ is
    then ill-conditioned, or v₁ not resolved by the eigensolver's tolerance).

    Args:
        form: ``"eq5"`` or ``"eq6"``.
        eig_method, eig_tol, eig_max_iters, max_dense_dim: the eigensolver.
        gap_rtol: relative gap below which the warning fires.
        other keyword arguments: as ``SAMFamilySDE`` (the rule is SAM's, the order 2).
    """

    name = "aligned_sde"
    taylor_components = True

    def __init__(self, problem: Problem, eta: float, rho: float, *, form: str = "eq5", eig_method: str = "auto",
                 eig_tol: float = 1e-3, eig_max_iters: int = 100, max_dense_dim: int | None = None,
                 gap_rtol: float = 1e-3, **kwargs):
        super().__init__(problem, eta, rho, order=2, rule="sam", **kwargs)
        self.form = check_choice("form", form, {"eq5", "eq6"})
        self._init_eigensolver(eig_method, eig_tol, eig_max_iters,
                               MAX_DENSE_DIM if max_dense_dim is None else max_dense_dim)
        self.gap_rtol = check_nonnegative("gap_rtol", gap_rtol)
        self.eigen_history: list[dict] = []
        self._warned = False

    def config(self):
        return {**super().config(), "form": self.form, **self._eig_config(), "gap_rtol": self.gap_rtol}

    def _drift_vectors(self, tv, x, batches, index):
        S = tv.g.shape[:-1]
        gen = seeded_generator(self.seed, STREAM_EIGEN, index, device=self.problem.device)
        eig = minibatch_top_eigenpairs(self.problem, x, batches, method=self.eig_method, tol=self.eig_tol,
                                       max_iters=self.eig_max_iters, v0=self._warm_start(tv.g.shape),
                                       max_dense_dim=self.max_dense_dim, generator=gen)
        v1 = eig.vector.expand(*S, self.problem.dim)
        if self.eig_method == "lanczos":
            self._warm = v1.clone()
        tv1 = self.problem.taylor(x, batches, Direction(), self.rho, 2, eigvec=v1, components=True)
        self._record(index, eig, tv1.h, v1)
        if self.form == "eq5":
            w = tv.g + self.rho * tv.h
        else:
            s = torch.einsum("...d,...d->...", tv.g, v1).sign()
            w = tv.g + (self.rho * s * eig.value)[..., None] * v1
        return w.add_(tv1.t, alpha=0.5 * self.rho * self.rho)

    def _record(self, index: int, eig, hv: Tensor, v1: Tensor) -> None:
        residual = torch.linalg.vector_norm(hv - eig.value[..., None] * v1, dim=-1)
        rel_gap = eig.gap / eig.scale.clamp_min(torch.finfo(eig.scale.dtype).tiny)
        row = {"substep": index, "step": index // self.substeps, "gap_min": float(eig.gap.min()),
               "relative_gap_min": float(rel_gap.min()), "residual_max": float(residual.max()),
               "relative_residual_max": float((residual / eig.scale.clamp_min(
                   torch.finfo(eig.scale.dtype).tiny)).max()),
               "lambda1_mean": float(eig.value.mean()), "eig_hvps": eig.num_hvps}
        self.eigen_history.append(row)
        if not self._warned and row["relative_gap_min"] < max(self.gap_rtol, row["relative_residual_max"]):
            self._warned = True
            import warnings
            warnings.warn(f"{self.name}: at sub-step {index} (step {row['step']}) a minibatch Hessian has "
                          f"relative eigen-gap (λ₁ − λ₂)/‖H‖ = {row['relative_gap_min']:.3g}, below gap_rtol="
                          f"{self.gap_rtol} or the relative residual {row['relative_residual_max']:.3g} of v₁: "
                          "λ₁ is nearly repeated or v₁ unresolved, and ∇λ₁ = ∇³f[v₁, v₁] is ill-conditioned "
                          "(Assumption B.2)", RuntimeWarning, stacklevel=2)


class AlignedSDE5(AlignedSDE):
    """Corollary 4.1.1, paper Eq. 5: drift −[∇f + ρE H_γu_γ + (ρ²/2)E∇λ₁(H_γ)], Σ^SAM."""

    name = "aligned_sde5"

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, form="eq5", **kwargs)


class AlignedSDE6(AlignedSDE):
    """Corollary 4.1.1, paper Eq. 6: drift −[∇f + ρE s*λ₁v₁ + (ρ²/2)E∇λ₁(H_γ)], Σ^SAM."""

    name = "aligned_sde6"

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, form="eq6", **kwargs)


class EigenSAMSDE(EigenSolverMixin, SAMFamilySDE):
    """The third-order SDE of Eigen-SAM's update (not in the paper; docs/eigen_sam_sde.md).

    Derived as Eq. 4 with Eigen-SAM's perturbation (Eq. 7–8)
    ε_γ = u_γ + α·sign⟨g_γ, v⟩·v⊥ (v⊥ = v − ⟨v, u_γ⟩u_γ, not renormalised):

        drift −E[g_γ + ρH_γε_γ + (ρ²/2)∇³f_γ(ε_γ, ε_γ)],   diffusion Cov of the same vectors,

    with v an exact top eigenvector: of the full-batch Hessian ∇²f(X_t)
    (``eigvec_source="full"``, default; exact by enumerating the minibatches of a toy,
    or the Hessian over ``hessian_subset`` training examples of a ``ModuleProblem``,
    all of them when None) or of each minibatch Hessian H_γ (``"minibatch"``). It models
    ``integrators.IdealEigenSAM`` (Eq. 1 with that ε_γ every step). α = 0 is SAM-SDE3.

    Args:
        alpha: α ≥ 0 (paper 0.2).
        eigvec_source: ``"full"`` or ``"minibatch"``.
        hessian_subset: LongTensor of training indices for ``"full"`` on a ModuleProblem.
        eig_method, eig_tol, eig_max_iters, max_dense_dim: the eigensolver
            (``sdesam.eigenpairs``); Lanczos is warm-started from the previous sub-step.
        other keyword arguments: as ``SAMFamilySDE`` (order 2).
    """

    name = "eigen_sam_sde"
    supplies_eigenvector = True

    def __init__(self, problem: Problem, eta: float, rho: float, alpha: float = 0.2, *,
                 eigvec_source: str = "full", hessian_subset: Tensor | None = None, eig_method: str = "auto",
                 eig_tol: float = 1e-3, eig_max_iters: int = 100, max_dense_dim: int | None = None, **kwargs):
        if "rule" in kwargs:
            raise ValueError("EigenSAMSDE sets its own rule (Eigen-SAM with alpha); got rule="
                             f"{kwargs['rule']!r}")
        super().__init__(problem, eta, rho, order=2, rule=EigenSAM(alpha), **kwargs)
        self.eigvec_source = check_choice("eigvec_source", eigvec_source, {"full", "minibatch"})
        self.hessian_subset = check_hessian_subset(problem, hessian_subset) if eigvec_source == "full" else None
        self._init_eigensolver(eig_method, eig_tol, eig_max_iters,
                               MAX_DENSE_DIM if max_dense_dim is None else max_dense_dim)
        self.last_eigenpairs = None

    def config(self):
        sub = None if self.hessian_subset is None else int(self.hessian_subset.numel())
        return {**super().config(), "eigvec_source": self.eigvec_source, "hessian_subset_size": sub,
                **self._eig_config()}

    def _taylor(self, x, batches, index):
        eig = top_eigenvector(self, x[:, 0], x, batches, index, self.seed)
        self.last_eigenpairs = eig
        v = eig.vector[:, None, :] if self.eigvec_source == "full" else eig.vector
        if self.eig_method == "lanczos":
            self._warm = eig.vector.clone()
        return self.problem.taylor(x, batches, self.rule, self.rho, self.order, eigvec=v,
                                   components=self.diffusion == "paper")
