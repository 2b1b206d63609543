"""Hutchinson's trace estimator: tr(H) = E[zᵀ H z] for probes with E[z zᵀ] = I."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_choice, check_int
from .operators import LinearOperator, check_deterministic
from .slq import random_probe

__all__ = ["TraceEstimate", "hutchinson_trace"]


@dataclass
class TraceEstimate:
    """Outcome of ``hutchinson_trace``.

    Attributes:
        trace: the sample mean of zᵀ H z.
        stderr: its standard error, sample standard deviation (ddof 1) / √n (NaN for
            n = 1). The samples are i.i.d., so (trace − tr H) / stderr is approximately
            standard normal (Student-t with n − 1 degrees of freedom for Gaussian-like
            samples) when n is not tiny.
        num_matvecs: products spent (= number of probes; check excluded).
        samples: (n,) float64 values zᵀ H z.
    """

    trace: float
    stderr: float
    num_matvecs: int
    samples: Tensor


def hutchinson_trace(op: LinearOperator, num_probes: int = 100, *, probe: str = "rademacher",
                     generator: torch.Generator | None = None,
                     check_determinism: bool = True) -> TraceEstimate:
    """Estimate tr(H) from ``num_probes`` products with random probes.

    Rademacher probes (default) give the smallest variance among i.i.d. probes:
    Var(zᵀHz) = 2 Σ_{i≠j} H_ij² (no contribution from the diagonal); Gaussian probes give
    2 ‖H‖_F².

    Args:
        op: a symmetric ``LinearOperator``.
        num_probes: n ≥ 1 (≥ 2 for a standard error).
        probe: "rademacher" or "gaussian" (entries of unit variance, not normalised).
        generator: random source of the probes.
        check_determinism: run ``check_deterministic(op)`` first (2 extra products).
    """
    num_probes = check_int("num_probes", num_probes, 1)
    check_choice("probe", probe, {"rademacher", "gaussian"})
    if check_determinism:
        check_deterministic(op)
    start = op.num_matvecs
    dev = generator.device if generator is not None else op.device
    samples = torch.empty(num_probes, dtype=torch.float64)
    for i in range(num_probes):
        z = random_probe(op.dim, probe, generator=generator, dtype=op.dtype, device=dev)
        hz = op.matvec(z)
        samples[i] = torch.dot(z.to(hz.device, torch.float64), hz.to(torch.float64)).item()
    mean = samples.mean().item()
    stderr = samples.std(unbiased=True).item() / math.sqrt(num_probes) if num_probes > 1 else math.nan
    return TraceEstimate(trace=mean, stderr=stderr, num_matvecs=op.num_matvecs - start,
                         samples=samples)
