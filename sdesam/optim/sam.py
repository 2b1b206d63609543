"""``SAM``: sharpness-aware minimisation around any base optimizer (paper Eq. 1).

    g = ∇f_γ(x),   ε = rule(g),   x ← base_step(x, ∇f_γ(x + ρ ε))

with ``rule`` one of ``sdesam.rules``: ``"sam"`` (ε = g/‖g‖, Eq. 2),
``"usam"`` (ε = g), ``"reverse_sam"`` (ε = −g/‖g‖, Appendix A), ``"asam"`` (ε = T²g/‖Tg‖,
T = diag(|x| + ξ); Kwon et al. 2021). ε is computed once on
the flat vector of all trainable parameters (the global norm), and each param group
moves by its own ρ: x̃ = x + ρ_group ε. With a plain SGD base optimizer (no momentum,
no weight decay) one step is exactly Eq. 1 with η = lr.

Two ways to use it:

    # one call (the closure returns the loss; it must not call backward)
    opt = SAM(model.parameters(), lr=0.1, rho=0.05, model=model, weight_decay=5e-5)
    loss = opt.step(lambda: loss_fn(model(x), y))

    # explicit steps, as in davda54/sam
    loss_fn(model(x), y).backward()
    opt.first_step(zero_grad=True)                 # x → x + ρε (x is kept)
    with frozen_running_stats(model):
        loss_fn(model(x), y).backward()
    opt.second_step(zero_grad=True)                # back to x, base step

``step(closure)`` keeps BatchNorm running statistics out of the perturbed pass when
``model`` is given. The parameters are restored by copying the saved x (not by
subtracting ρε, which is not exact in floating point).

Mixed precision: run the closure under ``torch.autocast(dtype=torch.bfloat16)``; the
parameters, gradients, ε and the base optimizer stay in the parameters' dtype, and bf16
needs no loss scaling. float16 autocast with a GradScaler is not supported.

Data parallelism (DDP): with ``sync_perturbation=True`` (default) the clean pass runs
through DDP's gradient all-reduce, so ε uses the globally averaged gradient and N
processes equal one process with the combined batch. With ``False`` the clean pass
runs under ``model.no_sync()`` (forward and backward), so each process perturbs with
its own minibatch gradient (m-sharpness with m = per-process batch); the perturbed pass
is always averaged.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import rules
from .._checks import check_choice
from .base import Closure, WrappedOptimizer
from .norm_stats import PERTURBED_BN, perturbed_pass_stats

__all__ = ["SAM"]


class SAM(WrappedOptimizer):
    """SAM / USAM / Reverse-SAM wrapping a base optimizer.

    Args:
        params: parameters or param-group dicts (a group may set its own ``"rho"``).
        base_optimizer: optimizer class taking the actual step; ``None`` = SGD with
            momentum 0.9 (override with ``momentum=``).
        rho: SAM radius ρ ≥ 0 (paper: 0.05 CIFAR-10 / Fashion-MNIST, 0.1 CIFAR-100,
            0.01 SVHN).
        rule: ``"sam"``, ``"usam"``, ``"reverse_sam"``, ``"asam"`` or a ``PerturbationRule``
            that needs no eigenvector (use ``EigenSAM`` for Eq. 8); a rule that depends on
            the point (``needs_point``, e.g. ``ASAM``) gets the flat parameters as x.
        model, sync_perturbation: see ``WrappedOptimizer``.
        perturbed_bn: one of ``PERTURBED_BN`` — ``"frozen"``: the perturbed pass leaves
            every BatchNorm buffer untouched; ``"zero_momentum"``: BatchNorm momentum 0,
            so ``num_batches_tracked`` counts that pass too (davda54/sam, official
            Eigen-SAM code; tests/test_official_replay.py).
        **base_kwargs: ``lr``, ``momentum``, ``weight_decay``, … for the base optimizer.
    """

    kind = "sam"
    #: whether this optimizer maintains the eigenvector estimate a rule may need
    estimates_eigenvector = False

    def __init__(self, params, base_optimizer=None, *, rho: float = 0.05, rule="sam",
                 model=None, sync_perturbation: bool = True, perturbed_bn: str = "frozen",
                 **base_kwargs):
        rule = rules.get_rule(rule)
        if rule.needs_eigenvector and not self.estimates_eigenvector:
            raise ValueError(f"rule={rule.name!r} needs an eigenvector estimate: use "
                             "sdesam.optim.EigenSAM")
        super().__init__(params, base_optimizer, rho=rho, model=model,
                         sync_perturbation=sync_perturbation, **base_kwargs)
        self.rule = rule
        self.perturbed_bn = check_choice("perturbed_bn", perturbed_bn, PERTURBED_BN)
        self.steps = 0            # completed steps (second_step calls)
        self._backup = None       # the parameters x while they sit at x + ρε

    # -- the perturbation ---------------------------------------------------------------
    def _coefficients(self, g: Tensor):
        """(a, b, v̂): the rule's ε = a·g + b·v̂ for the flat gradient g (b, v̂ None if unused)."""
        a, b = self.rule.coefficients(g)
        return a, b, None

    def perturbation(self, g: Tensor) -> Tensor:
        """ε for the flat gradient ``g`` (d,), before scaling by ρ."""
        if not self.rule.has_coefficients:
            return self.rule(g, x=self._flatten([p.detach() for p in self._params()]))
        a, b, v = self._coefficients(g)
        return rules.PerturbationRule.combine(g, a, b, v)

    @torch.no_grad()
    def _ascend(self, a: Tensor, b: Tensor | None, v: Tensor | None) -> None:
        """Save x and move every parameter to x + ρ_group (a·g + b·v̂), in place (ε itself
        is never materialised: two fused passes over the parameters at most)."""
        params = self._params()
        self._backup = [p.detach().clone() for p in params]
        v_pieces = self._split(v) if b is not None else [None] * len(params)
        for p, rho, v_piece in zip(params, self._rhos(), v_pieces):
            if p.grad is not None:
                p.addcmul_(p.grad, (rho * a).to(p.dtype))
            if v_piece is not None:
                p.addcmul_(v_piece, (rho * b).to(p.dtype))

    @torch.no_grad()
    def _ascend_along(self, eps: Tensor) -> None:
        """Save x and move every parameter to x + ρ_group ε, for a rule without the
        coefficient form (ε materialised as one flat vector)."""
        params = self._params()
        self._backup = [p.detach().clone() for p in params]
        for p, rho, piece in zip(params, self._rhos(), self._split(eps)):
            p.add_(piece, alpha=rho)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """x → x + ρ ε(g), with g the gradients currently in ``.grad`` (the clean pass)."""
        if self._backup is not None:
            raise RuntimeError("first_step() called twice: call second_step() in between")
        if self.rule.has_coefficients:
            self._ascend(*self._coefficients(self.flat_grad()))
        else:
            self._ascend_along(self.perturbation(self.flat_grad()))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to x and let the base optimizer step with the gradients in ``.grad``
        (those of the perturbed pass)."""
        if self._backup is None:
            raise RuntimeError("second_step() called without first_step()")
        for p, x in zip(self._params(), self._backup):
            p.copy_(x)
        self._backup = None
        self._base_step()
        self.steps += 1
        if zero_grad:
            self.zero_grad()

    # -- one-call step --------------------------------------------------------------------
    def _clean_pass(self, closure: Closure) -> Tensor:
        """Loss at x and its gradient in ``.grad`` (all-reduced unless m-sharpness)."""
        context = self._no_sync() if not self.sync_perturbation else torch.enable_grad()
        with context:
            loss = self._evaluate(closure)
            loss.backward()
        return loss

    def _perturbed_pass(self, closure: Closure) -> None:
        """Gradient at x + ρε into ``.grad``, BatchNorm statistics untouched."""
        context = (perturbed_pass_stats(self.model, self.perturbed_bn) if self.model is not None
                   else torch.enable_grad())
        with context:
            self._evaluate(closure).backward()

    def step(self, closure: Closure) -> Tensor:
        """One full step; ``closure()`` returns the minibatch loss (no backward).

        Returns the clean loss f_γ(x) (detached).
        """
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the "
                             "minibatch loss, or use first_step()/second_step()")
        return self._ascend_and_descend(closure, self._clean_pass(closure))

    def _ascend_and_descend(self, closure: Closure, loss: Tensor) -> Tensor:
        """After the clean pass (gradients in ``.grad``): perturb, take the gradient
        there, restore and let the base optimizer step. Returns ``loss`` detached."""
        self.first_step(zero_grad=True)
        self._perturbed_pass(closure)
        self.second_step()
        return loss.detach()

    # -- state --------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        if self._backup is not None:
            raise RuntimeError("state_dict() between first_step() and second_step(): the "
                               "parameters are perturbed; call second_step() first")
        return {**super()._extra_state(), "steps": self.steps, "rule": self.rule.config()}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        if self._backup is not None:
            raise RuntimeError("load_state_dict() between first_step() and second_step()")
        self.steps = int(state["steps"])
