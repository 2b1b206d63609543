"""Perturbation rules ε_γ of the SAM family, defined once for every consumer.

A rule maps a minibatch gradient g_γ (shape (..., d), any leading dimensions) to the
direction ε_γ that SAM-type methods step along before taking the gradient:
x̃ = x + ρ ε_γ. The simulation core (discrete integrators, SDE drifts through the
Taylor vectors) and the training optimizers (``sdesam.optim``) all call these rules.

ε_γ is always treated as a constant of x (never differentiated), as in SAM's
implementation (paper Sec. 3.2).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_nonnegative
from .curvature.power import accurate_norm

__all__ = ["PerturbationRule", "SAM", "USAM", "ReverseSAM", "EigenSAM", "Direction", "get_rule"]


def _inverse_norm(g: Tensor) -> tuple[Tensor, Tensor]:
    """(‖g‖, 1/‖g‖) along the last dimension, keepdim; 1/‖g‖ stays finite for g = 0.

    The norm is accumulated in float64 (``accurate_norm``): torch's float32 vector_norm
    is off by ~1e-5 relative at d = 623k and ~1e-3 at d = 11M."""
    norm = accurate_norm(g, dim=-1, keepdim=True)
    return norm, 1.0 / norm.clamp_min(torch.finfo(g.dtype).tiny)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ along the last dimension (broadcasting), keepdim, without an (…, d) temporary."""
    return torch.einsum("...d,...d->...", a, b).unsqueeze(-1)


