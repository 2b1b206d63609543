"""Extreme eigenpairs of a symmetric operator: Lanczos and the power method.

``lanczos`` runs the Lanczos recurrence with full reorthogonalisation (classical
Gram–Schmidt applied twice against the whole basis) and keeps the Krylov basis in
float64 even when the operator (the model) is float32, so that orthogonality, and with
it the Ritz values, stay accurate to the precision of the products themselves. Memory:
the basis holds d · (number of steps) float64 numbers (623,290 parameters × 100 steps
≈ 0.5 GB for the 784-784-10 MLP).

``power_method`` is plain power iteration (``power.power_iteration``, paper
Algorithm 1) run until the Rayleigh quotient stops changing, for comparison with what
Eigen-SAM does with q = 5 products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive
from .operators import LinearOperator, check_deterministic
from .power import power_iteration, unit_vector

__all__ = ["LanczosResult", "lanczos", "PowerMethodResult", "power_method"]


class _LanczosProcess:
    """The Lanczos recurrence with full reorthogonalisation, one step at a time.

    After ``m`` steps, ``alphas[:m]`` and ``betas[:m-1]`` define the m × m tridiagonal
    T = Qᵀ H Q, and ``betas[m-1]`` couples the basis to the next Lanczos vector (the
    Ritz residual of a Ritz pair (θ, Q s) is betas[m-1] · |s[m-1]|). On a breakdown
    (an invariant subspace is found) the process either stops (``restart=False``, what
    quadrature needs) or continues from a fresh random vector orthogonal to the basis
    (``restart=True``, with a zero coupling in T), which lets top-k find eigenvalues
    that the start vector missed.
    """

    def __init__(self, op: LinearOperator, v0: Tensor, *, restart: bool,
                 generator: torch.Generator | None, basis_dtype: torch.dtype):
        self.op = op
        self.d = op.dim
        self.restart = restart
        self.generator = generator
        self.basis_dtype = basis_dtype
        self.device = op.device
        self.capacity = min(self.d, 16)
        # the basis is stored by rows (capacity, d): each Lanczos vector is contiguous,
        # which keeps column access and the reorthogonalisation fast for large d
        self.Q = torch.zeros(self.capacity, self.d, dtype=basis_dtype, device=self.device)
        q = v0.to(dtype=basis_dtype, device=self.device).reshape(-1)
        nrm = torch.linalg.vector_norm(q)
        if not torch.isfinite(nrm) or nrm == 0:
            raise ValueError("the start vector must be finite and non-zero")
        self.Q[0] = q / nrm
        self.m = 0            # steps done = products spent
        self.num_vectors = 1  # columns of Q filled (the next vector included)
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.scale = 0.0      # running estimate of ‖H‖
        self.exhausted = False  # no further step possible (invariant subspace / dim d)
        self.num_restarts = 0

    def _grow(self) -> None:
        new_cap = min(self.d, 2 * self.capacity)
        Q = torch.zeros(new_cap, self.d, dtype=self.basis_dtype, device=self.device)
        Q[:self.capacity] = self.Q
        self.Q, self.capacity = Q, new_cap

    def _orthogonalise(self, w: Tensor, upto: int) -> Tensor:
        Qk = self.Q[:upto]
        for _ in range(2):
            w = w - (Qk @ w) @ Qk
        return w

    def step(self) -> None:
        if self.exhausted:
            raise RuntimeError("the Lanczos process cannot take another step")
        j = self.m
        q = self.Q[j]
        w = self.op.matvec(q).to(self.basis_dtype)
        if not torch.isfinite(w).all():
            raise FloatingPointError("the operator returned NaN/Inf during Lanczos")
        alpha = torch.dot(q, w).item()
        w = w - alpha * q
        if j > 0:
            w = w - self.betas[-1] * self.Q[j - 1]
        w = self._orthogonalise(w, j + 1)
        beta = torch.linalg.vector_norm(w).item()
        self.alphas.append(alpha)
        self.scale = max(self.scale, abs(alpha), beta, self.betas[-1] if self.betas else 0.0)
        self.m += 1
        if self.m >= self.d:
            self.betas.append(0.0 if beta <= self._breakdown_tol() else beta)
            self.exhausted = True
            return
        if self.num_vectors >= self.capacity:
            self._grow()
        if beta > self._breakdown_tol():
            self.betas.append(beta)
            self.Q[self.m] = w / beta
            self.num_vectors += 1
            return
        # breakdown: the basis spans an invariant subspace
        self.betas.append(0.0)
        if not self.restart:
            self.exhausted = True
            return
        for _ in range(3):
            gdev = self.generator.device if self.generator is not None else self.device
            r = torch.randn(self.d, generator=self.generator, dtype=self.basis_dtype,
                            device=gdev).to(self.device)
            r = self._orthogonalise(r, self.m)
            nrm = torch.linalg.vector_norm(r).item()
            if nrm > 1e-8:
                self.Q[self.m] = r / nrm
                self.num_vectors += 1
                self.num_restarts += 1
                return
        self.exhausted = True  # pragma: no cover - numerically full basis

    def _breakdown_tol(self) -> float:
        return 64 * torch.finfo(self.basis_dtype).eps * max(self.scale, 1e-300) * math.sqrt(self.m + 1)

    def tridiagonal(self) -> Tensor:
        m = self.m
        T = torch.zeros(m, m, dtype=torch.float64)
        T[range(m), range(m)] = torch.tensor(self.alphas, dtype=torch.float64)
        if m > 1:
            off = torch.tensor(self.betas[:m - 1], dtype=torch.float64)
            T[range(1, m), range(m - 1)] = off
            T[range(m - 1), range(1, m)] = off
        return T

    def ritz(self):
        """Ritz values (ascending), eigenvectors of T, residual norms (float64, CPU)."""
        theta, S = torch.linalg.eigh(self.tridiagonal())
        res = abs(self.betas[self.m - 1]) * S[self.m - 1, :].abs()
        return theta, S, res


def _select(theta: Tensor, k: int, which: str) -> Tensor:
    if which == "LA":
        order = torch.argsort(theta, descending=True)
    elif which == "SA":
        order = torch.argsort(theta)
    else:  # "LM"
        order = torch.argsort(theta.abs(), descending=True)
    return order[:k]


@dataclass
class LanczosResult:
    """Outcome of ``lanczos``.

    Attributes:
        eigenvalues: (k,) float64 Ritz values, ordered as ``which`` asks (for "LA"
            descending: eigenvalues[0] ≈ λ₁).
        eigenvectors: (d, k) Ritz vectors, unit norm, in the operator's dtype; column i
            belongs to eigenvalues[i]. Defined up to sign.
        residuals: (k,) float64 Ritz residual norms ‖H y − θ y‖ (from the recurrence,
            no extra products). Each Ritz value is within its residual of an exact
            eigenvalue of H.
        num_matvecs: products spent by the iteration (the determinism check's products
            are not included; they show in ``op.num_matvecs``).
        num_iters: Lanczos steps (= num_matvecs).
        converged: whether the stopping rule was met before ``max_iters``.
        history: (num_iters, k) float64 selected Ritz values after each step (NaN while
            fewer than k exist); row j is what j+1 products give.
        scale: the estimate of ‖H‖₂ (largest |Ritz value|) used by the relative tolerance.
        num_restarts: breakdowns after which the basis was continued with a new vector.
        residual_history: (num_iters, k) float64 Ritz residuals of the selected pairs
            after each step (NaN while fewer than k exist), to replay the stopping rule
            at other tolerances.
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    num_matvecs: int
    num_iters: int
    converged: bool
    history: Tensor
    scale: float
    num_restarts: int = 0
    residual_history: Tensor | None = field(default=None, repr=False)


