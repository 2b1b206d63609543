"""Perturbation rules ε_γ of the SAM family, defined once for every consumer.

A rule maps a minibatch gradient g_γ (shape (..., d), any leading dimensions) to the
direction ε_γ that SAM-type methods step along before taking the gradient:
x̃ = x + ρ ε_γ. The discrete dynamics (``sdesam.discrete``), the SDE drifts through the
Taylor vectors (``sdesam.sde``) and the training optimizers (``sdesam.optim``) all call
these rules.

ε_γ is always treated as a constant of x (never differentiated), as in SAM's
implementation (paper Sec. 3.2).

Names. A rule class ends in ``Rule`` (``SAMRule``); its ``name`` (``"sam"``) names the
discrete method that steps along it, and the SDEs of that method are named after it
(``"sam_sde3"``, ``"asam_sde3"``, ``"sign_sam_sde3"``). A rule written without a ``name``
gets its class name in snake case (``SignSAM`` → ``"sign_sam"``).
"""
from __future__ import annotations

import functools
import math
import re

import torch
from torch import Tensor

from ._checks import check_nonnegative
from .curvature.power import accurate_norm

__all__ = ["PerturbationRule", "SAMRule", "USAMRule", "ReverseSAMRule", "EigenSAMRule", "ASAMRule",
           "FisherSAMRule", "DirectionRule", "RULES", "get_rule"]


def _snake(name: str) -> str:
    """``SignSAM`` → ``sign_sam``, ``MyRule`` → ``my`` (a trailing ``Rule`` is dropped)."""
    name = re.sub(r"Rule$", "", name) or name
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _config_value(value):
    """A JSON-serialisable description of a rule attribute (tensors by shape and dtype)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={str(value.dtype).replace('torch.', '')})"
    if isinstance(value, (tuple, list)):
        return [_config_value(v) for v in value]
    if isinstance(value, PerturbationRule):
        return value.config()
    return repr(value)


def _inverse_norm(g: Tensor) -> tuple[Tensor, Tensor]:
    """(‖g‖, 1/‖g‖) along the last dimension, keepdim; 1/‖g‖ stays finite for g = 0.

    The norm is accumulated in float64 (``accurate_norm``): torch's float32 vector_norm
    is off by ~1e-5 relative at d = 623k and ~1e-3 at d = 11M."""
    norm = accurate_norm(g, dim=-1, keepdim=True)
    return norm, 1.0 / norm.clamp_min(torch.finfo(g.dtype).tiny)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a, b⟩ along the last dimension (broadcasting), keepdim, without an (…, d) temporary."""
    return torch.einsum("...d,...d->...", a, b).unsqueeze(-1)


def _check_output(rule: "PerturbationRule", what: str, g: Tensor, values) -> None:
    """Raise a ValueError naming ``rule`` when its output has the wrong shape, or is
    NaN/Inf for a finite gradient (a non-finite g is left to the dynamics' own check)."""
    shape = g.shape if what == "ε" else g.shape[:-1] + (1,)
    for value in values:
        if value is None:
            continue
        if not isinstance(value, Tensor):
            raise ValueError(f"perturbation rule {rule!r} returned {what} of type "
                             f"{type(value).__name__}, expected a tensor")
        try:
            ok = value.dim() >= 1 and value.shape[-1] == shape[-1] \
                and len(torch.broadcast_shapes(value.shape, shape)) >= 0
        except RuntimeError:
            ok = False
        if not ok:
            expected = "the gradient's shape" if what == "ε" else "shape (..., 1)"
            raise ValueError(f"perturbation rule {rule!r} returned {what} of shape "
                             f"{tuple(value.shape)} for a gradient of shape {tuple(g.shape)}; "
                             f"expected {expected} {tuple(shape)}")
        if not bool(torch.isfinite(value).all()) and bool(torch.isfinite(g).all()):
            raise ValueError(f"perturbation rule {rule!r} returned a non-finite {what} (NaN or "
                             "Inf) for a finite gradient")


def _checked(method, what: str):
    """Wrap a subclass's ``coefficients`` / ``perturbation`` with ``_check_output``."""
    @functools.wraps(method)
    def checked(self, g, *args, **kwargs):
        result = method(self, g, *args, **kwargs)
        _check_output(self, what, g, result if what == "(a, b)" else (result,))
        return result
    checked._checked = True
    return checked


