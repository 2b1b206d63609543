"""Update maps Φ of the SAM family: the direction a method steps along, given the clean and
the perturbed minibatch gradients.

A SAM-family step is

    x ← x − η Φ(g_γ, p_γ),     g_γ = ∇f_γ(x),   p_γ = ∇f_γ(x + ρ ε_γ),

with ε_γ from a perturbation rule (``sdesam.rules``). Plain SAM steps along the perturbed
gradient itself, Φ(g, p) = p; GSAM and WSAM combine the two. The third-order SDE of such
a method replaces p_γ by its Taylor vector v²_γ inside Φ (docs/math.md §6):

    drift −E Φ(g_γ, v²_γ),   diffusion Cov Φ(g_γ, v²_γ),

which keeps SAM-SDE3's truncation order O(ρ³) for a Φ that is smooth in p (‖Φ(g, p) −
Φ(g, v²)‖ ≤ ‖∂_pΦ‖·‖p − v²‖ = O(ρ³)).

Every map works on vectors of shape (..., d) (leading dimensions broadcast) and is used
by the discrete dynamics, the SDEs and the training optimizers alike.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_nonnegative

__all__ = ["UpdateMap", "PerturbedGradient", "GSAMUpdate", "WSAMUpdate", "UPDATES", "get_update", "method_name"]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return torch.einsum("...d,...d->...", a, b).unsqueeze(-1)


class UpdateMap:
    """Base class: Φ(g, p) for clean gradients g and perturbed gradients p, both (..., d).

    Attributes:
        name: prefix of the method's name in records (``"gsam"``, ``"wsam"``); the identity's is "".
        is_identity: True for Φ(g, p) = p (consumers skip the clean gradient's extra use).
    """

    name: str = ""
    is_identity: bool = False

    def __call__(self, g: Tensor, p: Tensor) -> Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        return {"update": self.name or "perturbed_gradient",
                **{k: v for k, v in sorted(vars(self).items()) if not k.startswith("_")}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class PerturbedGradient(UpdateMap):
    """Φ(g, p) = p: SAM and every perturbation rule's plain method."""

    is_identity = True

    def __call__(self, g, p):
        return p


class GSAMUpdate(UpdateMap):
    """GSAM (Zhuang et al. 2022, surrogate gap): Φ(g, p) = p − α·g⊥ with
    g⊥ = g − (⟨g, p⟩/‖p‖²)·p the component of the clean gradient orthogonal to p.

    Args:
        alpha: α ≥ 0 (α = 0 is SAM; Zhuang et al. use 0.01–0.3).

    A zero p gives g⊥ = g.
    """

    name = "gsam"

    def __init__(self, alpha: float = 0.1):
        self.alpha = check_nonnegative("alpha", alpha)

    def __call__(self, g, p):
        pp = _dot(p, p)
        coef = torch.where(pp > 0, _dot(g, p) / pp.clamp_min(torch.finfo(p.dtype).tiny), torch.zeros_like(pp))
        g_perp = g - coef * p
        return p - self.alpha * g_perp


class WSAMUpdate(UpdateMap):
    """WSAM (weighted SAM): Φ(g, p) = g + γ/(1 − γ)·(p − g).

    Args:
        gamma: γ ∈ [0, 1). γ = 0 is SGD's step Φ = g; γ = 1/2 is SAM's Φ = p.
    """

    name = "wsam"

    def __init__(self, gamma: float = 0.9):
        gamma = check_nonnegative("gamma", gamma)
        if gamma >= 1:
            raise ValueError(f"gamma must lie in [0, 1), got gamma={gamma!r}")
        self.gamma = gamma

    def __call__(self, g, p):
        return g + (self.gamma / (1.0 - self.gamma)) * (p - g)


UPDATES = {"sam": PerturbedGradient, "gsam": GSAMUpdate, "wsam": WSAMUpdate}


def get_update(update) -> UpdateMap:
    """An ``UpdateMap`` instance, a name in ``UPDATES``, or None (the perturbed gradient)."""
    if update is None:
        return PerturbedGradient()
    if isinstance(update, UpdateMap):
        return update
    if isinstance(update, str) and update in UPDATES:
        return UPDATES[update]()
    raise ValueError(f"update must be an UpdateMap, None or one of {sorted(UPDATES)}, got update={update!r}")


def method_name(rule_name: str, update: UpdateMap, micro_batches: int = 1) -> str:
    """The name of a SAM-family method in records: the rule's (``"sam"``, ``"asam"``), or the
    update map's for plain SAM (``"gsam"``), ``"<update>_<rule>"`` otherwise; m-SAM
    (``micro_batches`` > 1) prefixes ``"m"`` (``"msam"``)."""
    if update.is_identity:
        name = rule_name
    elif rule_name == "sam":
        name = update.name
    else:
        name = f"{update.name}_{rule_name}"
    return ("m" + name) if micro_batches > 1 else name
