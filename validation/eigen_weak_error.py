"""Weak error of the Eigen-SAM SDE against the ideal Eigen-SAM, as Theorem 4.1 is checked
for SAM-SDE3 (docs/math.md §5).

    python -m validation.eigen_weak_error --out DIR [any option of validation.weak_error]

The η sweep of ``validation.weak_error`` (same toy, grid ρ = c·η^{1/3}, horizon, exact
minibatch enumeration, Euler sub-steps, trajectories, bootstrap intervals and outputs),
with the discrete process replaced by the ideal Eigen-SAM (Eq. 1 with
ε_γ = u_γ + α·sign⟨g_γ, v⟩·v⊥ and the exact top eigenvector v of the full-batch Hessian
every step; α = 0.2, the classes' default) and two models:

* ``eigen_sam_sde``: the Eigen-SAM SDE (same α, same eigenvector source) — expected
  slope 1 if the derivation holds;
* ``sam_sde3``: SAM's own SDE, a control that ignores the α term — its error against
  the ideal Eigen-SAM should not vanish like η (the α·v⊥ term moves the drift by O(ρα)).
"""
from __future__ import annotations

from dataclasses import dataclass

from sdesam.experiment import command

from . import weak_error

__all__ = ["Config", "main"]


@dataclass
class Config(weak_error.Config):
    """``validation.weak_error``'s configuration with the ideal Eigen-SAM as the discrete
    process and the Eigen-SAM SDE next to SAM-SDE3."""

    discrete: str = "ideal_eigen_sam"
    models: tuple = ("sam_sde3", "eigen_sam_sde")
    trajectories: int = 30_000
    chunk_size: int = 10_000

    @classmethod
    def defaults(cls, args) -> "Config":
        if getattr(args, "problem", "logcosh") == "mlp" or getattr(args, "full", False):
            raise ValueError("validation.eigen_weak_error runs on the toys (exact eigenvectors)")
        return cls()


main = command("validation.eigen_weak_error", __doc__, Config, weak_error.run, default_device="cpu",
               choices={"mode": ["eta"], "diffusion": ["taylor", "paper"], "dtype": ["float32", "float64"]})


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("validation.eigen_weak_error")