class PerturbationRule:
    """Base class of the perturbation rules ε_γ = ε(x, g_γ, v̂).

    Two ways to define a rule:

    * the coefficient form (every rule of the paper): ε = a·g + b·v̂ with scalars a, b
      per leading index. Implement ``coefficients(g, eigvec) -> (a, b)``;
      ``has_coefficients`` is True. Consumers use (a, b) for their fast paths: the
      training optimizers apply a·g and b·v̂ to each parameter tensor in place, and
      ``ModuleProblem`` builds the weight part of ε = a·g in factored form — so ε is
      never materialised there.
    * the general form: implement ``perturbation(g, eigvec=None, x=None) -> ε`` (any
      function of the point x, the gradient g and v̂, shape of g, broadcasting over leading
      dimensions); ``has_coefficients`` becomes False (set automatically when a subclass
      defines ``perturbation`` but not ``coefficients``). Set ``needs_point = True`` when
      ε depends on x. Consumers then materialise ε and use it as a plain direction.

    A rule that samples sets ``needs_generator = True`` and takes a keyword ``generator``
    (a ``torch.Generator`` on g's device) in ``coefficients`` / ``perturbation``; every
    consumer passes one drawn from its run's seed and step (dynamics: the key
    (seed, rule stream, step[, sub-step])), so the same seed gives the same samples.

    Every rule is called as ``rule(g, eigvec=None, out=None, x=None, generator=None) -> ε``.
    The outputs of rules defined outside this module are checked (shape, and NaN/Inf for
    a finite g: one reduction, a device synchronisation on GPUs) and a mistake raises a
    ValueError naming the rule.

    Records. ``name`` (default: the class name in snake case) labels the rule's method
    in records; ``config()`` is ``{"rule": name}`` plus every public attribute of the
    instance (its hyperparameters), so a record says which rule made it.

    Attributes:
        name: short identifier used in records and configs.
        needs_eigenvector: True when the rule consumes a top-eigenvector estimate v̂.
        needs_point: True when ε depends on the parameters x (consumers pass ``x=``).
        needs_generator: True when the rule samples (consumers pass ``generator=``).
        has_coefficients: True when ``coefficients`` gives ε = a·g + b·v̂.
    """

    name: str = "rule"
    needs_eigenvector: bool = False
    needs_point: bool = False
    needs_generator: bool = False
    has_coefficients: bool = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = _snake(cls.__name__)
        if "has_coefficients" not in cls.__dict__ and "perturbation" in cls.__dict__ \
                and cls.coefficients is PerturbationRule.coefficients:
            cls.has_coefficients = False
        if cls.__module__ == __name__:
            return          # the rules defined here are tested; checking them would cost a sync per call on GPUs
        for attr, what in (("coefficients", "(a, b)"), ("perturbation", "ε")):
            method = cls.__dict__.get(attr)
            if method is not None and not getattr(method, "_checked", False):
                setattr(cls, attr, _checked(method, what))

    def coefficients(self, g: Tensor, eigvec: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(a, b) of shape (..., 1) with ε = a·g + b·v̂; b is None when v̂ is not used."""
        raise TypeError(f"perturbation rule {self!r} has no coefficient form "
                        "(has_coefficients=False): call rule(g, eigvec, x=x)")

    def perturbation(self, g: Tensor, eigvec: Tensor | None = None, x: Tensor | None = None) -> Tensor:
        """ε for the gradient g (..., d) at the point x (..., d), shape of g."""
        a, b = self.coefficients(g, eigvec)
        return self.combine(g, a, b, eigvec)

    def _generator_kwargs(self, generator) -> dict:
        if not self.needs_generator:
            return {}
        if generator is None:
            raise ValueError(f"perturbation rule {self!r} samples (needs_generator=True): pass generator=")
        return {"generator": generator}

    def coefficients_for(self, g: Tensor, eigvec: Tensor | None = None, generator=None):
        """``coefficients(g, eigvec)``, passing ``generator`` to a rule that samples."""
        return self.coefficients(g, eigvec, **self._generator_kwargs(generator))

    def __call__(self, g: Tensor, eigvec: Tensor | None = None, out: Tensor | None = None,
                 x: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """ε, optionally written into ``out`` (shape of g); coefficient rules form
        a·g + b·v̂ there without temporaries."""
        if self.needs_point and x is None:
            raise ValueError(f"perturbation rule {self!r} depends on the point: pass x=, got x=None")
        if self.has_coefficients:
            a, b = self.coefficients_for(g, eigvec, generator)
            return self.combine(g, a, b, eigvec, out)
        eps = self.perturbation(g, eigvec, x, **self._generator_kwargs(generator))
        return eps if out is None else out.copy_(eps)

    @staticmethod
    def combine(g: Tensor, a: Tensor, b: Tensor | None, eigvec: Tensor | None = None,
                out: Tensor | None = None) -> Tensor:
        """ε = a·g + b·v̂ from the (a, b) of ``coefficients``, into ``out`` when given."""
        if out is None:
            return a * g if b is None else a * g + b * eigvec
        torch.mul(g, a, out=out)
        return out if b is None else out.addcmul_(b, eigvec)

    def hyperparameters(self) -> dict:
        """The instance's public attributes (its hyperparameters), JSON-serialisable."""
        return {k: _config_value(v) for k, v in sorted(vars(self).items()) if not k.startswith("_")}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"

    def config(self) -> dict:
        """``{"rule": name, **hyperparameters}``, saved next to every result."""
        return {"rule": self.name, **self.hyperparameters()}


class SAMRule(PerturbationRule):
    """ε = g/‖g‖ (paper Eq. 2). A zero gradient gives ε = 0."""

    name = "sam"

    def coefficients(self, g, eigvec=None):
        return _inverse_norm(g)[1], None


class USAMRule(PerturbationRule):
    """Unnormalised SAM: ε = g."""

    name = "usam"

    def coefficients(self, g, eigvec=None):
        return torch.ones_like(g[..., :1]), None


class ReverseSAMRule(PerturbationRule):
    """ε = −g/‖g‖ (paper Appendix A)."""

    name = "reverse_sam"

    def coefficients(self, g, eigvec=None):
        return -_inverse_norm(g)[1], None


class EigenSAMRule(PerturbationRule):
    """ε = u + α·sign(⟨g, v̂⟩)·v̂⊥ with u = g/‖g‖, v̂⊥ = v̂ − ⟨v̂, u⟩u (paper Eq. 7–8).

    Args:
        alpha: strength α ≥ 0 of the explicit alignment (paper default 0.2; α = 0 is SAM).
        renormalize: if True return ε/‖ε‖ (a unit-length variant). Neither Eq. 8 nor the
            official code renormalises (its SAM first step runs with normalisation off;
            tests/test_official_replay.py), so the default is False.

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
            raise ValueError("EigenSAMRule needs an eigenvector estimate: eigvec=None")
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


class ASAMRule(PerturbationRule):
    """Adaptive SAM (Kwon et al. 2021): ε = T²g/‖Tg‖ with T = diag(|x| + ξ).

    Args:
        xi: ξ ≥ 0 added to |x|. ξ = 0 (default) is davda54/sam's ``adaptive=True``
            (e_w = ρ·x²·g/‖|x|·g‖ with the norm over all parameters); Kwon et al.'s own
            code uses ξ = 0.01 (and leaves biases unscaled, which this rule does not).

    x and g have shape (..., d) (x broadcasts against g). Tg = 0 (a zero gradient, or
    x = 0 with ξ = 0) gives ε = 0. ε depends on x elementwise, so the rule has no
    coefficient form: consumers materialise ε. ‖ε‖ is not 1: x̃ = x + ρε lies on the
    ellipsoid ‖T⁻¹(x̃ − x)‖ = ρ.
    """

    name = "asam"
    needs_point = True

    def __init__(self, xi: float = 0.0):
        self.xi = check_nonnegative("xi", xi)

    def perturbation(self, g, eigvec=None, x=None):
        if x is None:
            raise ValueError("ASAMRule depends on the point: pass x=, got x=None")
        if x.shape[-1] != g.shape[-1]:
            raise ValueError(f"x has dimension {x.shape[-1]} but the gradient has {g.shape[-1]}")
        t = x.abs() + self.xi if self.xi else x.abs()
        tg = t * g
        inv = _inverse_norm(tg)[1]
        return tg.mul_(t).mul_(inv)


class FisherSAMRule(PerturbationRule):
    """Fisher-SAM (Kim et al. 2022): ε = F⁻¹g / √(gᵀF⁻¹g) with F = diag(1 + η_F g²).

    Args:
        eta_f: η_F ≥ 0, the strength of the diagonal Fisher approximation g² (η_F = 0 is
            SAM's ε = g/‖g‖).

    ε depends on g elementwise (no coefficient form); ‖ε‖_F = 1 in the Fisher metric,
    i.e. εᵀFε = 1. A zero gradient gives ε = 0.
    """

    name = "fisher_sam"

    def __init__(self, eta_f: float = 1.0):
        self.eta_f = check_nonnegative("eta_f", eta_f)

    def perturbation(self, g, eigvec=None, x=None):
        finv_g = g / (1.0 + self.eta_f * g * g)
        quad = _dot(g, finv_g)                                  # gᵀF⁻¹g ≥ 0
        inv = torch.where(quad > 0, quad.clamp_min(torch.finfo(g.dtype).tiny).rsqrt(), torch.zeros_like(quad))
        return finv_g * inv


class DirectionRule(PerturbationRule):
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
            raise ValueError("DirectionRule needs the direction: eigvec=None")
        if eigvec.shape[-1] != g.shape[-1]:
            raise ValueError(f"eigvec has dimension {eigvec.shape[-1]} but the gradient has {g.shape[-1]}")
        return torch.zeros_like(g[..., :1]), torch.ones_like(g[..., :1])


#: the rules by name (training rules; ``DirectionRule`` is a tool of the eigen-SDEs)
RULES = {cls.name: cls for cls in (SAMRule, USAMRule, ReverseSAMRule, EigenSAMRule, ASAMRule, FisherSAMRule)}


def get_rule(rule) -> PerturbationRule:
    """Accept a rule instance or its name (one of ``RULES``)."""
    if isinstance(rule, PerturbationRule):
        return rule
    if isinstance(rule, str) and rule in RULES:
        return RULES[rule]()
    raise ValueError(f"rule must be a PerturbationRule or one of {sorted(RULES)}, got rule={rule!r}")
