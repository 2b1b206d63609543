"""``EigenSAM``: SAM with the top-Hessian-eigenvector term (paper Sec. 5, Eq. 7–8, Alg. 1–2).

    every p steps (``RefreshSchedule``): v̂ ← q Hessian-vector products on the current
        minibatch, warm-started from the previous v̂ — by default Algorithm 1, q = 5 power
        iterations v̂ ← H_γ v̂ / ‖H_γ v̂‖; with ``estimator="lanczos"`` (q = 4) the top
        Ritz vector of the q-dimensional Krylov space
    g = ∇f_γ(x),  u = g/‖g‖,  v̂⊥ = v̂ − ⟨v̂, u⟩u                                (Eq. 7)
    ε = u + α · sign(⟨g, v̂⟩) · v̂⊥          (Eq. 8; not renormalised unless asked)
    x ← base_step(x, ∇f_γ(x + ρ ε))

The rule is ``sdesam.rules.EigenSAMRule`` and Algorithm 1 is
``sdesam.curvature.power.power_iteration``, exactly what the simulation core's discrete
``sdesam.discrete.DiscreteEigenSAM`` uses (the Lanczos refresh is
``sdesam.curvature.short_lanczos.lanczos_iteration``); the refresh schedule is the shared
``sdesam.refresh.RefreshSchedule``, so ``p_counting`` and ``first_refresh`` mean the
same in both. The first v̂ is a random unit vector drawn from ``seed``.

The paper's algorithm is the default (schedule, and Algorithm 1 with q = 5).
``EigenSAM.official(...)`` is the official code's
(RitianLuo/EigenSAM) in one call — tests/test_official_replay.py replays that code's
training loop step by step and agrees to 1e-12 (parameters and BatchNorm buffers, two
epochs, float64). It sets:

- ``p_counting="epoch"`` (+ ``steps_per_epoch``), ``first_refresh="after_p"``: refresh
  before the in-epoch steps k = p, 2p, … (never k = 0); ε = g (unnormalised, USAM)
  before the first estimate of the run, then the previous epoch's v̂ until the refresh;
- ``hvp_mode="eval"``: Hessian-vector products with the model in eval mode
  (BatchNorm running statistics, no dropout) instead of the training-mode loss;
- ``perturbed_bn="zero_momentum"``: the perturbed pass runs with BatchNorm momentum 0;
- SGD with momentum 0.9 and weight decay 5e-4.

The official code does *not* renormalise ε: it calls its SAM first step with
normalisation off, so ε is Eq. 8's. ``renormalize=True`` (ε/‖ε‖, unit length) is a
variant of neither the paper nor the official code.

Cost. Outside refresh steps a step costs what SAM's does (two gradients). At a refresh
step with ``hvp_mode="train"`` the clean pass builds the double-backward graph once
and the q products reuse it (no extra forward pass); with ``"eval"`` one extra
eval-mode forward pass is needed. BatchNorm running statistics are updated by the clean
pass only — never by the perturbed pass or the Hessian-vector products.

Under DDP with ``sync_perturbation=True`` the products are averaged over processes
(the Hessian of the combined minibatch); with ``False`` each process keeps its own v̂.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import rules
from .._checks import check_choice, check_int
from ..curvature.power import power_iteration, random_unit_vector
from ..curvature.short_lanczos import lanczos_iteration
from ..refresh import RefreshSchedule
from .base import MODEL_NOT_GIVEN, Closure, refuse_family_options
from .norm_stats import eval_mode, frozen_running_stats
from .sam import SAM

__all__ = ["EigenSAM", "HVP_MODES", "ESTIMATORS", "HVP_METHODS", "DEFAULT_PRODUCTS"]

#: ``"train"``: products of the training-mode loss (paper); ``"eval"``: eval mode (official code).
HVP_MODES = ("train", "eval")
#: how a refresh turns q products into v̂: ``"power"`` (paper Algorithm 1,
#: ``power_iteration``) or ``"lanczos"`` (``short_lanczos.lanczos_iteration``: the top
#: Ritz vector of the q-dimensional Krylov space of the same warm start).
ESTIMATORS = ("power", "lanczos")
#: q when not given, per estimator
DEFAULT_PRODUCTS = {"power": 5, "lanczos": 4}
#: how one product H v is computed: reverse-over-reverse on the clean pass's graph
#: (``"double_backward"``) or ``torch.func.jvp`` of ``torch.func.grad``
#: (``"forward_over_reverse"``: a forward and a backward pass per product, needs ``model``).
HVP_METHODS = ("double_backward", "forward_over_reverse")


class _ClosureModule(nn.Module):
    """Evaluates a closure; holds its model so that ``functional_call`` can substitute
    the model's parameters while the closure runs."""

    def __init__(self, model: nn.Module, closure: Closure):
        super().__init__()
        self.model = model
        self.closure = closure

    def forward(self) -> Tensor:
        return self.closure()


