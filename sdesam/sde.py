"""The SGD SDE, the second- and third-order SAM SDEs and their relatives (docs/math.md §4).

    dX = b(X) dt + √η Σ(X)^{1/2} dW,    time t = kη.

| model    | drift b   | diffusion Σ                                                    |
|----------|-----------|----------------------------------------------------------------|
| SGD-SDE  | −E v⁰     | Σ¹¹                                                            |
| SAM-SDE2 | −E v¹     | Σ¹¹ + ρ(Σ¹² + Σ¹²ᵀ)                             (paper Eq. 3)  |
| SAM-SDE3 | −E v²     | Σ¹¹ + ρ(Σ¹² + Σ¹²ᵀ) + ρ²(Σ²² + ½(Σ¹³ + Σ¹³ᵀ))    (paper Eq. 4)  |

For any perturbation rule ε_γ (``sdesam.rules``) and update map Φ (``sdesam.updates``) the
per-minibatch vectors are w_γ = Φ(g_γ, v^order_γ) (mean over m micro-batches for m-SAM),
the drift −E w_γ and the diffusion Cov w_γ; SAM's own are w_γ = v^order_γ.
``UntruncatedSAMSDE`` uses the perturbed gradient itself, w_γ = Φ(g_γ, ∇f_γ(x + ρε_γ)):
the limit of SAM-SVAG, of which SAM-SDE3 is the O(ρ³) truncation.

Expectations over minibatches: exact when ``n_batches="exact"`` (all C(n, B)
minibatches, for toy problems), else Monte Carlo over K i.i.d. minibatches drawn
fresh at every Euler sub-step.

Diffusion (``diffusion="taylor"``, the default): the sample covariance of the
per-minibatch vectors w_γ, represented by G = [w_1 − w̄, …, w_K − w̄]/√(K−1)
(d × K; 1/√N with exact enumeration) so that G Gᵀ = Cov(w) and √η G ΔW samples the
noise at cost O(dK) — no d × d matrix is ever formed. Cov(v^order) equals the table's
Σ up to ρ³ (SDE2: ρ²Σ²²) or ρ³ (SDE3: ρ³/2 (Σ²³ + Σ²³ᵀ) + ρ⁴/4 Σ³³) terms, below
each model's own error, and is positive semi-definite by construction.
``diffusion="paper"`` uses the table's exact formula, an indefinite combination of the
sample blocks, projected to PSD inside the span of the samples; the fraction of
negative eigenvalue mass dropped is kept in ``last_dropped_mass``.

Drift-noise correction: the drift estimate w̄ from K samples carries Δt²Σ/K of extra
variance per sub-step. ``correct_drift_noise=True`` (default, Monte Carlo only)
scales the diffusion by c = √(1 − Δt/(ηK)) so that the total per-sub-step covariance
is exactly η Δt Σ.

Solver: Euler–Maruyama with m sub-steps Δt = η/m (weak order 1, strong order 1/2).
The own fixed-step loop (``solver="euler"``, default) draws the Brownian increments of
a step from its dyadic Brownian tree (``sdesam._streams.brownian_increments``): runs with
m = 1, 2, 4, … follow the same Brownian path, so their differences are discretisation
error. ``antithetic=True`` pairs trajectories 2i, 2i + 1: the same minibatches, opposite
increments (an unbiased variance reduction). The SDE classes also implement torchsde's
interface (``noise_type="general"``, ``sde_type="ito"``, ``f``, ``g``, ``f_and_g_prod``)
so ``torchsde.sdeint(sde, y0, ts, dt=sde.dt, method="euler")`` integrates them
(``solver="torchsde"``). The minibatches of sub-step i = round(t/Δt) = k·m + j are keyed
by its start time (``sdesam._streams.substep_key``), so ``f``, ``g`` and ``f_and_g_prod`` at
the same time see the same minibatches, whoever calls them, and runs with different m
draw the same minibatches at the times they share.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from ._checks import check_choice, check_int, check_nonnegative
from ._streams import (
    STREAM_NOISE,
    STREAM_RULE,
    brownian_increments,
    derived_seed,
    draw_batches,
    seeded_generator,
    substep_key,
)
from .discrete import check_micro_batches
from .dynamics import Dynamics, RunState
from .eigenpairs import MAX_DENSE_DIM, EigenSolverMixin
from .oracles import TaylorVectors, check_order
from .problem import Problem
from .rules import EigenSAMRule, get_rule
from .updates import get_update, method_name

__all__ = ["SAMFamilySDE", "SGDSDE", "SAMSDE2", "SAMSDE3", "UntruncatedSAMSDE", "AlignedSDE", "AlignedSDE5",
           "AlignedSDE6", "EigenSAMSDE", "SOLVERS", "DIFFUSIONS"]

SOLVERS = ("euler", "torchsde")
DIFFUSIONS = ("taylor", "paper")


class SAMFamilySDE(Dynamics):
    """dX = −E[w_γ] dt + √η Cov(w_γ)^{1/2} dW with w_γ = Φ(g_γ, v^order_γ).

    Args:
        problem: the ``Problem``.
        eta: learning rate η (sets the noise scale √η and the time of one step).
        rho: SAM radius ρ ≥ 0 (not taken by order 0).
        order: 0 (SGD-SDE), 1 (SAM-SDE2), 2 (SAM-SDE3).
        rule: perturbation rule (default SAM's g/‖g‖).
        update: update map Φ (default: the perturbed gradient, w = v^order).
        micro_batches: m-SAM's micro-batches per minibatch (m divides B; default 1).
        n_batches: K ≥ 2 Monte Carlo minibatches per sub-step, or ``"exact"`` to
            enumerate all minibatches (toy problems).
        substeps: m ≥ 1 Euler sub-steps per η (Δt = η/m). Default 1.
        correct_drift_noise: apply c = √(1 − Δt/(ηK)) (Monte Carlo only).
        diffusion: ``"taylor"`` (Cov of w, PSD, default) or ``"paper"`` (the table's
            formula projected to PSD; SAM's update map and m = 1 only).
        antithetic: pair trajectories 2i, 2i + 1 with opposite Brownian increments and the
            same minibatches (own Euler loop; an even number of trajectories).
        solver: ``"euler"`` (own loop) or ``"torchsde"`` (``torchsde.sdeint``, method
            "euler", Brownian increments from a ``BrownianInterval``).
        seed: seed for direct torchsde use (``Dynamics`` runs set it per run).
    """

    noise_type = "general"
    sde_type = "ito"
    #: the Euler–Maruyama solver's orders of convergence in Δt
    weak_order = 1.0
    strong_order = 0.5
    #: subclasses that compute the eigenvector a rule needs (``EigenSAMSDE``) set this
    supplies_eigenvector = False
    #: whether the drift needs the components h, t of the Taylor vectors (``AlignedSDE``)
    taylor_components = False
    #: keyword arguments of ``SAMFamilySDE`` that a subclass fixes itself and refuses
    fixed_keywords: tuple[str, ...] = ()

    @classmethod
    def _refuse_fixed(cls, kwargs: dict) -> None:
        given = [k for k in cls.fixed_keywords if k in kwargs]
        if given:
            raise ValueError(f"{cls.__name__} fixes {', '.join(given)} itself: it takes no {', '.join(given)}")

    def __init__(self, problem: Problem, eta: float, rho: float = 0.0, order: int | str = 2, *,
                 rule="sam", update=None, micro_batches: int = 1, n_batches: int | str = 8, substeps: int = 1,
                 correct_drift_noise: bool = True, diffusion: str = "taylor", antithetic: bool = False,
                 solver: str = "euler", seed: int = 0):
        super().__init__(problem, eta)
        self.rho = check_nonnegative("rho", rho)
        self.order = order if order == "exact" else check_order(order)
        self.rule = get_rule(rule)
        self.update = get_update(update)
        self.micro_batches = check_micro_batches(problem, micro_batches)
        self._micro = problem.with_batch_size(problem.batch_size // self.micro_batches) \
            if self.micro_batches > 1 else problem
        if self.rule.needs_eigenvector and not self.supplies_eigenvector:
            raise ValueError(f"the SDEs support rules without an eigenvector estimate, got {self.rule!r}; "
                             "use eigen_sam_sde")
        if n_batches == "exact":
            self.exact = True
            self._all_batches = problem.enumerate_batches(ordered=self.micro_batches > 1)
            self.n_batches = self._all_batches.shape[0]
        else:
            self.exact = False
            self.n_batches = check_int("n_batches (K, needed for a covariance)", n_batches, 2)
        self.substeps = check_int("substeps", substeps, 1)
        self.dt = self.eta / self.substeps
        self.correct_drift_noise = bool(correct_drift_noise)
        self.diffusion = check_choice("diffusion", diffusion, DIFFUSIONS)
        if self.diffusion == "paper" and (self.order == "exact" or not self.update.is_identity
                                          or self.micro_batches > 1):
            raise ValueError("diffusion='paper' is the table formula of the SAM SDEs (Taylor orders 0-2, the "
                             "perturbed gradient as update, one micro-batch); use diffusion='taylor'")
        self.solver = check_choice("solver", solver, SOLVERS)
        self.antithetic = bool(antithetic)
        if self.antithetic and self.solver == "torchsde":
            raise ValueError("antithetic=True needs the own Euler loop (solver='euler'): torchsde draws "
                             "its own Brownian motion")
        self.seed = int(seed)
        self.last_dropped_mass = None
        self._cache = None

    # -- description ----------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.order == 0:
            return "sgd_sde"
        base = method_name(self.rule.name, self.update, self.micro_batches)
        return f"{base}_sde" if self.order == "exact" else f"{base}_sde{self.order + 1}"

    @property
    def noise_correction(self) -> float:
        """c = √(1 − Δt/(ηK)) when the correction applies, else 1."""
        if self.exact or not self.correct_drift_noise:
            return 1.0
        return math.sqrt(1.0 - self.dt / (self.eta * self.n_batches))

    @property
    def brownian_size(self) -> int:
        """Number of Brownian channels: K (or N), or (order+1)K for the paper diffusion."""
        return self.n_batches * (self.order + 1 if self.diffusion == "paper" else 1)

    def config(self):
        out = {**super().config(), "order": self.order}
        if self.order != 0:
            out.update({"rho": self.rho, **self.rule.config(), **self.update.config(),
                        "micro_batches": self.micro_batches})
        return {**out, "n_batches": "exact" if self.exact else self.n_batches,
                "n_batches_value": self.n_batches, "substeps": self.substeps, "dt": self.dt,
                "correct_drift_noise": self.correct_drift_noise, "noise_correction": self.noise_correction,
                "diffusion": self.diffusion, "antithetic": self.antithetic, "solver": self.solver}

    def init_state(self, x0=None, seed=0):
        state = super().init_state(x0, seed)
        if self.antithetic and state.x.shape[0] % 2:
            raise ValueError(f"{self.name}: antithetic=True pairs trajectories, got an odd number "
                             f"M={state.x.shape[0]}")
        self.seed = state.seed
        return state

    # -- drift and diffusion --------------------------------------------------------
    def substep_index(self, t) -> int:
        return int(round(float(t) / self.dt))

    def _batches(self, M: int, index: int) -> Tensor:
        if self.exact:
            return self._all_batches                     # (N, B), shared by all trajectories
        step, j = divmod(index, self.substeps)
        return draw_batches(self.problem, self.seed, step, M, self.n_batches, substep=j, substeps=self.substeps,
                            pairs=2 if self.antithetic else 1)      # (M, K, B)

    def _rule_generator(self, index: int):
        if not self.rule.needs_generator:
            return None
        step, j = divmod(index, self.substeps)
        return seeded_generator(*substep_key(self.seed, STREAM_RULE, step, j, self.substeps),
                                device=self.problem.device)

    def drift_and_factor(self, t, y: Tensor) -> tuple[Tensor, Tensor]:
        """(b, F) at time t for states y (M, d): drift b (M, d) and the diffusion factor
        F (M, d, brownian_size) with F Fᵀ = η c² Σ̂, so dX = b dt + F dW. F is a view of the
        (M, brownian_size, d) noise vectors (no copy)."""
        index = self.substep_index(t)
        if self._cache is not None and self._cache[0] == index and torch.equal(self._cache[1], y):
            drift, vectors = self._cache[2], self._cache[3]
        else:
            drift, vectors = self.coefficients(index, y)
            self._cache = (index, y.clone(), drift, vectors)
        return drift, vectors.transpose(1, 2)

    def coefficients(self, index: int, y: Tensor) -> tuple[Tensor, Tensor]:
        """(b, Fᵀ) at sub-step ``index`` for states y (M, d): the drift (M, d) and the noise
        vectors Fᵀ (M, brownian_size, d), the rows of the diffusion factor (F Fᵀ = η c² Σ̂)."""
        M = y.shape[0]
        batches = self._batches(M, index)
        x = y[:, None, :]
        tv = self._taylor(x, batches, index)
        K = tv.g.shape[1]
        denom = K if self.exact else K - 1               # population vs. unbiased covariance
        scale = math.sqrt(self.eta) * self.noise_correction
        w = self._noise_vectors(tv, x, batches, index)
        wbar = w.mean(1)
        if self.diffusion == "taylor":
            vectors = (w - wbar[:, None]).mul_(scale / math.sqrt(denom))
        else:
            vectors = (self._paper_factor(tv, denom) * scale).transpose(1, 2)
        drift_w = self._drift_vectors(tv, w, x, batches, index)
        drift = -(wbar if drift_w is w else drift_w.mean(1))
        return drift, vectors

    def _taylor(self, x: Tensor, batches: Tensor, index: int, eigvec: Tensor | None = None):
        """Per-minibatch oracles at x (M, 1, d) for ``batches`` (M, K, B) or (N, B): the Taylor
        vectors of the order (or, ``order="exact"``, the perturbed gradient in ``v``); with
        micro-batches, per micro-batch (leading shape (M, K, m))."""
        problem, gen = self.problem, self._rule_generator(index)
        if self.micro_batches > 1:
            m = self.micro_batches
            batches = batches.reshape(*batches.shape[:-1], m, batches.shape[-1] // m)
            x = x.unsqueeze(-2)
            problem = self._micro
        if self.order == "exact":
            g = problem.gradient(x, batches)
            eps = self.rule(g, eigvec, x=x, generator=gen)
            p = problem.gradient(x + self.rho * eps, batches)
            return TaylorVectors(v=p, g=g, eps=eps, order=3, rho=self.rho)
        return problem.taylor(x, batches, self.rule, self.rho, self.order, eigvec=eigvec,
                              components=self.taylor_components or self.diffusion == "paper", generator=gen)

    def _noise_vectors(self, tv, x: Tensor, batches: Tensor, index: int) -> Tensor:
        """Per-minibatch vectors w_γ (M, K, d) whose covariance is the diffusion's:
        Φ(g_γ, v_γ), averaged over micro-batches."""
        w = tv.v if self.update.is_identity else self.update(tv.g, tv.v)
        return w.mean(-2) if self.micro_batches > 1 else w

    def _drift_vectors(self, tv, w: Tensor, x: Tensor, batches: Tensor, index: int) -> Tensor:
        """Per-minibatch vectors (M, K, d) whose mean is minus the drift (hook; the SAM
        family's is w itself)."""
        return w

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
        return drift, torch.bmm(v[:, None, :], factor.transpose(1, 2))[:, 0]

    # -- Dynamics -------------------------------------------------------------------
    def euler_substep(self, state: RunState, index: int, dW: Tensor) -> None:
        """X ← X + b Δt + F ΔW at sub-step ``index`` (time index·Δt)."""
        drift, vectors = self.coefficients(index, state.x)
        state.x += drift * self.dt + torch.bmm(dW[:, None, :], vectors)[:, 0]

    def _step(self, state):
        self.seed = state.seed
        if self.solver == "torchsde":
            state.x = self._torchsde_step(state)
            return
        incs = brownian_increments(state.seed, state.step, self.substeps, (state.x.shape[0], self.brownian_size),
                                   self.dt, dtype=state.x.dtype, device=self.problem.device,
                                   antithetic=self.antithetic)
        for j in range(self.substeps):
            self.euler_substep(state, state.step * self.substeps + j, incs[j])

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
    """SGD SDE (Li et al. 2017): drift −∇f, diffusion Σ¹¹ (no ρ, no rule)."""

    fixed_keywords = ("rho", "rule", "update", "micro_batches")

    def __init__(self, problem, eta, **kwargs):
        self._refuse_fixed(kwargs)
        super().__init__(problem, eta, 0.0, order=0, **kwargs)


class SAMSDE2(SAMFamilySDE):
    """Second-order SAM SDE (Compagnoni et al. 2023, paper Eq. 3); any rule / update map."""

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, order=1, **kwargs)


class SAMSDE3(SAMFamilySDE):
    """Third-order SAM SDE (Luo et al., paper Eq. 4); any rule / update map."""

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, order=2, **kwargs)


class UntruncatedSAMSDE(SAMFamilySDE):
    """The untruncated SAM SDE: drift −E Φ(g_γ, ∇f_γ(X + ρε_γ)), diffusion Cov of the same.

    SAM-SVAG's l → ∞ limit (``discrete.SAMSVAG``, docs/math.md §7); SAM-SDE3 is its
    O(ρ³) truncation. Exact expectations on enumerable toys (``n_batches="exact"``), else
    Monte Carlo over K minibatches per sub-step; the perturbed gradients cost two
    gradients per minibatch.
    """

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, order="exact", **kwargs)


