"""``SAM``: sharpness-aware minimisation around any base optimizer (paper Eq. 1), and the
SAM family beyond the perturbation.

    g = ∇f_γ(x),   ε = rule(g),   p = ∇f_γ(x + ρ ε),   x ← base_step(x, Φ(g, p))

with ``rule`` one of ``sdesam.rules``: ``"sam"`` (ε = g/‖g‖, Eq. 2), ``"usam"`` (ε = g),
``"reverse_sam"`` (ε = −g/‖g‖, Appendix A), ``"asam"`` (ε = T²g/‖Tg‖, T = diag(|x| + ξ);
Kwon et al. 2021), ``"fisher_sam"`` (ε = F⁻¹g/√(gᵀF⁻¹g), F = diag(1 + η_F g²); Kim et al.
2022), and Φ an update map of ``sdesam.updates`` (``update=``): the perturbed gradient
itself (SAM, default), ``"gsam"`` (``GSAMUpdate``), ``"wsam"`` (``WSAMUpdate``) — the same
rule and map objects the simulation core uses. g and p are flat vectors (d,) over all
trainable parameters in param-group order; ε uses the global norm and each param group
moves by its own ρ: x̃ = x + ρ_group ε. With a plain SGD base optimizer (no momentum, no
weight decay) one step is exactly x ← x − η Φ(g, p) with η = lr (Eq. 1 for SAM).

Two ways to use it:

    # one call (the closure returns the loss; it must not call backward)
    opt = SAM(model.parameters(), lr=0.1, rho=0.05, model=model, weight_decay=5e-5)
    loss = opt.step(lambda: loss_fn(model(x), y))

    # explicit steps, as in davda54/sam
    loss_fn(model(x), y).backward()
    opt.first_step(zero_grad=True)                 # x → x + ρε (x is kept; g too, if Φ needs it)
    with frozen_running_stats(model):
        loss_fn(model(x), y).backward()
    opt.second_step(zero_grad=True)                # back to x, base step with Φ(g, p)

The parameters are restored by copying the saved x (not by subtracting ρε, which is not
exact in floating point).

Steps in parts — the closure contract. One step's data are its minibatches (one, or two
with ``svag=l`` > 1), each cut into ``micro_batches × accumulate`` equal consecutive pieces
(at most one of the two > 1); ``parts`` is their number. With ``parts == 1`` the
optimizer calls ``closure()``; otherwise ``closure(part)`` for part = 0, …, parts − 1,
which must return the mean loss of piece ``part`` of the step's data: with
P = micro_batches · accumulate pieces per minibatch, part = j·P + i for piece i of
minibatch j. ``split_closure(fn, *data)`` builds such a closure from the step's data
(``data`` concatenated along dim 0: minibatch 0, then minibatch 1) and refuses data that do
not split evenly. ``closure(None)`` of that closure is the loss of all the data.

- ``micro_batches=m`` (m-SAM; Foret et al. 2021, Andriushchenko & Flammarion 2022): each
  micro-batch i of B/m examples takes its own ε_i = rule(g_i) and p_i, and the base
  optimizer gets the mean (1/m) Σ Φ(g_i, p_i) — ``sdesam.discrete.DiscreteSAM``'s
  ``micro_batches``. Under DDP, ``sync_perturbation=False`` is m-SAM with m = the number
  of processes (each process's share is one micro-batch; times ``micro_batches`` when both
  are used; tests/test_optim_family_ddp.py).
- ``accumulate=k`` (gradient accumulation): g and p are each the mean over the k pieces
  of the minibatch (each piece's pass backpropagates loss/k into the same ``.grad``), and
  ε comes from the whole accumulated g, so k pieces compute what one pass over the
  minibatch computes (without BatchNorm, whose batch statistics are per piece).
- ``svag=l`` (SVAG, Li, Malladi & Arora 2021): two independent minibatches γ₁, γ₂, each
  with its own perturbation, and the base optimizer gets c₁Φ_{γ₁} + c₂Φ_{γ₂} with
  c₁,₂ = (1 ± √(2l − 1))/2 (``sdesam.discrete.svag_coefficients``). The learning rate is
  not changed here: SVAG runs l times the steps with lr/l (the trainer's ``svag`` does
  it, as sadhikamalladi/svag's ``sde1`` configurations do); l = 1 is the plain step.

The returned loss is the mean of the clean piece losses of the step.

Clipping. ``clip_grad_norm=c`` clips the gradient the base optimizer receives (the
combined Φ; WSAM's decoupled form: the clean gradient it receives) to global norm c with
``torch.nn.utils.clip_grad_norm_`` (factor c/(‖·‖ + 1e-6) when above c), after
unscaling; ``clip_ascent=True`` also clips each clean gradient g by the same rule before ε
and Φ use it.

Mixed precision. bf16 autocast needs nothing. float16: pass ``scaler=`` a
``torch.amp.GradScaler`` and let the closure return the *unscaled* loss (run it under
``torch.autocast(..., dtype=torch.float16)``); the optimizer backpropagates
``scaler.scale(loss)``, divides every gradient by the scale before using it (for ε, Φ
and the norms; the scale is a power of two, so this is exact), and hands the final
gradient to ``scaler.step(base_optimizer)``, so an inf/NaN step is skipped exactly as
GradScaler skips it and the parameters stay at x. A non-finite clean gradient skips the
perturbed pass. Call ``scaler.update()`` after each step, as with any optimizer. In the
explicit API, backpropagate ``scaler.scale(loss)`` yourself in both passes.

BatchNorm. With ``model=`` the perturbed pass leaves running statistics as the clean
pass left them (``perturbed_bn``); without it, a perturbed pass that would update them
raises a ValueError before any buffer changes (see ``sdesam.optim.base``); ``model=None``
lets both passes update them. With the explicit API wrap the perturbed pass yourself.

Data parallelism (DDP): with ``sync_perturbation=True`` (default) every pass runs through
DDP's gradient all-reduce (with ``accumulate``, the last piece's), so ε, p and Φ use
globally averaged gradients and N processes equal one process with the combined batch.
With ``False`` the passes run under ``model.no_sync()`` (forward and backward), each
process perturbs with its own gradient, and the final gradient is averaged over the
processes (for Φ = p the plain step lets DDP average the perturbed pass instead).
"""
from __future__ import annotations