class EigenSAM(SAM):
    """Eigen-SAM wrapping a base optimizer.

    Args:
        params, base_optimizer, rho, model, sync_perturbation, **base_kwargs: as ``SAM``.
        alpha: alignment strength α ≥ 0 (paper 0.2; α = 0 is SAM).
        p: refresh interval in steps (paper 100).
        q: Hessian-vector products per refresh (paper: 5 power iterations); None =
            ``DEFAULT_PRODUCTS[estimator]``.
        estimator: one of ``ESTIMATORS``.
        hvp_method: one of ``HVP_METHODS``.
        p_counting, first_refresh, steps_per_epoch: see ``sdesam.refresh.RefreshSchedule``.
        hvp_mode: one of ``HVP_MODES`` (``"eval"`` needs ``model``).
        renormalize: use ε/‖ε‖ instead of Eq. 8's ε (a variant; neither the paper nor
            the official code does it).
        perturbed_bn: see ``SAM``.
        seed: seed of the random first v̂ (CPU generator, so it is device-independent).

    Attributes:
        eigenvector: the current estimate v̂, flat (d,), unit norm.
        eigenvalue: Rayleigh quotient ⟨v, Hv⟩ of the last refresh's final product (float),
            None before the first refresh.
        has_estimate: whether a refresh has happened.
    """

    kind = "eigen_sam"
    estimates_eigenvector = True

    def __init__(self, params, base_optimizer=None, *, rho: float = 0.05, alpha: float = 0.2,
                 p: int = 100, q: int | None = None, p_counting: str = "global", first_refresh: str = "start",
                 steps_per_epoch: int | None = None, hvp_mode: str = "train",
                 renormalize: bool = False, seed: int = 0, model=MODEL_NOT_GIVEN, sync_perturbation: bool = True,
                 perturbed_bn: str = "frozen", estimator: str = "power",
                 hvp_method: str = "double_backward", **base_kwargs):
        refuse_family_options(type(self), base_kwargs)
        super().__init__(params, base_optimizer, rho=rho,
                         rule=rules.EigenSAMRule(alpha, renormalize=renormalize),
                         model=model, sync_perturbation=sync_perturbation, perturbed_bn=perturbed_bn,
                         **base_kwargs)
        self.schedule = RefreshSchedule(p, p_counting, first_refresh, steps_per_epoch)
        self.estimator = check_choice("estimator", estimator, ESTIMATORS)
        self.q = check_int("q", DEFAULT_PRODUCTS[self.estimator] if q is None else q, 1)
        self.hvp_method = check_choice("hvp_method", hvp_method, HVP_METHODS)
        if self.hvp_method == "forward_over_reverse" and (self.model is None or self._ddp() is not None):
            raise ValueError("hvp_method='forward_over_reverse' needs model= (a plain nn.Module, "
                             "not DistributedDataParallel)")
        self.hvp_mode = check_choice("hvp_mode", hvp_mode, HVP_MODES)
        if self.hvp_mode == "eval" and self.model is None:
            raise ValueError("hvp_mode='eval' needs the model: pass model=...")
        generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
        self.eigenvector = random_unit_vector((self.dim,), generator=generator, dtype=self.flat_dtype).to(
            self._params()[0].device)
        self.eigenvalue: float | None = None
        self.has_estimate = False
        self._estimated_at: int | None = None    # the step whose refresh has been done

    #: the settings ``official()`` fixes (RitianLuo/EigenSAM)
    OFFICIAL = dict(p_counting="epoch", first_refresh="after_p", hvp_mode="eval",
                    perturbed_bn="zero_momentum", renormalize=False, estimator="power")

    @classmethod
    def official(cls, params, *, model, steps_per_epoch: int, lr: float, rho: float = 0.05,
                 alpha: float = 0.2, p: int = 100, q: int = 5, momentum: float = 0.9,
                 weight_decay: float = 5e-4, seed: int = 0, sync_perturbation: bool = True) -> "EigenSAM":
        """The official code's Eigen-SAM (``OFFICIAL`` plus its SGD base optimizer).

        Args:
            params, model, rho, alpha, p, q, seed, sync_perturbation: as the constructor
                (``model`` is required: the products run in eval mode).
            steps_per_epoch: optimizer steps per epoch (the loader's length); p counts
                within each epoch.
            lr, momentum, weight_decay: its SGD base optimizer (momentum 0.9, weight
                decay 5e-4 in the official code).
        """
        return cls(params, torch.optim.SGD, rho=rho, alpha=alpha, p=p, q=q, steps_per_epoch=steps_per_epoch,
                   seed=seed, model=model, sync_perturbation=sync_perturbation, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, **cls.OFFICIAL)

    def add_param_group(self, param_group: dict) -> None:
        if hasattr(self, "eigenvector"):
            raise ValueError("EigenSAM's eigenvector estimate spans all parameters: give every "
                             "param group to the constructor instead of add_param_group()")
        super().add_param_group(param_group)

    # -- Algorithm 1 ----------------------------------------------------------------------
    @property
    def refresh_due(self) -> bool:
        """Whether the coming step (``self.steps``) re-estimates v̂ and has not yet done so."""
        return self.schedule.refreshes_at(self.steps) and self._estimated_at != self.steps

    def _estimate(self, hvp) -> None:
        estimate = power_iteration if self.estimator == "power" else lanczos_iteration
        result = estimate(hvp, self.eigenvector, self.q)
        self.eigenvector = result.vector.detach()
        self.eigenvalue = float(result.eigenvalue)
        self.has_estimate = True
        self._estimated_at = self.steps

    def _hvp_context(self):
        if self.hvp_mode == "eval":
            return eval_mode(self.model)
        if self.model is not None:
            return frozen_running_stats(self.model)
        return self._guarded("Hessian-vector products")

    def update_eigenvector(self, closure: Closure) -> float:
        """Run Algorithm 1 on the closure's loss at the current parameters.

        Uses q Hessian-vector products, warm-started from the current v̂; BatchNorm running
        statistics are not updated. Existing ``.grad`` are left as they were. In the
        explicit-step API call it at every step where ``refresh_due`` is True, before
        ``first_step()``. Returns the Rayleigh quotient (an estimate of λ₁).
        """
        if self._backup is not None:
            raise RuntimeError("update_eigenvector() between first_step() and second_step()")
        params = self._params()
        saved = [p.grad for p in params]
        try:
            with self._hvp_context():
                if self.hvp_method == "forward_over_reverse":
                    self._estimate(self._jvp_hvp_function(closure))
                else:
                    _, grads = self._gradient_graph(closure)
                    self._estimate(self._hvp_function(grads, self.sync_perturbation))
        finally:
            for p, g in zip(params, saved):
                p.grad = g
        return self.eigenvalue

    def _clean_pass_with_estimate(self, closure: Closure) -> Tensor:
        """Training-mode refresh sharing the clean pass: one forward, the gradient with its
        graph, q products on that graph, then the gradient into ``.grad``."""
        loss, grads = self._gradient_graph(closure)
        self._estimate(self._hvp_function(grads, self.sync_perturbation))
        g = self._flatten([None if t is None else t.detach() for t in grads])
        self._set_grads(self._perturbation_mean_(g))
        return loss

    def _jvp_hvp_function(self, closure: Closure):
        """v (d,) ↦ H v by forward-over-reverse: ``torch.func.jvp`` of ``torch.func.grad``
        of the closure's loss, the parameters substituted by ``functional_call``."""
        from torch.func import functional_call, grad, jvp

        params = self._params()
        names_by_id = {id(p): "model." + name for name, p in self.model.named_parameters()}
        names = [names_by_id[id(p)] for p in params]
        wrapper = _ClosureModule(self.model, closure)

        def loss(tensors):
            return functional_call(wrapper, dict(zip(names, tensors)), ())

        def hvp(v: Tensor) -> Tensor:
            primals = tuple(p.detach() for p in params)
            _, products = jvp(grad(loss), (primals,), (tuple(self._split(v)),))
            return self._flatten(products)

        return hvp

    # -- Eq. 7-8 ----------------------------------------------------------------------------
    def _coefficients(self, g: Tensor):
        """Eq. 8 with the current v̂; ε = g (USAM) before the first estimate
        (``first_refresh="after_p"``)."""
        if not self.has_estimate:
            return rules.USAMRule().coefficients(g) + (None,)
        a, b = self.rule.coefficients(g, self.eigenvector)
        return a, b, self.eigenvector

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        if self.refresh_due:
            raise RuntimeError(f"step {self.steps} re-estimates the eigenvector: call "
                               "update_eigenvector(closure) before first_step()")
        super().first_step(zero_grad)

    def step(self, closure: Closure) -> Tensor:
        """One full Eigen-SAM step (Algorithm 2); ``closure()`` returns the minibatch loss
        (no backward). Returns the clean loss f_γ(x) (detached)."""
        if closure is None:
            raise ValueError("EigenSAM.step needs a closure that returns the minibatch loss, or "
                             "use update_eigenvector()/first_step()/second_step()")
        if self.refresh_due and self.hvp_mode == "train" and self.hvp_method == "double_backward":
            loss = self._clean_pass_with_estimate(closure)
        else:
            if self.refresh_due:
                self.update_eigenvector(closure)
            loss = self._clean_pass(closure)
        return self._ascend_and_descend(closure, loss)

    # -- state -------------------------------------------------------------------------------
    def _extra_state(self) -> dict:
        return {**super()._extra_state(), "eigenvector": self.eigenvector.clone(),
                "eigenvalue": self.eigenvalue, "has_estimate": self.has_estimate,
                "estimated_at": self._estimated_at, "q": self.q, "hvp_mode": self.hvp_mode,
                "estimator": self.estimator, "hvp_method": self.hvp_method,
                "p": self.schedule.p, "p_counting": self.schedule.p_counting,
                "first_refresh": self.schedule.first_refresh, "perturbed_bn": self.perturbed_bn}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        v = state["eigenvector"]
        if tuple(v.shape) != (self.dim,):
            raise ValueError(f"state_dict's eigenvector has shape {tuple(v.shape)}, this optimizer "
                             f"has d={self.dim} parameters")
        self.eigenvector = v.detach().to(self.eigenvector.device, self.eigenvector.dtype).clone()
        self.eigenvalue = state["eigenvalue"]
        self.has_estimate = bool(state["has_estimate"])
        self._estimated_at = state["estimated_at"]
