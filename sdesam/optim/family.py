"""``GSAM`` and ``WSAM``: ``SAM`` with the update maps of ``sdesam.updates``.

Both are ``SAM`` with a fixed ``update=`` — the same ``GSAMUpdate`` / ``WSAMUpdate`` objects
the simulation core steps with (``sdesam.discrete.DiscreteSAM(update=...)``) — and take
every other option of ``SAM`` (rules, m-SAM, SVAG, accumulation, clipping, GradScaler,
BatchNorm, DDP).

GSAM (Zhuang et al. 2022, surrogate gap guided SAM):

    p = ∇f_γ(x + ρ_t g/‖g‖),   x ← base_step(x, p − α·(g − (⟨g, p⟩/‖p‖²)·p))

with ρ_t following the learning rate: ρ_t = ρ_min + (ρ − ρ_min)(lr_t − lr_min)/(lr_max − lr_min),
lr_t the param group's learning rate at the step, lr_max its learning rate when the
optimizer was built, and ρ_t = ρ when lr_max = lr_min — juntang-zhuang/GSAM's and
kozistr/pytorch_optimizer's ``ProportionScheduler`` read at the step that uses it (both
codes call ``update_rho_t()`` after ``lr_scheduler.step()``; tests/test_optim_family.py
replays kozistr's ``GSAM`` with it and juntang-zhuang's ``gsam.py`` update). Both codes
perturb and decompose exactly as above (their 1e-12 guards aside) and run the perturbed
pass with BatchNorm momentum 0: ``perturbed_bn="zero_momentum"`` reproduces them.
(juntang-zhuang/GSAM's README also pairs two schedulers of one type; that puts ρ one step
ahead of the learning rate, and is not this schedule.)

WSAM (Yue et al. 2023, weighted sharpness as a regulariser), with α = γ/(1 − γ):

    p = ∇f_γ(x + ρ g/‖g‖),   Φ = g + α(p − g)
    decouple=False:  x ← base_step(x, Φ)
    decouple=True:   x ← base_step(x, g),  then  x ← x − lr·α(p − g)   (default)

kozistr/pytorch_optimizer's ``WSAM`` (and the code it comes from) defaults to the
decoupled form: the sharpness term bypasses the base optimizer's momentum and weight
decay, so the two forms differ as soon as the base optimizer has state (they coincide for
plain SGD without momentum, where x − lr(g + wd·x) − lr·α(p − g) = x − lr(Φ + wd·x));
tests/test_optim_family.py replays both against kozistr's code with momentum and weight
decay. γ = 1/2 (α = 1) is SAM in the coupled form. kozistr's ``max_norm`` clips p before
the combination; ``clip_grad_norm`` here clips what the base optimizer receives (g in the
decoupled form) — not the same clipping.
"""
from __future__ import annotations

from .._checks import check_nonnegative, check_positive
from ..updates import GSAMUpdate, WSAMUpdate
from .sam import SAM

__all__ = ["GSAM", "WSAM"]


def _own_update(cls, kwargs) -> None:
    if "update" in kwargs:
        raise ValueError(f"{cls.__name__} sets update= itself; use sdesam.optim.SAM(update=...) for another map")


class GSAM(SAM):
    """GSAM wrapping a base optimizer (SGD with momentum 0.9 by default).

    Args:
        params, base_optimizer, **kwargs: as ``SAM`` (any option but ``update``).
        rho: ρ (ρ_max of the schedule) ≥ 0; a param group may set its own ``"rho"``.
        alpha: GSAM's α ≥ 0 (α = 0 is SAM; Zhuang et al. use 0.01–0.3).
        rho_min: ρ_min of the schedule, 0 ≤ ρ_min ≤ ρ; None: ρ_t = ρ throughout.
        lr_max: the learning rate at which ρ_t = ρ; None: each group's lr now (stored in
            the group as ``"lr_max"``).
        lr_min: the learning rate at which ρ_t = ρ_min (0: the end of a cosine schedule).
    """

    kind = "gsam"

    def __init__(self, params, base_optimizer=None, *, rho: float = 0.05, alpha: float = 0.1,
                 rho_min: float | None = None, lr_max: float | None = None, lr_min: float = 0.0, **kwargs):
        _own_update(type(self), kwargs)
        update = GSAMUpdate(alpha)
        self.rho_min = None if rho_min is None else check_nonnegative("rho_min", rho_min)
        self.lr_min = check_nonnegative("lr_min", lr_min)
        self._lr_max = None if lr_max is None else check_positive("lr_max", lr_max)
        super().__init__(params, base_optimizer, rho=rho, update=update, **kwargs)
        self.alpha = update.alpha
        for i, group in enumerate(self.param_groups):
            self._check_group(i, group)

    def _check_group(self, i: int, group: dict) -> None:
        group.setdefault("lr_max", group["lr"] if self._lr_max is None else self._lr_max)
        if self.rho_min is None:
            return
        if self.rho_min > group["rho"]:
            raise ValueError(f"rho_min={self.rho_min} must not exceed rho={group['rho']} (param group {i})")
        if group["lr_max"] < self.lr_min:
            raise ValueError(f"lr_max={group['lr_max']} must not be below lr_min={self.lr_min} (param group {i})")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "alpha"):          # after __init__
            self._check_group(len(self.param_groups) - 1, self.param_groups[-1])

    def scheduled_rho(self, group: dict) -> float:
        """ρ_t of a param group at its current learning rate."""
        rho = group["rho"]
        if self.rho_min is None or group["lr_max"] <= self.lr_min:
            return rho
        return self.rho_min + (rho - self.rho_min) * (group["lr"] - self.lr_min) / (group["lr_max"] - self.lr_min)

    def _rhos(self) -> list[float]:
        return [self.scheduled_rho(group) for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _options(self) -> dict:
        return {**super()._options(), "rho_min": self.rho_min, "lr_min": self.lr_min}


class WSAM(SAM):
    """WSAM wrapping a base optimizer (SGD with momentum 0.9 by default).

    Args:
        params, base_optimizer, rho, **kwargs: as ``SAM`` (any option but ``update``).
        gamma: γ ∈ [0, 1), the sharpness weight (α = γ/(1 − γ); kozistr's default 0.9).
        decouple: the decoupled form (default, kozistr's) or Φ through the base optimizer.
    """

    kind = "wsam"

    def __init__(self, params, base_optimizer=None, *, rho: float = 0.05, gamma: float = 0.9,
                 decouple: bool = True, **kwargs):
        _own_update(type(self), kwargs)
        update = WSAMUpdate(gamma)
        super().__init__(params, base_optimizer, rho=rho, update=update, **kwargs)
        self.gamma = update.gamma
        self.decouple = bool(decouple)
