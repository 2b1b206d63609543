"""Top eigenpairs of N symmetric operators at once: Lanczos in lockstep.

``batched_lanczos(matvec, v0)`` runs N independent Lanczos recurrences together, one per
row of ``v0`` (N, d), with one call ``matvec(V, rows)`` per iteration that applies the N
operators to their current vectors (e.g. N minibatch Hessians H_γ through the batched
Hessian-vector products of ``ModuleProblem``: stacked parameters, one autograd graph for
the block). Each recurrence keeps its own Krylov basis (N, m, d), reorthogonalised in full
against it with batched matrix products ("twice is enough": a second Gram–Schmidt pass
only for the rows whose norm dropped by more than half, Kahan–Parlett), and its own
tridiagonal matrix; after every step the Ritz pairs of all active rows are computed
(batched ``eigh`` of the small tridiagonals, float64) and a row stops as soon as its top-k
Ritz residuals are ≤ ``tol``·‖H_i‖ — later products only go to the rows still running.

Precision. The basis is kept in ``basis_dtype`` (default: the vectors' dtype). A float32
basis with full reorthogonalisation keeps the basis orthogonal to ~1e-6, far below the
relative residuals (≥ 1e-4) eigen-solves of a float32 network are asked for, at half the
memory and time of float64; pass ``basis_dtype=torch.float64`` for tighter tolerances.
Memory: N · (steps) · d numbers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from .._checks import check_int, check_positive

__all__ = ["BatchedLanczosResult", "batched_lanczos"]


@dataclass
class BatchedLanczosResult:
    """Outcome of ``batched_lanczos`` for N operators.

    Attributes:
        eigenvalues: (N, k) float64 Ritz values, largest first (eigenvalues[:, 0] ≈ λ₁).
        eigenvectors: (N, k, d) unit Ritz vectors in the vectors' dtype (sign arbitrary).
        residuals: (N, k) float64 Ritz residuals ‖H y − θ y‖ from the recurrence.
        scale: (N,) float64 estimates of ‖H_i‖₂ (largest |Ritz value|, diagonal or coupling
            entry seen).
        num_iters: (N,) Lanczos steps (= products) of each row.
        converged: (N,) whether each row met the tolerance before ``max_iters``.
        num_matvecs: products spent in all (the sum of ``num_iters``).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    scale: Tensor
    num_iters: Tensor
    converged: Tensor
    num_matvecs: int