def lanczos(op: LinearOperator, k: int = 1, *, which: str = "LA", tol: float | None = None,
            eigval_tol: float | None = None, max_iters: int | None = None,
            min_iters: int | None = None, v0: Tensor | None = None,
            generator: torch.Generator | None = None, basis_dtype: torch.dtype = torch.float64,
            check_determinism: bool = True) -> LanczosResult:
    """Top-k eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Stopping rule (checked after every step, at no extra products): stop when every
    selected Ritz pair has residual ‖H y − θ y‖ ≤ ``tol`` · ‖H‖ (‖H‖ estimated by the
    largest |Ritz value|). The residual comes from the recurrence; it bounds the distance
    from θ to an exact eigenvalue of H up to the rounding error of the products
    themselves (≈ 1e-7 · ‖H‖ for a float32 model, whose recurrence residual can keep
    falling below that), and the eigenvalue error is typically of order
    residual² / gap, far smaller. With ``eigval_tol`` given, also stop once every
    selected Ritz value changes by at most ``eigval_tol`` · ‖H‖ between consecutive
    steps (cheaper, no guarantee).

    Args:
        op: a symmetric ``LinearOperator`` (e.g. ``HessianOperator``).
        k: number of eigenpairs.
        which: "LA" largest algebraic (default; the sharpness λ₁), "SA" smallest
            algebraic, "LM" largest magnitude.
        tol: relative residual tolerance; default √(machine epsilon of op.dtype), i.e.
            3.5e-4 for float32 and 1.5e-8 for float64, which puts the eigenvalue error
            near the products' own rounding when the gap is not tiny.
        eigval_tol: optional relative tolerance on the change of the Ritz values.
        max_iters: cap on the steps (= products), default min(d, 200). Each step adds
            one float64 basis vector of length d.
        min_iters: steps always taken before testing convergence, default k + 1.
        v0: start vector (d,), default a Gaussian vector from ``generator``.
        generator: random source for v0 and for restarts after a breakdown.
        basis_dtype: dtype of the Krylov basis (float64 by default, whatever op.dtype).
        check_determinism: run ``check_deterministic(op)`` first (2 extra products).

    Note: from one start vector, Lanczos finds one copy of a repeated eigenvalue; use
    it for well-separated eigenvalues or read ``k`` as "distinct eigenvalues".
    """
    k = check_int("k", k, 1)
    check_choice("which", which, {"LA", "SA", "LM"})
    tol = math.sqrt(torch.finfo(op.dtype).eps) if tol is None else check_positive("tol", tol)
    if eigval_tol is not None:
        eigval_tol = check_positive("eigval_tol", eigval_tol)
    d = op.dim
    if k > d:
        raise ValueError(f"k={k} exceeds the dimension d={d}")
    max_iters = min(d, 200) if max_iters is None else min(check_int("max_iters", max_iters, 1), d)
    if max_iters < k:
        raise ValueError(f"max_iters={max_iters} must be >= k={k}")
    min_iters = min(k + 1, max_iters) if min_iters is None else check_int("min_iters", min_iters, 1)
    if check_determinism:
        check_deterministic(op)
    if v0 is None:
        v0 = torch.randn(d, generator=generator, dtype=basis_dtype,
                         device=generator.device if generator is not None else op.device)
    elif v0.shape != (d,):
        raise ValueError(f"v0 must have shape ({d},), got {tuple(v0.shape)}")
    start = op.num_matvecs
    proc = _LanczosProcess(op, v0, restart=True, generator=generator, basis_dtype=basis_dtype)
    history = []
    res_history = []
    converged = False
    prev = None
    while proc.m < max_iters and not proc.exhausted:
        proc.step()
        theta, S, res = proc.ritz()
        idx = _select(theta, k, which)
        sel = theta[idx]
        row = torch.full((k,), math.nan, dtype=torch.float64)
        row[:sel.numel()] = sel
        history.append(row)
        rrow = torch.full((k,), math.nan, dtype=torch.float64)
        rrow[:sel.numel()] = res[idx]
        res_history.append(rrow)
        if proc.m < min_iters or sel.numel() < k:
            prev = sel
            continue
        scale = theta.abs().max().item()
        if bool((res[idx] <= tol * scale).all()):
            converged = True
            break
        if eigval_tol is not None and prev is not None and prev.numel() == k:
            if bool(((sel - prev).abs() <= eigval_tol * scale).all()):
                converged = True
                break
        prev = sel
    if proc.exhausted and not converged:
        converged = True  # the Krylov space is invariant: the Ritz pairs are exact
    theta, S, res = proc.ritz()
    idx = _select(theta, k, which)
    if idx.numel() < k:
        raise RuntimeError(f"Lanczos found only {idx.numel()} Ritz values; raise max_iters")
    Y = (S[:, idx].to(device=proc.device, dtype=basis_dtype).T @ proc.Q[:proc.m]).T   # (d, k)
    Y = Y / torch.linalg.vector_norm(Y, dim=0, keepdim=True)
    return LanczosResult(
        eigenvalues=theta[idx].clone(), eigenvectors=Y.to(op.dtype), residuals=res[idx].clone(),
        num_matvecs=op.num_matvecs - start, num_iters=proc.m, converged=converged,
        history=torch.stack(history), scale=theta.abs().max().item(),
        num_restarts=proc.num_restarts, residual_history=torch.stack(res_history))