class PerturbationRule:
    """Base class. Subclasses implement ``coefficients``.

    Every rule of the family gives ε in the span of g and v̂: ε = a·g + b·v̂, with
    scalars a, b per leading index. ``coefficients`` returns them and ``__call__`` forms ε;
    a consumer that must not materialise ε (the training optimizers apply a·g and b·v̂ to
    each parameter tensor in place) uses the coefficients, so the rule is still defined
    once.

    Attributes:
        name: short identifier used in records and configs.
        needs_eigenvector: True when the rule consumes a top-eigenvector estimate v̂.
    """

    name: str = "rule"
    needs_eigenvector: bool = False

    def coefficients(self, g: Tensor, eigvec: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(a, b) of shape (..., 1) with ε = a·g + b·v̂; b is None when v̂ is not used."""
        raise NotImplementedError  # pragma: no cover

    def __call__(self, g: Tensor, eigvec: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """ε = a·g + b·v̂, optionally written into ``out`` (shape of g) without temporaries."""
        a, b = self.coefficients(g, eigvec)
        return self.combine(g, a, b, eigvec, out)

    @staticmethod
    def combine(g: Tensor, a: Tensor, b: Tensor | None, eigvec: Tensor | None = None,
                out: Tensor | None = None) -> Tensor:
        """ε = a·g + b·v̂ from the (a, b) of ``coefficients``, into ``out`` when given."""
        if out is None:
            return a * g if b is None else a * g + b * eigvec
        torch.mul(g, a, out=out)
        return out if b is None else out.addcmul_(b, eigvec)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def config(self) -> dict:
        """JSON-serialisable description, saved next to every result."""
        return {"rule": self.name}


class SAM(PerturbationRule):
    """ε = g/‖g‖ (paper Eq. 2). A zero gradient gives ε = 0."""

    name = "sam"

    def coefficients(self, g, eigvec=None):
        return _inverse_norm(g)[1], None


class USAM(PerturbationRule):
    """Unnormalised SAM: ε = g."""

    name = "usam"

    def coefficients(self, g, eigvec=None):
        return torch.ones_like(g[..., :1]), None


class ReverseSAM(PerturbationRule):
    """ε = −g/‖g‖ (paper Appendix A)."""

    name = "reverse_sam"

    def coefficients(self, g, eigvec=None):
        return -_inverse_norm(g)[1], None


class EigenSAM(PerturbationRule):
    """ε = u + α·sign(⟨g, v̂⟩)·v̂⊥ with u = g/‖g‖, v̂⊥ = v̂ − ⟨v̂, u⟩u (paper Eq. 7–8).

    Args:
        alpha: strength α ≥ 0 of the explicit alignment (paper default 0.2; α = 0 is SAM).
        renormalize: if True return ε/‖ε‖ (what a SAM first step that re-normalises its
            input does, e.g. the official code feeding ε to a standard SAM optimizer).
            Eq. 8 does not renormalise, so the default is False.

    ``eigvec`` (v̂) is a unit vector of shape (d,) or (..., d) broadcastable against g.
    sign(0) = 0, so a v̂ orthogonal to g adds nothing; a zero gradient gives ε = 0.

    In coefficients: with s = sign(⟨g, v̂⟩) and c = ⟨v̂, u⟩, ε = (1 − αsc)/‖g‖ · g + αs · v̂;
    since u ⊥ v̂⊥, ‖ε‖² = ‖u‖² + (αs)²(‖v̂‖² − c²), which ``renormalize`` divides by.
    """

    name = "eigen_sam"
    needs_eigenvector = True

    def __init__(self, alpha: float = 0.2, renormalize: bool = False):
        self.alpha = check_nonnegative("alpha", alpha)
        self.renormalize = bool(renormalize)

    def coefficients(self, g, eigvec=None):
        if eigvec is None:
            raise ValueError("EigenSAM needs an eigenvector estimate: eigvec=None")
        if eigvec.shape[-1] != g.shape[-1]:
            raise ValueError(
                f"eigvec has dimension {eigvec.shape[-1]} but the gradient has {g.shape[-1]}")
        norm, inv = _inverse_norm(g)
        gv = _dot(g, eigvec)
        b = self.alpha * gv.sign()                      # α · sign(⟨g, v̂⟩)
        c = gv * inv                                    # ⟨v̂, u⟩
        a = (1.0 - b * c) * inv
        if self.renormalize:
            u_sq = (norm * inv).square()                # 1, or 0 for g = 0
            eps_sq = u_sq + b.square() * (_dot(eigvec, eigvec) - c.square()).clamp_min(0.0)
            scale = torch.where(eps_sq > 0, eps_sq.rsqrt(), torch.zeros_like(eps_sq))
            a, b = a * scale, b * scale
        return a, b

    def __repr__(self):
        return f"EigenSAM(alpha={self.alpha}, renormalize={self.renormalize})"

    def config(self):
        return {"rule": self.name, "alpha": self.alpha, "renormalize": self.renormalize}


_RULES = {"sam": SAM, "usam": USAM, "reverse_sam": ReverseSAM, "eigen_sam": EigenSAM}


def get_rule(rule) -> PerturbationRule:
    """Accept a rule instance or its name (``"sam"``, ``"usam"``, ``"reverse_sam"``, ``"eigen_sam"``)."""
    if isinstance(rule, PerturbationRule):
        return rule
    if rule in _RULES:
        return _RULES[rule]()
    raise ValueError(f"rule must be a PerturbationRule or one of {sorted(_RULES)}, got rule={rule!r}")


class Direction(PerturbationRule):
    """ε = v̂, the given direction itself (coefficients a = 0, b = 1), whatever g is.

    Not a training rule: it lets the Taylor machinery evaluate ∇²f_γ v̂ and
    ∇³f_γ[v̂, v̂] (the components h and t with ε = v̂) for a chosen direction, e.g. the
    top eigenvector v₁ of H_γ, where ∇³f_γ[v₁, v₁] = ∇λ₁(H_γ) (paper Corollary 4.1.1).
    ``eigvec`` has shape (d,) or (..., d), broadcastable against g.
    """

    name = "direction"
    needs_eigenvector = True

    def coefficients(self, g, eigvec=None):
        if eigvec is None:
            raise ValueError("Direction needs the direction: eigvec=None")
        if eigvec.shape[-1] != g.shape[-1]:
            raise ValueError(f"eigvec has dimension {eigvec.shape[-1]} but the gradient has {g.shape[-1]}")
        return torch.zeros_like(g[..., :1]), torch.ones_like(g[..., :1])
