"""``EGR``: explicit gradient regularisation, the gradient of f_γ + ρ‖∇f_γ‖ (Appendix A).

    g = ∇f_γ(x),   u = g/‖g‖,   x ← base_step(x, g + ρ H_γ u)

since ∇‖∇f_γ‖ = H_γ ∇f_γ / ‖∇f_γ‖. Computed by double backward: one forward pass, the
gradient with its graph, and one Hessian-vector product on that graph (with u held
constant, which gives exactly the derivative of the norm). This is the second-order
SDE's implicit objective (Compagnoni et al. 2023) that the paper's Appendix A trains to
show it does not reproduce SAM. It is the ``EGR`` of the simulation core
(``sdesam.discrete.DiscreteEGR``: x ← x − η v¹ with the SAM rule).

A param group's ρ scales that group's slice of H u. Under DDP, u comes from the
globally averaged gradient (``sync_perturbation=True``) or from each process's own
(``False``); the final gradients are always averaged over processes.
"""
from __future__ import annotations

from torch import Tensor

from ..curvature.power import unit_vector
from .base import MODEL_NOT_GIVEN, Closure, WrappedOptimizer

__all__ = ["EGR"]


class EGR(WrappedOptimizer):
    """EGR wrapping a base optimizer (SGD with momentum 0.9 by default).

    Args:
        params, base_optimizer, model, sync_perturbation, **base_kwargs: as ``SAM``.
        rho: regularisation coefficient ρ ≥ 0 (Appendix A uses SAM's ρ).

    Only ``step(closure)`` exists (there is no perturbed pass); ``closure()`` returns the
    minibatch loss without calling backward.
    """

    kind = "egr"

    def __init__(self, params, base_optimizer=None, *, rho: float = 0.05, model=MODEL_NOT_GIVEN,
                 sync_perturbation: bool = True, **base_kwargs):
        super().__init__(params, base_optimizer, rho=rho, model=model,
                         sync_perturbation=sync_perturbation, **base_kwargs)
        self.steps = 0

    def regularized_gradient(self, closure: Closure) -> tuple[Tensor, Tensor]:
        """(loss, g + ρ H u) at the current parameters, flat (d,), averaged over DDP
        processes; ``.grad`` is left empty."""
        loss, grads = self._gradient_graph(closure)
        g = self._flatten([None if t is None else t.detach() for t in grads])
        u = unit_vector(self._perturbation_mean_(g.clone()))
        h = self._hvp_function(grads, average=False)(u)     # averaged together with g below
        rho_h = self._flatten([piece * rho for piece, rho in zip(self._split(h), self._rhos())])
        self.zero_grad(set_to_none=True)
        return loss, self._world_mean_(g + rho_h)

    def step(self, closure: Closure) -> Tensor:
        """One EGR step; returns the loss f_γ(x) (detached)."""
        if closure is None:
            raise ValueError("EGR.step needs a closure that returns the minibatch loss")
        loss, total = self.regularized_gradient(closure)
        self._set_grads(total)
        self._base_step()
        self.steps += 1
        return loss.detach()

    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "steps": self.steps}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        self.steps = int(state["steps"])
