"""Spectral density by stochastic Lanczos quadrature (SLQ).

Following Ghorbani, Krishnan & Xiao (2019, "An investigation into neural net
optimization via Hessian eigenvalue density") and Papyan (2019): for each of n_v random
unit probes v (Rademacher or Gaussian, normalised), m Lanczos steps from v give the
tridiagonal T_m = S diag(θ) Sᵀ; the Gauss quadrature nodes θ_i with weights
τ_i = S[0, i]² satisfy Σ_i τ_i θ_i^p = vᵀ H^p v exactly for p ≤ 2m − 1. Averaging over
probes estimates the spectral measure (1/d) Σ_j δ(t − λ_j), since E[v vᵀ] = I/d.

The smoothed density on a grid is φ_σ(t) = (1/n_v) Σ_l Σ_i τ_i^l N(t; θ_i^l, σ²).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_positive
from .lanczos import _LanczosProcess
from .operators import LinearOperator, check_deterministic

__all__ = ["SLQResult", "slq", "spectral_density", "random_probe"]


def random_probe(dim: int, kind: str = "rademacher", *, generator: torch.Generator | None = None,
                 dtype=torch.float64, device=None) -> Tensor:
    """A random probe vector: Rademacher (±1 entries) or standard Gaussian (not normalised)."""
    check_choice("probe", kind, {"rademacher", "gaussian"})
    if kind == "gaussian":
        return torch.randn(dim, generator=generator, dtype=dtype, device=device)
    bits = torch.randint(0, 2, (dim,), generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


@dataclass
class SLQResult:
    """Ritz nodes and quadrature weights of stochastic Lanczos quadrature.

    Attributes:
        nodes: (n_v, m) float64 Ritz values per probe. A probe whose Krylov space became
            invariant before m steps has NaN-padded nodes (weight 0) after its last one.
        weights: (n_v, m) float64 weights τ, each row sums to 1 (0 for padding).
        num_matvecs: products spent (check excluded).
        dim: d, the operator's dimension.
    """

    nodes: Tensor
    weights: Tensor
    num_matvecs: int
    dim: int

    def moment(self, p: int) -> float:
        """Estimate of (1/d) tr(H^p) (p = 0 gives 1; p = 1 gives trace / d)."""
        th = torch.nan_to_num(self.nodes, nan=0.0)
        return (self.weights * th.pow(p)).sum(1).mean().item()

    def trace(self) -> float:
        """Estimate of tr(H) = d · (first moment)."""
        return self.dim * self.moment(1)

    def support(self) -> tuple[float, float]:
        """Smallest and largest Ritz node over all probes."""
        finite = self.nodes[torch.isfinite(self.nodes)]
        return finite.min().item(), finite.max().item()


def slq(op: LinearOperator, num_probes: int = 10, num_steps: int = 80, *,
        probe: str = "rademacher", generator: torch.Generator | None = None,
        basis_dtype: torch.dtype = torch.float64, check_determinism: bool = True) -> SLQResult:
    """Stochastic Lanczos quadrature: ``num_probes`` probes × ``num_steps`` Lanczos steps.

    Each probe runs its own Lanczos recurrence with full reorthogonalisation (float64
    basis, d · num_steps numbers of memory at a time) and stops early if its Krylov
    space becomes invariant (then its quadrature is exact). Cost: at most
    num_probes · num_steps products.

    Args:
        op: a symmetric ``LinearOperator``.
        num_probes: n_v, independent probes (the estimate's noise falls like 1/√n_v).
        num_steps: m, Lanczos steps per probe (capped at d); larger m resolves the
            spectrum more finely (exact moments up to order 2m − 1).
        probe: "rademacher" (default) or "gaussian"; either is normalised to unit norm.
        generator: random source of the probes.
        check_determinism: run ``check_deterministic(op)`` first (2 extra products).
    """
    num_probes = check_int("num_probes", num_probes, 1)
    num_steps = min(check_int("num_steps", num_steps, 1), op.dim)
    check_choice("probe", probe, {"rademacher", "gaussian"})
    if check_determinism:
        check_deterministic(op)
    start = op.num_matvecs
    dev = generator.device if generator is not None else op.device
    nodes = torch.full((num_probes, num_steps), math.nan, dtype=torch.float64)
    weights = torch.zeros(num_probes, num_steps, dtype=torch.float64)
    for l in range(num_probes):
        v = random_probe(op.dim, probe, generator=generator, dtype=basis_dtype, device=dev)
        proc = _LanczosProcess(op, v, restart=False, generator=generator, basis_dtype=basis_dtype)
        while proc.m < num_steps and not proc.exhausted:
            proc.step()
        theta, S, _ = proc.ritz()
        nodes[l, :proc.m] = theta
        weights[l, :proc.m] = S[0, :] ** 2
        del proc
    return SLQResult(nodes=nodes, weights=weights, num_matvecs=op.num_matvecs - start, dim=op.dim)


def spectral_density(result: SLQResult, grid: Tensor, sigma: float, *,
                     normalize: bool = True) -> Tensor:
    """Gaussian-smoothed spectral density of an SLQ result evaluated on ``grid``.

    φ(t) = (1/n_v) Σ_l Σ_i τ_i^l exp(−(t − θ_i^l)² / (2σ²)) / (σ √(2π)).

    Each Gaussian integrates to 1 over the real line, so φ does too; with
    ``normalize=True`` (default) φ is divided by its trapezoid integral over ``grid``
    so that it integrates to exactly 1 on the grid (this also absorbs mass outside a
    grid that does not cover the spectrum ± a few σ). Choose σ comparable to the grid
    spacing or wider, and the grid to cover [λ_min − 3σ, λ_max + 3σ]
    (``result.support()``).

    Args:
        result: the output of ``slq``.
        grid: (G,) increasing points t.
        sigma: kernel width σ > 0.
    Returns:
        (G,) float64 density values.
    """
    sigma = check_positive("sigma", sigma)
    grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    if grid.numel() < 2:
        raise ValueError("grid needs at least 2 points")
    if not bool((grid[1:] > grid[:-1]).all()):
        raise ValueError("grid must be strictly increasing")
    th = torch.nan_to_num(result.nodes, nan=0.0).reshape(-1)
    w = result.weights.reshape(-1) / result.nodes.shape[0]
    z = (grid[:, None] - th[None, :]) / sigma
    dens = (torch.exp(-0.5 * z * z) * w[None, :]).sum(1) / (sigma * math.sqrt(2 * math.pi))
    if normalize:
        total = torch.trapezoid(dens, grid)
        if total <= 0:
            raise ValueError("the density is zero on the whole grid; widen the grid or sigma")
        dens = dens / total
    return dens