import contextlib
import inspect

import torch
from torch import Tensor

from .. import rules
from .._checks import check_choice, check_int, check_positive
from ..curvature.power import accurate_norm
from ..discrete import svag_coefficients
from ..updates import get_update
from .base import MODEL_NOT_GIVEN, Closure, WrappedOptimizer
from .norm_stats import PERTURBED_BN, perturbed_pass_stats

__all__ = ["SAM"]


def _takes_an_argument(closure) -> bool:
    """Whether ``closure(part)`` is a valid call (True when the signature is unknown)."""
    try:
        inspect.signature(closure).bind(0)
    except TypeError:
        return False
    except ValueError:
        return True
    return True


class SAM(WrappedOptimizer):
    """SAM and its family (rules × update maps, m-SAM, SVAG) wrapping a base optimizer.

    Args:
        params: parameters or param-group dicts (a group may set its own ``"rho"``).
        base_optimizer: optimizer class taking the actual step; ``None`` = SGD with
            momentum 0.9 (override with ``momentum=``).
        rho: SAM radius ρ ≥ 0 (paper: 0.05 CIFAR-10 / Fashion-MNIST, 0.1 CIFAR-100,
            0.01 SVHN).
        rule: a name of ``sdesam.rules.RULES`` (``"sam"``, ``"usam"``, ``"reverse_sam"``,
            ``"asam"``, ``"fisher_sam"``) or a ``PerturbationRule`` that needs no eigenvector
            (use ``EigenSAM`` for Eq. 8); a rule that depends on the point (``needs_point``,
            e.g. ASAM) gets the flat parameters as x; a rule without the coefficient form
            (ASAM, Fisher-SAM) has ε materialised as one flat vector.
        update: Φ — None (the perturbed gradient), ``"gsam"``, ``"wsam"`` or an
            ``sdesam.updates.UpdateMap`` (``GSAM`` and ``WSAM`` set it for you).
        micro_batches: m ≥ 1, m-SAM (see the module docstring).
        accumulate: k ≥ 1 pieces of gradient accumulation (not with ``micro_batches`` > 1).
        svag: SVAG's l ≥ 1 (two minibatches per step when l > 1).
        scaler: a ``torch.amp.GradScaler`` (float16 mixed precision), or None.
        clip_grad_norm: clip the base optimizer's gradient to this global norm (> 0), or None.
        clip_ascent: also clip each clean gradient before it is used (needs ``clip_grad_norm``).
        model, sync_perturbation: see ``WrappedOptimizer``.
        perturbed_bn: one of ``PERTURBED_BN`` — ``"frozen"``: the perturbed pass leaves
            every BatchNorm buffer untouched; ``"zero_momentum"``: BatchNorm momentum 0,
            so ``num_batches_tracked`` counts that pass too (davda54/sam, kozistr's GSAM
            and WSAM, juntang-zhuang/GSAM, the official Eigen-SAM code;
            tests/test_official_replay.py, tests/test_optim_family.py).
        **base_kwargs: ``lr``, ``momentum``, ``weight_decay``, … for the base optimizer.

    Attributes:
        steps: completed steps (a step GradScaler skipped counts).
        parts: closure parts per step (see the module docstring).
    """

    kind = "sam"
    #: whether this optimizer maintains the eigenvector estimate a rule may need
    estimates_eigenvector = False
    #: WSAM's decoupled form: the base optimizer steps with the clean gradient and Φ − g is
    #: applied afterwards as x ← x − lr·(Φ − g) (``WSAM(decouple=True)``)
    decouple = False

    def __init__(self, params, base_optimizer=None, *, rho: float = 0.05, rule="sam", update=None,
                 micro_batches: int = 1, accumulate: int = 1, svag: int = 1, scaler=None,
                 clip_grad_norm: float | None = None, clip_ascent: bool = False, model=MODEL_NOT_GIVEN,
                 sync_perturbation: bool = True, perturbed_bn: str = "frozen", **base_kwargs):
        rule = rules.get_rule(rule)
        if rule.needs_eigenvector and not self.estimates_eigenvector:
            raise ValueError(f"rule={rule.name!r} needs an eigenvector estimate: use "
                             "sdesam.optim.EigenSAM")
        update = get_update(update)
        micro_batches = check_int("micro_batches", micro_batches, 1)
        accumulate = check_int("accumulate", accumulate, 1)
        if micro_batches > 1 and accumulate > 1:
            raise ValueError(f"micro_batches={micro_batches} and accumulate={accumulate}: m-SAM "
                             "already runs each micro-batch on its own; use one of the two")
        svag = check_int("svag", svag, 1)
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise ValueError(f"scaler must be a torch.amp.GradScaler or None, got {type(scaler).__name__}")
        if clip_grad_norm is not None:
            clip_grad_norm = check_positive("clip_grad_norm", clip_grad_norm)
        if clip_ascent and clip_grad_norm is None:
            raise ValueError("clip_ascent=True needs clip_grad_norm= (the norm to clip to)")
        super().__init__(params, base_optimizer, rho=rho, model=model,
                         sync_perturbation=sync_perturbation, **base_kwargs)
        self.rule = rule
        self.update = update
        self.micro_batches, self.accumulate, self.svag = micro_batches, accumulate, svag
        self.scaler = scaler
        self.clip_grad_norm, self.clip_ascent = clip_grad_norm, bool(clip_ascent)
        self.perturbed_bn = check_choice("perturbed_bn", perturbed_bn, PERTURBED_BN)
        self.steps = 0            # completed steps (second_step calls)
        self._backup = None       # the parameters x while they sit at x + ρε
        self._clean = None        # the clean flat gradient (unscaled) while Φ or a skip needs it
        self._skip = False        # the clean gradient was not finite: no ascent, the step is skipped
        self._scale = 1.0         # the GradScaler's scale during the current step

    # -- layout of a step -----------------------------------------------------------------
    @property
    def svag_weights(self) -> tuple[float, ...]:
        """(1,) for one minibatch, or SVAG's (c₁, c₂)."""
        return (1.0,) if self.svag == 1 else svag_coefficients(self.svag)

    @property
    def parts(self) -> int:
        return len(self.svag_weights) * self.micro_batches * self.accumulate

    def split_closure(self, fn, *data: Tensor) -> Closure:
        """A closure for ``step`` from one step's data: ``closure(part)`` is
        ``fn(*pieces)`` on piece ``part`` of every tensor in ``data`` (equal consecutive
        slices along dim 0, ``parts`` of them), ``closure()`` / ``closure(None)`` is
        ``fn(*data)``. ``data`` hold the step's minibatches one after the other (B or 2B
        rows with ``svag`` > 1). Raises a ValueError naming the options when the rows do not
        split evenly."""
        if not data or not all(isinstance(t, Tensor) and t.dim() >= 1 for t in data):
            raise ValueError("split_closure needs the step's data as tensors with a batch dimension")
        n = data[0].shape[0]
        if any(t.shape[0] != n for t in data):
            raise ValueError(f"split_closure: the tensors have different batch sizes {[t.shape[0] for t in data]}")
        if n % self.parts or n == 0:
            raise ValueError(f"{n} examples do not split into {len(self.svag_weights)} minibatch(es) (svag="
                             f"{self.svag}) × micro_batches={self.micro_batches} × accumulate="
                             f"{self.accumulate} = {self.parts} equal parts")
        size = n // self.parts

        def closure(part=None):
            if part is None:
                return fn(*data)
            return fn(*(t[part * size:(part + 1) * size] for t in data))

        return closure


    def _backward(self, loss: Tensor, weight: float = 1.0) -> None:
        """Backpropagate weight · loss (times the scale with a GradScaler) into ``.grad``."""
        if weight != 1.0:
            loss = loss * weight
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward()

    def _clip_factor(self, g: Tensor) -> float:
        """``clip_grad_norm_``'s factor for g (d,): min(1, c/(‖g‖ + 1e-6))."""
        return min(1.0, self.clip_grad_norm / (float(accurate_norm(g)) + 1e-6))

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

    def _save_point(self) -> None:
        self._backup = [p.detach().clone() for p in self._params()]

    @torch.no_grad()
    def _ascend(self, a: Tensor, b: Tensor | None, v: Tensor | None) -> None:
        """Move every parameter to x + ρ_group (a·grad + b·v̂), in place (ε itself is never
        materialised: two fused passes over the parameters at most)."""
        params = self._params()
        v_pieces = self._split(v) if b is not None else [None] * len(params)
        for p, rho, v_piece in zip(params, self._rhos(), v_pieces):
            if p.grad is not None:
                p.addcmul_(p.grad, (rho * a).to(p.dtype))
            if v_piece is not None:
                p.addcmul_(v_piece, (rho * b).to(p.dtype))

    @torch.no_grad()
    def _ascend_along(self, eps: Tensor) -> None:
        """Move every parameter to x + ρ_group ε, for ε (d,) materialised as one flat vector."""
        for p, rho, piece in zip(self._params(), self._rhos(), self._split(eps)):
            p.add_(piece, alpha=rho)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """x → x + ρ ε(g), with g the gradients currently in ``.grad`` (the clean pass; divided
        by the GradScaler's scale S when there is one). g is kept when Φ needs it; a
        non-finite g (with a scaler) leaves x in place and marks the step to be skipped."""
        if not self.update.is_identity and not self.sync_perturbation and self._ddp() is not None:
            raise ValueError("update= with sync_perturbation=False under DDP needs step(closure): Φ is "
                             "formed per process before the processes are averaged")
        self._first_step(zero_grad)

    def _first_step(self, zero_grad: bool) -> None:
        if self._backup is not None:
            raise RuntimeError("first_step() called twice: call second_step() in between")
        self._scale = scale = 1.0 if self.scaler is None else self.scaler.get_scale()
        g = self.flat_grad()
        if scale != 1.0:
            g = g / scale
        self._save_point()
        if self.scaler is not None and not bool(torch.isfinite(g).all()):
            self._skip, self._clean = True, g
        else:
            factor = self._clip_factor(g) if self.clip_ascent else 1.0
            if factor != 1.0:
                g = g * factor
            self._clean = None if self.update.is_identity else g
            if self.rule.has_coefficients:
                a, b, v = self._coefficients(g)
                self._ascend(a * (factor / scale) if factor != 1.0 or scale != 1.0 else a, b, v)
            else:
                self._ascend_along(self.perturbation(g))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def _restore(self) -> None:
        for p, x in zip(self._params(), self._backup):
            p.copy_(x)
        self._backup = None

    @torch.no_grad()
    def _restore_direction(self) -> tuple[Tensor, Tensor | None]:
        """Back to x; (Φ(g, p), g) as flat unscaled vectors, p from ``.grad``; after a
        skipped ascent Φ is the non-finite clean gradient."""
        self._restore()
        clean, self._clean = self._clean, None
        if self._skip:
            self._skip = False
            return clean, clean.clone()
        p = self.flat_grad()
        if self._scale != 1.0:
            p = p / self._scale
        return (p, None) if self.update.is_identity else (self.update(clean, p), clean)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Return to x and let the base optimizer step with Φ(g, p), p the gradients in
        ``.grad`` (those of the perturbed pass)."""
        if self._backup is None:
            raise RuntimeError("second_step() called without first_step()")
        if self._skip or not self.update.is_identity:
            self._descend(*self._restore_direction())
        else:
            self._restore()
            self._descend(None, None)
        self.steps += 1
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def _descend(self, direction: Tensor | None, clean: Tensor | None) -> None:
        """The base step. ``direction``: the flat unscaled gradient to hand over (None: it is
        in ``.grad`` already, times the scale); ``clean``: the clean gradient, for the
        decoupled form."""
        scale = self._scale
        outside = None
        if direction is not None:
            handed = direction
            if self.decouple:
                outside = direction - clean
                if self.scaler is None or bool(torch.isfinite(outside).all()):
                    handed = clean
                else:
                    outside = None              # the non-finite direction makes GradScaler skip
            self._set_grads(handed * scale if scale != 1.0 else handed)
        params = self._params()
        if self.clip_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.base_optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        self._opt_called = True     # LR schedulers check that optimizer.step() ran
        if outside is not None:
            lrs = [group["lr"] for group in self.param_groups for p in group["params"] if p.requires_grad]
            for p, lr, piece in zip(params, lrs, self._split(outside)):
                p.add_(piece, alpha=-lr)

    def _abort(self) -> None:
        """After an exception inside a step: parameters back to x, no step taken."""
        if self._backup is not None:
            self._restore()
        self._clean, self._skip = None, False
        self.zero_grad(set_to_none=True)

    # -- one-call step --------------------------------------------------------------------
    def _clean_pass(self, closure: Closure) -> Tensor:
        """Loss at x and its gradient in ``.grad`` (all-reduced unless per-process ε)."""
        context = self._no_sync() if not self.sync_perturbation else contextlib.nullcontext()
        with context:
            loss = self._evaluate(closure)
            self._backward(loss)
        return loss

    def _perturbed_context(self):
        if self.model is not None:
            return perturbed_pass_stats(self.model, self.perturbed_bn)
        return self._guarded("perturbed pass")

    def _perturbed_pass(self, closure: Closure) -> None:
        """Gradient at x + ρε into ``.grad``, BatchNorm statistics untouched."""
        with self._perturbed_context():
            self._backward(self._evaluate(closure))

    def step(self, closure: Closure) -> Tensor:
        """One full step; the closure returns the loss (no backward): ``closure()``, or
        ``closure(part)`` when ``parts`` > 1 (see the module docstring).

        Returns the mean clean loss f_γ(x) of the step's data (detached).
        """
        if closure is None:
            raise ValueError(f"{type(self).__name__}.step needs a closure that returns the "
                             "minibatch loss, or use first_step()/second_step()")
        if self.parts > 1 and not _takes_an_argument(closure):
            raise ValueError(f"a step in {self.parts} parts (svag={self.svag}, micro_batches={self.micro_batches}, "
                             f"accumulate={self.accumulate}) calls closure(part): build the closure with "
                             "split_closure(fn, *data)")
        per_process_phi = not self.update.is_identity and not self.sync_perturbation and self._ddp() is not None
        if self.parts > 1 or per_process_phi:
            return self._step_in_parts(closure)
        return self._ascend_and_descend(closure, self._clean_pass(closure))

    def _ascend_and_descend(self, closure: Closure, loss: Tensor) -> Tensor:
        """After the clean pass (gradients in ``.grad``): perturb, take the gradient
        there, restore and let the base optimizer step. Returns ``loss`` detached."""
        self.first_step(zero_grad=True)
        if not self._skip:
            try:
                self._perturbed_pass(closure)
            except BaseException:
                self._abort()
                raise
        self.second_step()
        return loss.detach()

    def _accumulated_pass(self, closure: Closure, parts: list[int], clean: bool) -> Tensor:
        """The mean gradient over the pieces ``parts`` into ``.grad`` (loss/k per piece);
        returns the mean piece loss. Under DDP only the last piece of a synchronised pass
        all-reduces."""
        k = len(parts)
        losses = []
        for n, part in enumerate(parts):
            synced = self.sync_perturbation and n == k - 1
            sync = contextlib.nullcontext() if synced else self._no_sync()
            stats = contextlib.nullcontext() if clean else self._perturbed_context()
            with sync, stats:
                loss = self._evaluate((lambda: closure(part)) if self.parts > 1 else closure, first=n == 0)
                self._backward(loss, 1.0 / k if k > 1 else 1.0)
            losses.append(loss.detach())
        return losses[0] if k == 1 else torch.stack(losses).mean()

    def _step_in_parts(self, closure: Closure) -> Tensor:
        """One step over ``parts`` closure calls: per minibatch j and micro-batch i the
        accumulated clean and perturbed passes give Φ_ji; the base optimizer gets
        Σ_j c_j (1/m) Σ_i Φ_ji (averaged over DDP processes when they perturb on their own)."""
        m, k = self.micro_batches, self.accumulate
        direction = clean_total = None
        losses = []
        try:
            for j, c in enumerate(self.svag_weights):
                phi_sum = clean_sum = None
                for i in range(m):
                    parts = [(j * m + i) * k + a for a in range(k)]
                    losses.append(self._accumulated_pass(closure, parts, clean=True))
                    self._first_step(zero_grad=True)
                    if not self._skip:
                        self._accumulated_pass(closure, parts, clean=False)
                    phi, g = self._restore_direction()
                    phi_sum = phi if phi_sum is None else phi_sum.add_(phi)
                    if self.decouple:
                        clean_sum = g if clean_sum is None else clean_sum.add_(g)
                if m > 1:
                    phi_sum = phi_sum.div_(m)
                    clean_sum = None if clean_sum is None else clean_sum.div_(m)
                direction = phi_sum.mul_(c) if direction is None else direction.add_(phi_sum, alpha=c)
                if self.decouple:
                    clean_total = clean_sum.mul_(c) if clean_total is None else clean_total.add_(clean_sum, alpha=c)
        except BaseException:
            self._abort()
            raise
        if not self.sync_perturbation:
            self._world_mean_(direction)
            if clean_total is not None:
                self._world_mean_(clean_total)
        self._descend(direction, clean_total)
        self.steps += 1
        self.zero_grad(set_to_none=True)
        return torch.stack(losses).mean()

    # -- state --------------------------------------------------------------------------
    def _options(self) -> dict:
        """The options a saved state must have been made with."""
        return {"update": self.update.config(), "micro_batches": self.micro_batches,
                "accumulate": self.accumulate, "svag": self.svag, "decouple": self.decouple}

    def _extra_state(self) -> dict:
        if self._backup is not None:
            raise RuntimeError("state_dict() between first_step() and second_step(): the "
                               "parameters are perturbed; call second_step() first")
        return {**super()._extra_state(), "steps": self.steps, "rule": self.rule.config(), **self._options()}

    def _load_extra_state(self, state: dict) -> None:
        super()._load_extra_state(state)
        if self._backup is not None:
            raise RuntimeError("load_state_dict() between first_step() and second_step()")
        differ = {k: (state[k], v) for k, v in self._options().items() if k in state and state[k] != v}
        if differ:
            raise ValueError(f"state_dict was saved with other options: {differ} (saved, this optimizer's)")
        self.steps = int(state["steps"])
