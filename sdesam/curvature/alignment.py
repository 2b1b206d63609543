"""Perturbation–eigenvector alignment (paper Sec. 4.3)."""
from __future__ import annotations

import torch
from torch import Tensor

from .power import accurate_norm

__all__ = ["alignment"]


def alignment(eps: Tensor, v1: Tensor) -> Tensor:
    """Align(ε, v₁) = 1 − min_{s=±1} ‖ε/‖ε‖ − s·v₁‖ along the last dimension.

    Both arguments are normalised (the paper's v₁ is a unit eigenvector; an estimate
    v̂ need not be exactly unit). The value depends only on the angle between ε and
    ±v₁: 1 − √(2 − 2|cos∠(ε, v₁)|), so it is 1 for (anti-)parallel vectors, 1 − √2 ≈
    −0.414 for orthogonal ones, and always in [1 − √2, 1].

    Args:
        eps: (..., d) perturbation vectors (e.g. ε_γ of SAM or Eigen-SAM).
        v1: (..., d) top eigenvector(s); broadcast against ``eps`` over leading dims.
    Returns:
        (...) alignments, in the promoted dtype. NaN where ε or v₁ is the zero vector
        (the direction is undefined).
    """
    if eps.shape[-1] != v1.shape[-1]:
        raise ValueError(f"eps and v1 must have the same last dimension, got "
                         f"{tuple(eps.shape)} and {tuple(v1.shape)}")
    dtype = torch.promote_types(eps.dtype, v1.dtype)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    eps, v1 = eps.to(dtype), v1.to(dtype)
    ne = accurate_norm(eps, dim=-1, keepdim=True)
    nv = accurate_norm(v1, dim=-1, keepdim=True)
    e, v = eps / ne, v1 / nv  # NaN for zero vectors, by design
    dist = torch.minimum(accurate_norm(e - v, dim=-1), accurate_norm(e + v, dim=-1))
    return 1.0 - dist
