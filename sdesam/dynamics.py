"""The common interface of every dynamics: discrete methods and SDE solvers.

A dynamics advances a state of M parallel trajectories x ∈ R^{M×d} in units of the
learning rate η: one discrete step, or SDE time η (m Euler sub-steps). All randomness
of step k comes from generators keyed by (seed, stream, k) (``sdesam._streams``), so a
run can be stopped, saved (``RunState.state_dict``) and resumed to the same result, and
two dynamics given the same seed see the same minibatch stream where their sampling
agrees (common random numbers).

Names. ``name`` labels a dynamics in records: the method it runs, e.g. ``"sam"`` (the
discrete step of the SAM rule), ``"sam_sde3"`` (its third-order SDE), ``"asam_sde3"``
(ASAM's). ``config()`` holds every hyperparameter, the rule's included.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import check_int, check_positive
from .errors import NonFiniteStateError
from .problem import Problem

__all__ = ["Dynamics", "RunState"]


@dataclass
class RunState:
    """The state of M trajectories of one dynamics.

    Attributes:
        x: parameters, shape (M, d).
        step: number of completed steps of size η (SDE time = step · η).
        seed: the run's seed; step k draws its randomness from (seed, k).
        extra: dynamics-specific tensors (e.g. Eigen-SAM's eigenvector estimate).
    """

    x: Tensor
    step: int
    seed: int
    extra: dict[str, Tensor] = field(default_factory=dict)

    def state_dict(self) -> dict:
        return {"x": self.x.clone(), "step": self.step, "seed": self.seed,
                "extra": {k: v.clone() for k, v in self.extra.items()}}

    @classmethod
    def from_state_dict(cls, sd: dict) -> "RunState":
        return cls(x=sd["x"].clone(), step=int(sd["step"]), seed=int(sd["seed"]),
                   extra={k: v.clone() for k, v in sd["extra"].items()})


class Dynamics(ABC):
    """Base class. Subclasses implement ``_step(state)`` (one step of size η).

    Args:
        problem: the ``Problem`` providing minibatch oracles.
        eta: learning rate η > 0 (also the SDE time of one step).
    """

    name: str = "dynamics"

    def __init__(self, problem: Problem, eta: float):
        if not isinstance(problem, Problem):
            raise ValueError(f"problem must be a sdesam Problem (FunctionProblem, ModuleProblem, ...), "
                             f"got {type(problem).__name__}")
        self.problem = problem
        self.eta = check_positive("eta", eta)

    def config(self) -> dict:
        """JSON-serialisable hyperparameters, saved next to every result."""
        return {"dynamics": self.name, "eta": self.eta}

    def init_state(self, x0: Tensor | None = None, seed: int = 0) -> RunState:
        """Fresh state at x0 ((d,) or (M, d) for M trajectories; default the problem's x0),
        step 0, all randomness drawn from ``seed`` (an integer ≥ 0)."""
        x0 = self.problem.x0 if x0 is None else x0
        if not isinstance(x0, Tensor) or x0.dim() not in (1, 2) or x0.shape[-1] != self.problem.dim:
            got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
            raise ValueError(f"x0 must have shape (d,) or (M, d) with d={self.problem.dim}, got {got}")
        if x0.shape[0] == 0:
            raise ValueError("x0 holds no trajectory (M = 0)")
        if not bool(torch.isfinite(x0).all()):
            raise ValueError("x0 holds NaN or Inf")
        check_int("seed", seed, 0)
        x = x0.detach().to(self.problem.device, self.problem.dtype).reshape(-1, self.problem.dim).clone()
        return RunState(x=x, step=0, seed=int(seed))

    def advance(self, state: RunState, num_steps: int = 1) -> RunState:
        """Advance ``state`` in place by ``num_steps`` steps of size η and return it.

        Raises ``NonFiniteStateError`` naming the dynamics and the step after which the
        state first became NaN/Inf.
        """
        num_steps = check_int("num_steps", num_steps, 0)
        with torch.no_grad():
            for _ in range(num_steps):
                self._step(state)
                state.step += 1
                # one reduction instead of an elementwise mask; the full check only runs when
                # the sum is not finite (NaN/Inf, or finite values whose sum overflows)
                if not bool(torch.isfinite(state.x.sum())) and not bool(torch.isfinite(state.x).all()):
                    raise NonFiniteStateError(self.name, state.step)
        return state

    @abstractmethod
    def _step(self, state: RunState) -> None:
        """Replace state.x by the state one step (η) later; state.step is still k."""