def batched_lanczos(matvec: Callable[[Tensor, Tensor], Tensor], v0: Tensor, *, k: int = 2, tol: float = 1e-3,
                    max_iters: int = 100, basis_dtype: torch.dtype | None = None,
                    generator: torch.Generator | None = None) -> BatchedLanczosResult:
    """The k largest (algebraic) eigenpairs of N symmetric operators.

    Args:
        matvec: ``matvec(V, rows) -> W`` with V (n, d) the current vectors of the operators
            ``rows`` (a LongTensor (n,) of row indices into 0..N−1) and W (n, d) their products.
        v0: start vectors (N, d) (e.g. warm starts: the previous solve's v₁); zero or
            non-finite rows are replaced by Gaussian vectors from ``generator``.
        k: eigenpairs per operator (k = 2 gives λ₂ and the gap λ₁ − λ₂).
        tol: stop a row when its k Ritz residuals are ≤ tol·‖H_i‖.
        max_iters: cap on the steps of a row (≥ k).
        basis_dtype: dtype of the Krylov bases (default v0's).
        generator: for random start vectors (CPU or v0's device).
    """
    if v0.dim() != 2:
        raise ValueError(f"v0 must have shape (N, d), got {tuple(v0.shape)}")
    N, d = v0.shape
    k = check_int("k", k, 1)
    if k > d:
        raise ValueError(f"k={k} exceeds the dimension d={d}")
    tol = check_positive("tol", tol)
    max_iters = min(check_int("max_iters", max_iters, k), d)
    dtype = v0.dtype
    bdtype = basis_dtype or dtype
    device = v0.device
    start = v0.detach().to(bdtype).clone()
    bad = ~torch.isfinite(start).all(-1) | (torch.linalg.vector_norm(start, dim=-1) == 0)
    if bool(bad.any()):
        gdev = generator.device if generator is not None else device
        start[bad] = torch.randn(int(bad.sum()), d, generator=generator, dtype=bdtype, device=gdev).to(device)
    # Q holds the bases of the active rows only, in the order of ``active``: every step
    # reads them as slices (views); rows that stop are dropped in one copy at that step.
    cap = min(max_iters + 1, 16)
    Q = torch.empty(N, cap, d, dtype=bdtype, device=device)
    Q[:, 0] = start / torch.linalg.vector_norm(start, dim=-1, keepdim=True)
    alphas = torch.zeros(N, max_iters, dtype=torch.float64)
    betas = torch.zeros(N, max_iters, dtype=torch.float64)
    scale = torch.zeros(N, dtype=torch.float64)
    iters = torch.zeros(N, dtype=torch.long)
    converged = torch.zeros(N, dtype=torch.bool)
    theta_out = torch.full((N, k), math.nan, dtype=torch.float64)
    res_out = torch.full((N, k), math.nan, dtype=torch.float64)
    vectors = torch.zeros(N, k, d, dtype=dtype, device=device)
    active = torch.arange(N)
    eps = torch.finfo(bdtype).eps
    for j in range(max_iters):
        if active.numel() == 0:
            break
        if j + 1 >= Q.shape[1]:                                # grow the bases
            grown = torch.empty(Q.shape[0], min(max_iters + 1, 2 * Q.shape[1]), d, dtype=bdtype, device=device)
            grown[:, :j + 1] = Q[:, :j + 1]
            Q = grown
        dev_rows = active.to(device)
        q = Q[:, j]                                             # (n, d)
        w = matvec(q.to(dtype), dev_rows).to(bdtype)
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError("an operator returned NaN/Inf during Lanczos")
        alpha = torch.einsum("nd,nd->n", q, w)
        w = w - alpha[:, None] * q
        if j > 0:
            w = w - betas[active, j - 1].to(device, bdtype)[:, None] * Q[:, j - 1]
        basis = Q[:, :j + 1]                                    # (n, j+1, d), a view
        before = torch.linalg.vector_norm(w, dim=-1)
        w = w - torch.bmm(torch.bmm(basis, w[:, :, None]).transpose(1, 2), basis)[:, 0]
        after = torch.linalg.vector_norm(w, dim=-1)
        again = after < 0.5 * before                            # Kahan–Parlett: orthogonalise twice
        if bool(again.any()):
            w2 = w - torch.bmm(torch.bmm(basis, w[:, :, None]).transpose(1, 2), basis)[:, 0]
            w = torch.where(again[:, None], w2, w)
            after = torch.linalg.vector_norm(w, dim=-1)
        alpha64, beta64 = alpha.double().cpu(), after.double().cpu()
        alphas[active, j] = alpha64
        betas[active, j] = beta64
        scale[active] = torch.maximum(scale[active], torch.maximum(alpha64.abs(), beta64))
        iters[active] += 1
        # Ritz pairs of the active rows (all have j + 1 steps): batched eigh of the tridiagonals
        m = j + 1
        T = torch.diag_embed(alphas[active, :m])
        if m > 1:
            off = betas[active, :m - 1]
            T = T + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
        theta, S = torch.linalg.eigh(T)                         # ascending
        theta, S = theta.flip(-1), S.flip(-1)
        scale[active] = torch.maximum(scale[active], theta.abs().amax(-1))
        kk = min(k, m)
        res = beta64[:, None] * S[:, m - 1, :kk].abs()
        breakdown = beta64 <= 64 * eps * scale[active].clamp_min(1e-300) * math.sqrt(m)
        done = (m >= k) & ((res <= tol * scale[active, None]).all(-1) | breakdown)
        finished = done | (m == max_iters) | breakdown
        for local in torch.nonzero(finished).flatten().tolist():
            row = int(active[local])
            theta_out[row, :kk] = theta[local, :kk]
            res_out[row, :kk] = res[local]
            converged[row] = bool(done[local])
            y = torch.einsum("jk,jd->kd", S[local, :, :kk].to(device, bdtype), basis[local])
            vectors[row, :kk] = (y / torch.linalg.vector_norm(y, dim=-1, keepdim=True)).to(dtype)
        keep = ~finished
        if not bool(keep.any()):
            break
        if not bool(keep.all()):
            dev_keep = keep.to(device)
            kept = torch.empty(int(keep.sum()), Q.shape[1], d, dtype=bdtype, device=device)
            kept[:, :j + 1] = Q[dev_keep, :j + 1]              # copy only the columns in use
            Q, w, after = kept, w[dev_keep], after[dev_keep]
            active = active[keep]
        Q[:, j + 1] = (w / after[:, None]).to(bdtype)
    return BatchedLanczosResult(theta_out, vectors, res_out, scale, iters, converged, int(iters.sum()))
