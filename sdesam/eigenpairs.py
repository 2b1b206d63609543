"""Top Hessian eigenpairs of many minibatches (or of the full batch) at once.

Corollary 4.1.1's aligned SDEs (paper Eq. 5–6) and the ideal Eigen-SAM need, at every
Euler sub-step, the top (largest algebraic) eigenpair (λ₁, v₁) of each minibatch
Hessian H_γ = ∇²f_γ(x), and the gap λ₁ − λ₂ that Assumption B.2 needs for
∇λ₁(H_γ) = ∇³f_γ[v₁, v₁] to exist. Two methods:

* ``"dense"``: H_γ formed from d Hessian-vector products (the problem's own ``hvp``,
  vectorised over all minibatches and points), or from the problem's closed-form
  ``hessian(x, batch)`` / ``full_hessian(x)`` when it has them (the GLM toys of
  ``sdesam.toys``: ~100× faster), and ``torch.linalg.eigh`` in float64. Exact to
  rounding; for small d only (``max_dense_dim``, else ``ValueError``).
* ``"lanczos"``: ``sdesam.curvature.batched_lanczos`` — the Lanczos recurrences of all
  minibatches (and points) in lockstep, k = 2 so that λ₂ and with it the gap come out too,
  one batched Hessian-vector call per iteration through the problem's block oracles,
  started from ``v0`` (the previous sub-step's vector of the same slot: a warm start),
  partial reorthogonalisation by default; each recurrence stops when both its Ritz
  residuals are ≤ ``tol``·‖H_γ‖. For a network whose first layer is Linear with more
  inputs than B, in the input-span coordinates of ``sdesam.input_span`` (exact; on the
  MNIST MLP several times cheaper).

``"auto"`` takes the dense path when d ≤ ``max_dense_dim``.

``full_hessian_top_eigenvector`` does the same for the full-batch Hessian ∇²f(x) (the
eigenvector Eigen-SAM aligns with): exact (the mean over all enumerated minibatches,
toy problems) or over a fixed subset of training examples (``ModuleProblem``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._checks import check_choice, check_int, check_positive
from ._streams import STREAM_EIGEN, seeded_generator
from .curvature.batched_lanczos import batched_lanczos
from .input_span import InputSpanRows
from .problem import ModuleProblem, Problem
from .rules import DirectionRule

__all__ = ["TopEigenpairs", "minibatch_top_eigenpairs", "full_hessian_top_eigenvector", "check_hessian_subset",
           "EigenSolverMixin", "MAX_DENSE_DIM", "EIGVEC_SOURCES"]

#: default largest d for the dense path (a d × d float64 matrix per minibatch and point)
MAX_DENSE_DIM = 64


@dataclass
class TopEigenpairs:
    """Top eigenpairs of a block of symmetric matrices, leading shape S.

    Attributes:
        value: λ₁, shape (*S,), in the problem's dtype.
        vector: unit v₁, shape (*S, d) (sign arbitrary: every consumer is sign-invariant).
        gap: λ₁ − λ₂, shape (*S,) (+inf when d = 1).
        residual: ‖H v₁ − λ₁ v₁‖, shape (*S,) (dense: computed from H; Lanczos: the Ritz
            residual of the recurrence).
        scale: ‖H‖₂ estimate (largest |eigenvalue| seen), shape (*S,).
        num_hvps: Hessian-vector products spent (d per matrix on the dense path).
        method: ``"dense"`` or ``"lanczos"``.
        value_gradient: ∇λ₁(H_γ) = ∇³f_γ[v₁, v₁] (simple λ₁), shape (*S, d), when asked
            for (``derivatives=True``; then ``residual`` is recomputed from the oracle's
            product H v₁ of the same pass, whatever the method).
    """

    value: Tensor
    vector: Tensor
    gap: Tensor
    residual: Tensor
    scale: Tensor
    num_hvps: int
    method: str
    value_gradient: Tensor | None = None


def _dense_from_hvp(hvp: Callable[[Tensor], Tensor], d: int, like: Tensor) -> Tensor:
    """(*S, d, d) float64 symmetric matrices from a batched product v (d, d) ↦ H v (*S, d, d)."""
    eye = torch.eye(d, dtype=like.dtype, device=like.device)
    H = hvp(eye).to(torch.float64)                  # row j = H e_j
    return 0.5 * (H + H.transpose(-1, -2))


def _dense_pairs(H: Tensor, dtype: torch.dtype) -> TopEigenpairs:
    lam, V = torch.linalg.eigh(H)                   # ascending
    lam1, v1 = lam[..., -1], V[..., :, -1]
    gap = lam1 - lam[..., -2] if H.shape[-1] > 1 else torch.full_like(lam1, math.inf)
    res = torch.linalg.vector_norm(torch.einsum("...ij,...j->...i", H, v1) - lam1[..., None] * v1, dim=-1)
    scale = lam.abs().amax(-1)
    return TopEigenpairs(value=lam1.to(dtype), vector=v1.to(dtype), gap=gap.to(dtype), residual=res.to(dtype),
                         scale=scale.to(dtype), num_hvps=H[..., 0, 0].numel() * H.shape[-1], method="dense")


def _batched_pairs(matvec, starts: Tensor, tol: float, max_iters: int, generator, like: Tensor,
                   shape, reorthogonalize: str, span: InputSpanRows | None = None,
                   derivatives: bool = False) -> TopEigenpairs:
    """TopEigenpairs of the N operators of ``matvec`` (``batched_lanczos``), reshaped to
    ``shape``; with ``span``, ``matvec`` acts in its coordinates, the pairs are mapped back,
    and ``derivatives`` are computed in them too."""
    d = like.shape[-1]
    if span is not None:
        starts = span.reduce(starts)
    r = batched_lanczos(matvec, starts, k=2 if starts.shape[-1] > 1 else 1, tol=tol, max_iters=max_iters,
                        generator=generator, reorthogonalize=reorthogonalize)
    lam1, vector, residual = r.eigenvalues[:, 0], r.eigenvectors[:, 0], r.residuals[:, 0]
    lam2 = r.eigenvalues[:, 1] if starts.shape[-1] > 1 else torch.full_like(lam1, -math.inf)
    t = None
    if span is not None:
        lam1, vector, lam2, residual, t = span.top_pairs(vector, lam1, lam2, residual, generator, derivatives)
    shaped = lambda v: v.to(like.dtype).to(like.device).reshape(shape)   # noqa: E731
    return TopEigenpairs(value=shaped(lam1), vector=vector.to(like.dtype).reshape(*shape, d),
                         gap=shaped(lam1 - lam2), residual=shaped(residual), scale=shaped(r.scale),
                         num_hvps=r.num_matvecs, method="lanczos",
                         value_gradient=None if t is None else t.to(like.dtype).reshape(*shape, d))


def _resolve_method(method: str, d: int, max_dense_dim: int) -> str:
    check_choice("method", method, {"auto", "dense", "lanczos"})
    max_dense_dim = check_int("max_dense_dim", max_dense_dim, 1)
    if method == "auto":
        return "dense" if d <= max_dense_dim else "lanczos"
    if method == "dense" and d > max_dense_dim:
        raise ValueError(f"method='dense' forms a d × d Hessian per minibatch; d={d} exceeds "
                         f"max_dense_dim={max_dense_dim}: use method='lanczos' (or raise max_dense_dim)")
    return method


def minibatch_top_eigenpairs(problem: Problem, x: Tensor, batch: Tensor, *, method: str = "auto",
                             tol: float = 1e-3, max_iters: int = 100, v0: Tensor | None = None,
                             max_dense_dim: int = MAX_DENSE_DIM, reorthogonalize: str = "partial",
                             input_span: bool = True, derivatives: bool = False,
                             generator: torch.Generator | None = None) -> TopEigenpairs:
    """(λ₁, v₁, λ₁ − λ₂, residual) of H_γ = ∇²f_γ(x) for every leading index.

    Args:
        problem: the ``Problem``.
        x: points (*Sx, d); batch: minibatches (*Sb, B); they broadcast to S as in every
            oracle (e.g. x (M, 1, d) and batch (M, K, B), or batch (N, B) for all
            enumerated minibatches).
        method: ``"auto"``, ``"dense"`` or ``"lanczos"`` (module docstring).
        tol: Lanczos relative residual tolerance, ‖Hy − θy‖ ≤ tol·‖H‖ for λ₁ and λ₂.
        max_iters: Lanczos step cap (Hessian-vector products per minibatch).
        v0: Lanczos start vectors (*S, d) (e.g. the previous sub-step's v₁); default a
            Gaussian vector from ``generator``.
        max_dense_dim: largest d for the dense path.
        reorthogonalize: Lanczos' ``"partial"`` (default) or ``"full"`` reorthogonalisation
            (``sdesam.curvature.batched_lanczos``).
        input_span: run Lanczos in the input-span coordinates of ``sdesam.input_span``
            when the problem has them (a ``ModuleProblem`` whose first layer is Linear with
            more inputs than B): exact, and on the MNIST MLP several times cheaper.
        derivatives: also return ∇λ₁(H_γ) = ∇³f_γ[v₁, v₁] (``value_gradient``) and the
            residual ‖H_γ v₁ − λ₁ v₁‖ recomputed from the oracle: one order-2 Taylor call
            with ε = v₁ (``rules.DirectionRule``), in span coordinates when Lanczos ran in them.
    """
    d = problem.dim
    method = _resolve_method(method, d, max_dense_dim)
    tol = check_positive("tol", tol)
    max_iters = check_int("max_iters", max_iters, 2)
    S = torch.broadcast_shapes(x.shape[:-1], batch.shape[:-1])
    if method == "dense":
        if callable(getattr(problem, "hessian", None)):            # closed form (toy problems)
            H = problem.hessian(x, batch).to(torch.float64)
            eig = _dense_pairs(0.5 * (H + H.transpose(-1, -2)), x.dtype)
        else:
            # the d unit vectors ride on an extra leading axis of x (the oracles broadcast)
            xe = x.expand(*S, d)[..., None, :].expand(*S, d, d)
            H = _dense_from_hvp(lambda E: problem.hvp(xe, batch[..., None, :], E), d, x)
            eig = _dense_pairs(H, x.dtype)
        return _with_derivatives(eig, problem, x, batch) if derivatives else eig
    xs = x.expand(*S, d).reshape(-1, d)
    bs = batch.expand(*S, batch.shape[-1]).reshape(-1, batch.shape[-1])
    starts = x.new_zeros(xs.shape) if v0 is None else v0.expand(*S, d).reshape(-1, d)
    if input_span and InputSpanRows.applies(problem, bs.shape[-1]):
        span = InputSpanRows(problem, xs, bs)
        return _batched_pairs(span.matvec, starts, tol, max_iters, generator, x, S, reorthogonalize, span,
                              derivatives)
    eig = _batched_pairs(problem.hvp_rows(xs, bs), starts, tol, max_iters, generator, x, S, reorthogonalize)
    return _with_derivatives(eig, problem, x, batch) if derivatives else eig


def _with_derivatives(eig: TopEigenpairs, problem: Problem, x: Tensor, batch: Tensor) -> TopEigenpairs:
    """``eig`` with ∇³f_γ[v₁, v₁] and the residual of H_γ v₁ from the problem's Taylor
    oracle (ε = v₁)."""
    tv = problem.taylor(x, batch, DirectionRule(), 1.0, 2, eigvec=eig.vector, components=True)
    eig.value_gradient = tv.t
    eig.residual = torch.linalg.vector_norm(tv.h - eig.value[..., None] * eig.vector, dim=-1)
    return eig


def full_hessian_top_eigenvector(problem: Problem, x: Tensor, *, method: str = "auto", tol: float = 1e-3,
                                 max_iters: int = 100, v0: Tensor | None = None,
                                 hessian_subset: Tensor | None = None, max_dense_dim: int = MAX_DENSE_DIM,
                                 reorthogonalize: str = "partial",
                                 generator: torch.Generator | None = None) -> TopEigenpairs:
    """Top eigenpair of the full-batch Hessian ∇²f(x) at each point x (M, d).

    The Hessian is, exactly, the mean of H_γ over n cyclic minibatches that cover every
    example B times (f_γ is a mean of per-example losses, so their mean is f), or the
    problem's closed-form ``full_hessian(x)`` when it has one (the GLM toys), when
    ``hessian_subset`` is None; else the Hessian
    of the mean loss over the training examples ``hessian_subset`` (a LongTensor of
    indices; ``ModuleProblem`` only — how the MLP measurement keeps it affordable).
    Returns ``TopEigenpairs`` with S = (M,).
    """
    if x.dim() != 2:
        raise ValueError(f"x must have shape (M, d), got {tuple(x.shape)}")
    M, d = x.shape
    method = _resolve_method(method, d, max_dense_dim)
    if hessian_subset is not None:
        if not isinstance(problem, ModuleProblem):
            raise ValueError("hessian_subset needs a ModuleProblem (problem.subproblem); "
                             f"got {type(problem).__name__}")
        sub = problem.subproblem(hessian_subset, int(hessian_subset.numel()), name="hessian subset")
        every = torch.arange(sub.n_train, device=problem.device)[None]        # one minibatch: the subset
        r = minibatch_top_eigenpairs(sub, x[:, None, :], every, method=method, tol=tol, max_iters=max_iters,
                                     v0=None if v0 is None else v0[:, None, :], max_dense_dim=max_dense_dim,
                                     reorthogonalize=reorthogonalize, generator=generator)
        return TopEigenpairs(value=r.value[:, 0], vector=r.vector[:, 0], gap=r.gap[:, 0],
                             residual=r.residual[:, 0], scale=r.scale[:, 0], num_hvps=r.num_hvps,
                             method=r.method)
    if method == "dense" and callable(getattr(problem, "full_hessian", None)):   # closed form (toys)
        H = problem.full_hessian(x).to(torch.float64)
        return _dense_pairs(0.5 * (H + H.transpose(-1, -2)), x.dtype)
    batches = _covering_batches(problem)
    N = batches.shape[0]
    if method == "dense":
        xe = x[:, None, None, :].expand(M, 1, d, d)
        H = _dense_from_hvp(lambda E: problem.hvp(xe, batches[:, None, :], E), d, x).mean(1)
        return _dense_pairs(H, x.dtype)
    def matvec(V, rows):            # the mean of H_γ over the covering minibatches, per point
        return problem.hvp(x[rows][:, None, :], batches[None], V[:, None, :]).mean(1)
    starts = x.new_zeros(x.shape) if v0 is None else v0
    eig = _batched_pairs(matvec, starts, tol, max_iters, generator, x, (M,), reorthogonalize)
    eig.num_hvps *= N
    return eig


def _covering_batches(problem: Problem) -> Tensor:
    """n minibatches {i, i+1, …, i+B−1 (mod n)}, i < n: each example lies in exactly B of
    them, so the mean of their f_γ (a mean of per-example losses) is f — the full-batch
    Hessian exactly, with n instead of C(n, B) minibatches."""
    n, B = problem.n_train, problem.batch_size
    return (torch.arange(n)[:, None] + torch.arange(B)[None, :]).remainder(n).to(problem.device)


def check_hessian_subset(problem: Problem, subset: Tensor | None) -> Tensor | None:
    """The training-example subset of a full-batch Hessian: None (all n examples, exact)
    for other problems; for a ``ModuleProblem`` None means all n examples too."""
    if not isinstance(problem, ModuleProblem):
        if subset is not None:
            raise ValueError("hessian_subset needs a ModuleProblem; the full-batch Hessian of "
                             f"{type(problem).__name__} is exact (all n examples)")
        return None
    if subset is None:
        return torch.arange(problem.n_train, device=problem.device)
    subset = torch.as_tensor(subset, device=problem.device)
    if subset.dim() != 1 or subset.dtype != torch.long or subset.numel() == 0 or \
            int(subset.min()) < 0 or int(subset.max()) >= problem.n_train:
        raise ValueError(f"hessian_subset must be a non-empty LongTensor of indices in [0, {problem.n_train}), "
                         f"got shape {tuple(subset.shape)} dtype {subset.dtype}")
    return subset


#: where an Eigen-SAM dynamics takes its eigenvector: the full-batch Hessian or each H_γ
EIGVEC_SOURCES = ("full", "minibatch")


class EigenSolverMixin:
    """Eigen-solver options, the top eigenvector and its warm start, for a ``Dynamics`` that
    needs top eigenvectors every (sub-)step (the aligned SDEs, the Eigen-SAM SDE, the
    ideal Eigen-SAM).

    ``_init_eigensolver`` validates the options once. ``top_eigenvector`` solves for the
    vector the dynamics aligns with; with Lanczos it is warm-started from the previous
    (sub-)step's vector of the same slot, which ``_step`` keeps in
    ``state.extra["eig_warm"]`` so that a resumed run continues exactly. Lanczos start
    vectors without a warm start are drawn from (seed, STREAM_EIGEN, index).
    """

    def _init_eigensolver(self, method: str, tol: float, max_iters: int, max_dense_dim: int, *,
                          eigvec_source: str = "minibatch", hessian_subset: Tensor | None = None):
        self.eig_method = _resolve_method(method, self.problem.dim, max_dense_dim)
        self.eig_tol = check_positive("eig_tol", tol)
        self.eig_max_iters = check_int("eig_max_iters", max_iters, 2)
        self.max_dense_dim = max_dense_dim
        self.eigvec_source = check_choice("eigvec_source", eigvec_source, EIGVEC_SOURCES)
        self.hessian_subset = (check_hessian_subset(self.problem, hessian_subset)
                               if eigvec_source == "full" else None)
        if eigvec_source == "minibatch" and hessian_subset is not None:
            raise ValueError("hessian_subset applies to eigvec_source='full' only, got eigvec_source='minibatch'")
        self._warm = None

    def _eig_config(self) -> dict:
        sub = None if self.hessian_subset is None else int(self.hessian_subset.numel())
        return {"eig_method": self.eig_method, "eig_tol": self.eig_tol, "eig_max_iters": self.eig_max_iters,
                "max_dense_dim": self.max_dense_dim, "eigvec_source": self.eigvec_source,
                "hessian_subset_size": sub}

    def _warm_start(self, shape) -> Tensor | None:
        return self._warm if self._warm is not None and self._warm.shape == shape else None

    def top_eigenvector(self, points: Tensor, x: Tensor, batches: Tensor, seed: int, index: int,
                        derivatives: bool = False) -> TopEigenpairs:
        """The eigenpairs this dynamics aligns with at (sub-)step ``index``: of the full-batch
        Hessian at ``points`` (M, d) (``eigvec_source="full"``; vectors (M, d)), else of each
        minibatch Hessian for x and ``batches`` (broadcasting as the oracles do; vectors
        (*S, d); ``derivatives`` as in ``minibatch_top_eigenpairs``). Updates the warm start."""
        gen = seeded_generator(seed, STREAM_EIGEN, index)
        common = {"method": self.eig_method, "tol": self.eig_tol, "max_iters": self.eig_max_iters,
                  "max_dense_dim": self.max_dense_dim, "generator": gen}
        if self.eigvec_source == "full":
            eig = full_hessian_top_eigenvector(self.problem, points, hessian_subset=self.hessian_subset,
                                               v0=self._warm_start(points.shape), **common)
        else:
            S = torch.broadcast_shapes(x.shape[:-1], batches.shape[:-1])
            eig = minibatch_top_eigenpairs(self.problem, x, batches, v0=self._warm_start((*S, self.problem.dim)),
                                           derivatives=derivatives, **common)
        if self.eig_method == "lanczos":
            self._warm = eig.vector.clone()
        return eig

    def _step(self, state):
        self._warm = state.extra.get("eig_warm")
        super()._step(state)
        if self.eig_method == "lanczos" and self._warm is not None:
            state.extra["eig_warm"] = self._warm
