"""Exceptions that sdesam raises on purpose."""
from __future__ import annotations


class NonFiniteStateError(FloatingPointError):
    """The state of a run became NaN or Inf.

    Attributes:
        dynamics: name of the dynamics that diverged (e.g. ``"sam"``, ``"sam_sde3"``).
        step: the step (discrete iteration, or SDE time / eta) after which the state was
            first non-finite.
    """

    def __init__(self, dynamics: str, step, detail: str = ""):
        self.dynamics = dynamics
        self.step = step
        msg = f"{dynamics}: the state became non-finite (NaN/Inf) at step {step}"
        if detail:
            msg += f" ({detail})"
        msg += "; lower the learning rate / rho, or check the data and initialisation"
        super().__init__(msg)
