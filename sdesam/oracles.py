"""Per-minibatch oracles by generic reverse-mode autograd.

For one minibatch γ at x (u_γ = ε_γ is held constant, never differentiated; docs/math.md §2):

    g_γ = ∇f_γ(x)            ε_γ = rule(g_γ)
    h_γ = ∇²f_γ(x) ε_γ       t_γ = ∇³f_γ(x)(ε_γ, ε_γ) = ∇_x[ε_γᵀ ∇²f_γ(x) ε_γ]

and the Taylor vectors of the SAM gradient ∇f_γ(x + ρε_γ) in powers of ρ:

    v⁰ = g,   v¹ = g + ρh,   v² = g + ρh + (ρ²/2) t.

The functions here work on any loss written as a function of the flat parameters,
``loss_fn(x) -> (*S,)`` for x of shape (*S, d), where each leading index is an
independent problem instance (a trajectory, a minibatch). Because the instances do
not interact, the gradient of ``loss_fn(x).sum()`` is the stack of per-instance
gradients, so one autograd call serves all of them.

This generic path is reverse-over-reverse-over-reverse (``autograd.grad`` with
``create_graph``): three nested reverse passes. Sequential models of standard layers
take the cheaper Taylor-mode path of ``sdesam.jet`` instead (``benchmarks.oracles``
measures both; docs/results/oracles.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ._checks import check_int, check_nonnegative
from .rules import PerturbationRule

__all__ = ["TaylorVectors", "autograd_gradient", "autograd_hvp", "autograd_taylor", "check_order"]


@dataclass
class TaylorVectors:
    """Per-minibatch oracle outputs, each of shape (*S, d).

    Attributes:
        v: the Taylor vector of the requested ``order`` (v⁰, v¹ or v²).
        g: the minibatch gradient g_γ.
        eps: the perturbation direction ε_γ = rule(g_γ).
        h: ∇²f_γ ε_γ, only when ``components=True`` and order ≥ 1.
        t: ∇³f_γ(ε_γ, ε_γ), only when ``components=True`` and order = 2.
        order, rho: what ``v`` was built from.
    """

    v: Tensor
    g: Tensor
    eps: Tensor
    order: int
    rho: float
    h: Tensor | None = None
    t: Tensor | None = None


def check_order(order) -> int:
    order = check_int("order", order, 0)
    if order > 2:
        raise ValueError(f"order must be 0, 1 or 2 (the Taylor vector v⁰, v¹ or v²), got order={order!r}")
    return order


def _leaf(x: Tensor) -> Tensor:
    return x.detach().clone().requires_grad_(True)


def _grad(out: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """∇_x of a scalar; zero when ``out`` does not depend on x (e.g. the Hessian-vector
    product of a quadratic, or the gradient of a linear loss, is constant)."""
    if not out.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(out, x, create_graph=create_graph, allow_unused=True)
    return torch.zeros_like(x) if g is None else g


def autograd_gradient(loss_fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """∇ of ``loss_fn`` for every leading index of x (*S, d) → (*S, d)."""
    with torch.enable_grad():
        x = _leaf(x)
        return _grad(loss_fn(x).sum(), x)


def autograd_hvp(loss_fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """∇²f(x) v per leading index, by double backward; x and v of shape (*S, d)."""
    with torch.enable_grad():
        x = _leaf(x)
        g = _grad(loss_fn(x).sum(), x, create_graph=True)
        return _grad((g * v.detach()).sum(), x)


def autograd_taylor(loss_fn: Callable[[Tensor], Tensor], x: Tensor, rule: PerturbationRule,
                    rho: float, order: int = 2, eigvec: Tensor | None = None,
                    components: bool = False, generator: torch.Generator | None = None) -> TaylorVectors:
    """g, ε, and the Taylor vector v^order at x (*S, d) by reverse³ autograd.

    The components h and t are always computed on this path (the Taylor vector needs
    them), so ``components`` only decides whether they are returned.
    """
    order = check_order(order)
    rho = check_nonnegative("rho", rho)
    with torch.enable_grad():
        x = _leaf(x)
        g = _grad(loss_fn(x).sum(), x, create_graph=order > 0)
        eps = rule(g.detach(), eigvec, x=x.detach(), generator=generator)
        gd = g.detach()
        if order == 0:
            return TaylorVectors(v=gd, g=gd, eps=eps, order=0, rho=rho)
        h = _grad((g * eps).sum(), x, create_graph=order > 1)
        if order == 1:
            h = h.detach()
            return TaylorVectors(v=gd + rho * h, g=gd, eps=eps, order=1, rho=rho,
                                 h=h if components else None)
        t = _grad((h * eps).sum(), x)
        h = h.detach()
    v = gd + rho * h + (0.5 * rho * rho) * t
    return TaylorVectors(v=v, g=gd, eps=eps, order=2, rho=rho,
                         h=h if components else None, t=t if components else None)