@dataclass
class PowerMethodResult:
    """Outcome of ``power_method``.

    Attributes:
        eigenvalue: the last Rayleigh quotient ⟨v, Hv⟩ (float), an estimate of the
            eigenvalue of largest magnitude.
        vector: (d,) unit vector, Hv/‖Hv‖ after the last product (op dtype).
        num_matvecs: products spent (check excluded).
        converged: whether the stopping rule was met before ``max_iters``.
        history: (num_matvecs,) float64 Rayleigh quotients; entry t is what t+1
            products give.
    """

    eigenvalue: float
    vector: Tensor
    num_matvecs: int
    converged: bool
    history: Tensor = field(repr=False)


def power_method(op: LinearOperator, *, tol: float = 1e-6, max_iters: int = 1000,
                 v0: Tensor | None = None, generator: torch.Generator | None = None,
                 check_determinism: bool = True,
                 callback: Callable[[int, Tensor, float], None] | None = None) -> PowerMethodResult:
    """Power iteration (``power.power_iteration``, one product at a time) until the
    Rayleigh quotient changes by at most ``tol`` relative between two products.

    Caveats: it converges to the eigenvalue of largest *magnitude* (λ₁ only when λ₁ ≥
    |λ_min|), at the rate (λ₂/λ₁)² per product for the Rayleigh quotient of a symmetric
    operator, and a small relative change does not bound the error when the gap is
    small (it can stop early, far from λ₁). Lanczos needs far fewer products.

    Args:
        tol: relative-change tolerance.
        max_iters: cap on the products.
        v0: start vector (d,), default Gaussian from ``generator``.
        callback: called as ``callback(t, v, θ)`` after product t (1-based) with the
            estimate after t products, v = Hᵗv₀/‖Hᵗv₀‖ (what Algorithm 1 returns for
            q = t), and the Rayleigh quotient θ of the vector fed to product t (e.g. to
            record the alignment of v with a reference eigenvector, paper Fig. 5).
        check_determinism: run ``check_deterministic(op)`` first (2 extra products).
    """
    tol = check_positive("tol", tol)
    max_iters = check_int("max_iters", max_iters, 1)
    if check_determinism:
        check_deterministic(op)
    d = op.dim
    if v0 is None:
        v0 = torch.randn(d, generator=generator, dtype=op.dtype,
                         device=generator.device if generator is not None else op.device)
    elif v0.shape != (d,):
        raise ValueError(f"v0 must have shape ({d},), got {tuple(v0.shape)}")
    v = unit_vector(v0.to(dtype=op.dtype, device=op.device))
    start = op.num_matvecs
    history: list[float] = []
    converged = False
    for t in range(1, max_iters + 1):
        res = power_iteration(op.matvec, v, 1)
        theta = float(res.eigenvalue)
        v = res.vector
        if callback is not None:
            callback(t, v, theta)
        history.append(theta)
        if t >= 2 and abs(theta - history[-2]) <= tol * abs(theta):
            converged = True
            break
    return PowerMethodResult(eigenvalue=history[-1], vector=v, num_matvecs=op.num_matvecs - start,
                             converged=converged,
                             history=torch.tensor(history, dtype=torch.float64))