# ------------------------------------------------------------------------------------
# Corollary 4.1.1's aligned-limit SDEs (paper Eq. 5–6) and an Eigen-SAM SDE (docs/math.md §5)
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
    SAM-SDE3's. H_γu_γ comes from SAM's Taylor oracle with ``components=True``,
    H_γv₁ and ∇³f_γ[v₁, v₁] from the eigen-solve (``minibatch_top_eigenpairs`` with
    ``derivatives=True``: the Taylor oracle with ε = v₁, in input-span coordinates when
    the eigenvectors were found in them).

    v₁ per minibatch and sub-step: ``sdesam.eigenpairs.minibatch_top_eigenpairs``
    (dense float64 ``eigh`` when d ≤ ``max_dense_dim``, else Lanczos warm-started from
    the previous sub-step's v₁ of the same minibatch slot, residual ≤ ``eig_tol``·‖H_γ‖).

    Diagnostics: ``eigen_history`` gets one dict per sub-step (sub-step index, smallest
    gap λ₁ − λ₂ and smallest relative gap (λ₁ − λ₂)/‖H_γ‖ over the minibatches, largest
    residual ‖H_γ v₁ − λ₁ v₁‖ computed from the oracle's H_γ v₁, largest residual/gap —
    with the computed gap, the Davis–Kahan bound on sin∠(computed v₁, exact v₁) — mean
    λ₁, products spent),
    and a ``RuntimeWarning`` is issued once, naming the sub-step and step, when a
    relative gap falls below ``gap_rtol`` or below the relative residual of v₁ (∇λ₁ is
    then ill-conditioned, or v₁ not resolved by the eigensolver's tolerance).

    Args:
        form: ``"eq5"`` or ``"eq6"``.
        eig_method, eig_tol, eig_max_iters, max_dense_dim: the eigensolver.
        gap_rtol: relative gap below which the warning fires.
        other keyword arguments: as ``SAMFamilySDE`` (the rule is SAM's, the order 2).
    """

    taylor_components = True
    fixed_keywords = ("rule", "update", "micro_batches")

    def __init__(self, problem: Problem, eta: float, rho: float, *, form: str = "eq5", eig_method: str = "auto",
                 eig_tol: float = 1e-3, eig_max_iters: int = 100, max_dense_dim: int = MAX_DENSE_DIM,
                 gap_rtol: float = 1e-3, **kwargs):
        self._refuse_fixed(kwargs)
        super().__init__(problem, eta, rho, order=2, rule="sam", **kwargs)
        self.form = check_choice("form", form, {"eq5", "eq6"})
        self._init_eigensolver(eig_method, eig_tol, eig_max_iters, max_dense_dim, eigvec_source="minibatch")
        self.gap_rtol = check_nonnegative("gap_rtol", gap_rtol)
        self.eigen_history: list[dict] = []
        self._warned = False

    @property
    def name(self) -> str:
        return "aligned_sde5" if self.form == "eq5" else "aligned_sde6"

    def config(self):
        return {**super().config(), "form": self.form, **self._eig_config(), "gap_rtol": self.gap_rtol}

    def _drift_vectors(self, tv, w, x, batches, index):
        S = tv.g.shape[:-1]
        eig = self.top_eigenvector(x[:, 0], x, batches, self.seed, index, derivatives=True)
        v1 = eig.vector.expand(*S, self.problem.dim)
        self._record(index, eig)
        if self.form == "eq5":
            drift = tv.g + self.rho * tv.h
        else:
            s = torch.einsum("...d,...d->...", tv.g, v1).sign()
            drift = tv.g + (self.rho * s * eig.value)[..., None] * v1
        return drift.add_(eig.value_gradient, alpha=0.5 * self.rho * self.rho)

    def _record(self, index: int, eig) -> None:
        tiny = torch.finfo(eig.scale.dtype).tiny
        residual = eig.residual                     # from the oracle's H_γ v₁ (derivatives=True)
        rel_gap = eig.gap / eig.scale.clamp_min(tiny)
        row = {"substep": index, "step": index // self.substeps, "gap_min": float(eig.gap.min()),
               "relative_gap_min": float(rel_gap.min()), "residual_max": float(residual.max()),
               "relative_residual_max": float((residual / eig.scale.clamp_min(tiny)).max()),
               "sin_bound_max": float((residual / eig.gap.clamp_min(tiny)).max()),
               "lambda1_mean": float(eig.value.mean()), "eig_hvps": eig.num_hvps}
        self.eigen_history.append(row)
        if not self._warned and row["relative_gap_min"] < max(self.gap_rtol, row["relative_residual_max"]):
            self._warned = True
            warnings.warn(f"{self.name}: at sub-step {index} (step {row['step']}) a minibatch Hessian has "
                          f"relative eigen-gap (λ₁ − λ₂)/‖H‖ = {row['relative_gap_min']:.3g}, below gap_rtol="
                          f"{self.gap_rtol} or the relative residual {row['relative_residual_max']:.3g} of v₁: "
                          "λ₁ is nearly repeated or v₁ unresolved, and ∇λ₁ = ∇³f[v₁, v₁] is ill-conditioned "
                          "(Assumption B.2)", RuntimeWarning, stacklevel=2)


class AlignedSDE5(AlignedSDE):
    """Corollary 4.1.1, paper Eq. 5: drift −[∇f + ρE H_γu_γ + (ρ²/2)E∇λ₁(H_γ)], Σ^SAM."""

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, form="eq5", **kwargs)


class AlignedSDE6(AlignedSDE):
    """Corollary 4.1.1, paper Eq. 6: drift −[∇f + ρE s*λ₁v₁ + (ρ²/2)E∇λ₁(H_γ)], Σ^SAM."""

    def __init__(self, problem, eta, rho, **kwargs):
        super().__init__(problem, eta, rho, form="eq6", **kwargs)


class EigenSAMSDE(EigenSolverMixin, SAMFamilySDE):
    """The third-order SDE of Eigen-SAM's update (not in the paper; docs/math.md §5).

    Derived as Eq. 4 with Eigen-SAM's perturbation (Eq. 7–8)
    ε_γ = u_γ + α·sign⟨g_γ, v⟩·v⊥ (v⊥ = v − ⟨v, u_γ⟩u_γ, not renormalised):

        drift −E[g_γ + ρH_γε_γ + (ρ²/2)∇³f_γ(ε_γ, ε_γ)],   diffusion Cov of the same vectors,

    with v an exact top eigenvector: of the full-batch Hessian ∇²f(X_t)
    (``eigvec_source="full"``, default; exact by enumerating the minibatches of a toy,
    or the Hessian over ``hessian_subset`` training examples of a ``ModuleProblem``,
    all of them when None) or of each minibatch Hessian H_γ (``"minibatch"``). It models
    ``discrete.IdealEigenSAM`` (Eq. 1 with that ε_γ every step). α = 0 is SAM-SDE3.

    Args:
        alpha: α ≥ 0 (paper 0.2).
        eigvec_source: ``"full"`` or ``"minibatch"``.
        hessian_subset: LongTensor of training indices for ``"full"`` on a ModuleProblem.
        eig_method, eig_tol, eig_max_iters, max_dense_dim: the eigensolver
            (``sdesam.eigenpairs``); Lanczos is warm-started from the previous sub-step.
        other keyword arguments: as ``SAMFamilySDE`` (order 2).
    """

    supplies_eigenvector = True
    fixed_keywords = ("rule", "update", "micro_batches")

    def __init__(self, problem: Problem, eta: float, rho: float, alpha: float = 0.2, *,
                 eigvec_source: str = "full", hessian_subset: Tensor | None = None, eig_method: str = "auto",
                 eig_tol: float = 1e-3, eig_max_iters: int = 100, max_dense_dim: int = MAX_DENSE_DIM, **kwargs):
        self._refuse_fixed(kwargs)
        super().__init__(problem, eta, rho, order=2, rule=EigenSAMRule(alpha), **kwargs)
        self._init_eigensolver(eig_method, eig_tol, eig_max_iters, max_dense_dim,
                               eigvec_source=eigvec_source, hessian_subset=hessian_subset)
        self.last_eigenpairs = None

    @property
    def name(self) -> str:
        return "eigen_sam_sde"

    def config(self):
        return {**super().config(), **self._eig_config()}

    def _taylor(self, x, batches, index, eigvec=None):
        eig = self.top_eigenvector(x[:, 0], x, batches, self.seed, index)
        self.last_eigenpairs = eig
        v = eig.vector[:, None, :] if self.eigvec_source == "full" else eig.vector
        return super()._taylor(x, batches, index, eigvec=v)
