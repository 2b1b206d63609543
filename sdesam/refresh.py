"""When Eigen-SAM re-estimates its top-eigenvector estimate v̂ (paper Algorithm 2).

One schedule, shared by the simulation core's discrete ``sdesam.discrete.DiscreteEigenSAM``
and the training optimizer ``sdesam.optim.EigenSAM``, so that the two switches
(``p_counting``, ``first_refresh``) mean the same thing in both.

Algorithm 2 keeps a 1-based counter t₁ = 1, 2, … and refreshes v̂ when t₁ mod p = 1,
so v̂ exists from the first step. The official code (RitianLuo/EigenSAM) counts within
each epoch and refreshes before the step whose 0-based in-epoch index k satisfies
``k % p == 0 and k > 0`` — k = p, 2p, …, i.e. t₁ = k + 1 ≡ 1 (mod p) but not t₁ = 1;
until the very first estimate of the run it perturbs along the unnormalised gradient
(ε = g, USAM), and afterwards an epoch's first p steps use the previous epoch's v̂.
Both are offered (``p_counting="epoch", first_refresh="after_p"`` is the official
schedule, proved by tests/test_official_replay.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from ._checks import check_choice, check_int

__all__ = ["RefreshSchedule", "P_COUNTINGS", "FIRST_REFRESHES"]

#: ``"global"``: t₁ counts every step of the run (paper). ``"epoch"``: t₁ restarts at 1
#: at the start of every epoch of ``steps_per_epoch`` steps (official code).
P_COUNTINGS = ("global", "epoch")
#: ``"start"``: refresh at t₁ mod p = 1 (paper, v̂ exists from step one). ``"after_p"``:
#: refresh at t₁ mod p = 1 except t₁ = 1, i.e. after the first p steps of each count
#: (official code; ε = g until the first refresh of the run).
FIRST_REFRESHES = ("start", "after_p")


@dataclass(frozen=True)
class RefreshSchedule:
    """The refresh steps of Eigen-SAM.

    Args:
        p: refresh interval in steps, p ≥ 1 (paper 100).
        p_counting: one of ``P_COUNTINGS``.
        first_refresh: one of ``FIRST_REFRESHES``.
        steps_per_epoch: steps in one epoch; required (≥ 1) when ``p_counting="epoch"``,
            ignored otherwise.

    Steps are 0-based global step indices (the k-th optimizer step of the run).
    """

    p: int
    p_counting: str = "global"
    first_refresh: str = "start"
    steps_per_epoch: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "p", check_int("p", self.p, 1))
        check_choice("p_counting", self.p_counting, P_COUNTINGS)
        check_choice("first_refresh", self.first_refresh, FIRST_REFRESHES)
        if self.p_counting == "epoch" and self.steps_per_epoch is None:
            raise ValueError("p_counting='epoch' needs steps_per_epoch (an integer >= 1), "
                             "got steps_per_epoch=None")
        if self.steps_per_epoch is not None:
            object.__setattr__(self, "steps_per_epoch",
                               check_int("steps_per_epoch", self.steps_per_epoch, 1))

    def counter(self, step: int) -> int:
        """The 1-based counter t₁ of Algorithm 2 at 0-based global step ``step``."""
        if self.p_counting == "epoch":
            return step % self.steps_per_epoch + 1
        return step + 1

    def refreshes_at(self, step: int) -> bool:
        """Whether v̂ is re-estimated (before the perturbation) at global step ``step``."""
        t1 = self.counter(step)
        if self.first_refresh == "after_p" and t1 == 1:
            return False
        return t1 % self.p == 1 % self.p
