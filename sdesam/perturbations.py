"""Perturbation rules ε_γ of the SAM family, defined once for every consumer.

A rule maps a minibatch gradient g_γ (shape (..., d), any leading dimensions) to the
direction ε_γ that SAM-type methods step along before taking the gradient:
x̃ = x + ρ ε_γ. The simulation core (discrete integrators, SDE drifts through the
Taylor vectors) and the training optimizers (``sdesam.optim``) all call these rules.

ε_γ is always treated as a constant of x (never differentiated), as in SAM's
implementation (paper Sec. 3.2).
"""
from __future__ import annotations

from torch import Tensor

from ._checks import check_nonnegative
from .curvature.power import unit_vector

__all__ = ["PerturbationRule", "SAM", "USAM", "ReverseSAM", "EigenSAM", "get_rule"]


class PerturbationRule:
    """Base class. Subclasses implement ``__call__(g, eigvec=None) -> ε``.

    Attributes:
        name: short identifier used in records and configs.
        needs_eigenvector: True when the rule consumes a top-eigenvector estimate v̂.
    """

    name: str = "rule"
    needs_eigenvector: bool = False

    def __call__(self, g: Tensor, eigvec: Tensor | None = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def config(self) -> dict:
        """JSON-serialisable description, saved next to every result."""
        return {"rule": self.name}


class SAM(PerturbationRule):
    """ε = g/‖g‖ (paper Eq. 2). A zero gradient gives ε = 0."""

    name = "sam"

    def __call__(self, g, eigvec=None):
        return unit_vector(g)


class USAM(PerturbationRule):
    """Unnormalised SAM: ε = g."""

    name = "usam"

    def __call__(self, g, eigvec=None):
        return g


class ReverseSAM(PerturbationRule):
    """ε = −g/‖g‖ (paper Appendix A)."""

    name = "reverse_sam"

    def __call__(self, g, eigvec=None):
        return -unit_vector(g)


class EigenSAM(PerturbationRule):
    """ε = u + α·sign(⟨g, v̂⟩)·v̂⊥ with u = g/‖g‖, v̂⊥ = v̂ − ⟨v̂, u⟩u (paper Eq. 7–8).

    Args:
        alpha: strength α ≥ 0 of the explicit alignment (paper default 0.2; α = 0 is SAM).
        renormalize: if True return ε/‖ε‖ (what a SAM first step that re-normalises its
            input does, e.g. the official code feeding ε to a standard SAM optimizer).
            Eq. 8 does not renormalise, so the default is False.

    ``eigvec`` (v̂) is a unit vector of shape (d,) or (..., d) broadcastable against g.
    sign(0) = 0, so a v̂ orthogonal to g adds nothing.
    """

    name = "eigen_sam"
    needs_eigenvector = True

    def __init__(self, alpha: float = 0.2, renormalize: bool = False):
        self.alpha = check_nonnegative("alpha", alpha)
        self.renormalize = bool(renormalize)

    def __call__(self, g, eigvec=None):
        if eigvec is None:
            raise ValueError("EigenSAM needs an eigenvector estimate: eigvec=None")
        if eigvec.shape[-1] != g.shape[-1]:
            raise ValueError(
                f"eigvec has dimension {eigvec.shape[-1]} but the gradient has {g.shape[-1]}")
        u = unit_vector(g)
        v_perp = eigvec - (eigvec * u).sum(-1, keepdim=True) * u
        sign = (g * eigvec).sum(-1, keepdim=True).sign()
        eps = u + self.alpha * sign * v_perp
        return unit_vector(eps) if self.renormalize else eps

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
