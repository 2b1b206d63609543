"""``WrappedOptimizer``: the machinery shared by SAM, Eigen-SAM and EGR.

Each of them computes a modified gradient and hands the actual update to a *base*
optimizer (SGD with momentum 0.9 unless told otherwise):

- the base optimizer and the wrapper share one list of ``param_groups``, so learning-rate
  schedulers, ``add_param_group`` and per-group hyperparameters work on the wrapper;
- ``state_dict()`` holds the base optimizer's state (momentum buffers, …) *and* the
  wrapper's own state (step counter, eigenvector estimate, …), so a resumed run
  continues exactly (davda54/sam loses the base state);
- the perturbation rules of ``sdesam.rules`` act on one flat vector of all
  trainable parameters (d,), in param-group order;
- data parallelism: with a ``DistributedDataParallel`` model the wrapper knows how to run
  a pass without DDP's gradient all-reduce (``no_sync``, covering forward *and*
  backward) and to average a flat vector over the processes itself.

Closures. ``step(closure)`` calls ``closure()`` one or more times at different
parameters; the closure evaluates the minibatch loss and *returns it without calling
backward()* — the optimizer differentiates it itself, because EGR and Eigen-SAM need
its second derivatives. The same minibatch must be used on every call. A loss that
looks multiplied by a ``GradScaler`` (the product of the loss with a 0-dim float32
tensor holding a power of two ≥ 256, ``GradScaler.scale``'s output) is refused: the
SAM family scales the loss itself when given ``scaler=``.

BatchNorm. ``model=`` names the module the closure evaluates, so that the extra passes
(SAM's perturbed pass, Eigen-SAM's Hessian-vector products) leave its running
statistics alone. Without ``model=`` the optimizer refuses, with a ValueError and before
any buffer changes, an extra pass that runs a BatchNorm layer which would update them
(``norm_stats.refuse_running_stat_updates``); ``model=None`` says explicitly that every
pass may update them.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .._checks import check_nonnegative
from .norm_stats import refuse_running_stat_updates

__all__ = ["WrappedOptimizer", "Closure", "MODEL_NOT_GIVEN"]

#: ``closure() -> loss``: the minibatch loss as a scalar tensor attached to the graph
#: (``closure(part)`` for a step split into parts: ``sdesam.optim.SAM``).
Closure = Callable[..., Tensor]

#: options of the SAM family that no base optimizer takes: refused by the wrappers that
#: do not implement them instead of being passed on to the base optimizer
_FAMILY_OPTIONS = ("update", "micro_batches", "accumulate", "svag", "scaler", "clip_grad_norm", "clip_ascent")


def refuse_family_options(cls, kwargs: dict) -> None:
    """ValueError when ``kwargs`` (bound for the base optimizer) hold an option of the SAM
    family that ``cls`` does not implement."""
    refused = [name for name in _FAMILY_OPTIONS if name in kwargs]
    if refused:
        raise ValueError(f"{cls.__name__} does not take {', '.join(refused)}= (options of "
                         "sdesam.optim.SAM and its family)")


class _ModelNotGiven:
    def __repr__(self) -> str:
        return "<model not given>"


#: the default of ``model=``: the optimizer guards BatchNorm statistics by refusing (see
#: the module docstring); ``model=None`` opts out of the guard.
MODEL_NOT_GIVEN = _ModelNotGiven()


def _looks_grad_scaled(loss: Tensor) -> bool:
    """Whether ``loss`` is ``GradScaler.scale(l)``: l times a 0-dim float32 constant that
    holds a power of two ≥ 256 (the value is read only for that product)."""
    fn = loss.grad_fn
    if type(fn).__name__ != "MulBackward0":
        return False
    other = getattr(fn, "_saved_other", None)
    if not isinstance(other, Tensor) or other.dim() != 0 or other.dtype != torch.float32 or other.requires_grad:
        return False
    value = float(other)
    return value >= 256 and math.log2(value).is_integer()


def _ddp_module(model):
    """``model`` if it is a DistributedDataParallel wrapper, else None."""
    from torch.nn.parallel import DistributedDataParallel
    return model if isinstance(model, DistributedDataParallel) else None


class WrappedOptimizer(torch.optim.Optimizer):
    """Base class: a base optimizer plus flat-vector and data-parallel helpers.

    Args:
        params: parameters or param-group dicts, as for any ``torch.optim`` optimizer.
        base_optimizer: a ``torch.optim.Optimizer`` class (or any callable
            ``(param_groups, **base_kwargs) -> Optimizer``). ``None``: ``torch.optim.SGD``
            with ``momentum=0.9`` unless ``base_kwargs`` sets it.
        rho: default ρ ≥ 0 of every param group (a group may set its own ``"rho"``).
        model: the module the closure evaluates (optionally wrapped in DDP). Needed to
            keep BatchNorm running statistics out of the extra passes and, under DDP,
            for ``no_sync``. Not given: an extra pass that would update BatchNorm running
            statistics raises a ValueError (nothing is changed); ``None``: no guard, every
            pass updates them.
        sync_perturbation: under DDP, compute the perturbation from the gradient
            averaged over all processes (True: N processes equal one process with the
            combined batch) or from each process's own minibatch (False: m-sharpness,
            the first pass runs under ``no_sync``).
        **base_kwargs: passed to the base optimizer (``lr``, ``momentum``,
            ``weight_decay``, …).
    """

    kind = "wrapped"

    def __init__(self, params, base_optimizer=None, *, rho: float, model=MODEL_NOT_GIVEN,
                 sync_perturbation: bool = True, **base_kwargs):
        rho = check_nonnegative("rho", rho)
        refuse_family_options(type(self), base_kwargs)
        self._guard_running_stats = model is MODEL_NOT_GIVEN
        model = None if model is MODEL_NOT_GIVEN else model
        if base_optimizer is None:
            base_optimizer = torch.optim.SGD
            base_kwargs.setdefault("momentum", 0.9)
        if not callable(base_optimizer):
            raise ValueError("base_optimizer must be a torch.optim.Optimizer class or a callable "
                             f"returning one, got base_optimizer={base_optimizer!r}")
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module (or DDP wrapper) or None, got {type(model).__name__}")
        super().__init__(params, dict(rho=rho, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        if not isinstance(self.base_optimizer, torch.optim.Optimizer):
            raise ValueError(f"base_optimizer built a {type(self.base_optimizer).__name__}, "
                             "not a torch.optim.Optimizer")
        self.param_groups = self.base_optimizer.param_groups
        for i, group in enumerate(self.param_groups):
            group["rho"] = check_nonnegative(f"rho (param group {i})", group["rho"])
        self.model = model
        self.sync_perturbation = bool(sync_perturbation)
        self._check_params()

    # -- parameters as one flat vector ------------------------------------------------
    def _params(self) -> list[Tensor]:
        """Trainable parameters in param-group order (the layout of every flat vector)."""
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _rhos(self) -> list[float]:
        """ρ of each trainable parameter's group, aligned with ``_params()``."""
        return [group["rho"] for group in self.param_groups for p in group["params"] if p.requires_grad]

    def _check_params(self) -> None:
        params = self._params()
        if not params:
            raise ValueError("the optimizer got no parameters that require gradients")
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError("all parameters must live on one device (model parallelism is not "
                             f"supported), got {sorted(map(str, devices))}")
        dtypes = {p.dtype for p in params}
        if not all(dt.is_floating_point for dt in dtypes):
            raise ValueError(f"parameters must be floating point, got dtypes {sorted(map(str, dtypes))}")

    @property
    def flat_dtype(self) -> torch.dtype:
        """dtype of flat vectors: the promotion of all parameter dtypes."""
        dtype = None
        for p in self._params():
            dtype = p.dtype if dtype is None else torch.promote_types(dtype, p.dtype)
        return dtype

    @property
    def dim(self) -> int:
        """d, the number of trainable scalars."""
        return sum(p.numel() for p in self._params())

    def _flatten(self, tensors) -> Tensor:
        """Concatenate per-parameter tensors (None: zeros) into one flat vector (d,)."""
        dtype = self.flat_dtype
        return torch.cat([(torch.zeros_like(p, dtype=dtype) if t is None else t.to(dtype)).reshape(-1)
                          for p, t in zip(self._params(), tensors)])

    def _split(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` (d,) shaped and typed like the parameters."""
        params = self._params()
        pieces = torch.split(flat, [p.numel() for p in params])
        return [piece.view_as(p).to(p.dtype) for piece, p in zip(pieces, params)]

    def flat_grad(self) -> Tensor:
        """The current ``.grad`` of all trainable parameters as one vector (d,); a missing
        gradient counts as zero."""
        return self._flatten([p.grad for p in self._params()])

    def _set_grads(self, flat: Tensor) -> None:
        for p, piece in zip(self._params(), self._split(flat)):
            p.grad = piece.clone()

    # -- closures and data parallelism ------------------------------------------------
    def _evaluate(self, closure: Closure, first: bool = True) -> Tensor:
        """Call the closure and check what it returned. ``first``: with empty gradients
        (and check that the closure left them empty); else gradients accumulate."""
        if first:
            self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"closure must return the scalar minibatch loss, got {type(loss).__name__}"
                             + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else ""))
        if first and any(p.grad is not None for p in self._params()):
            raise ValueError("closure must not call backward(): it returns the loss and "
                             f"{type(self).__name__} differentiates it itself")
        if not loss.requires_grad:
            raise ValueError("closure returned a loss that does not require grad: return it "
                             "attached to the graph (no detach(), no torch.no_grad())")
        if _looks_grad_scaled(loss):
            raise ValueError("closure returned GradScaler.scale(loss): return the unscaled loss and "
                             f"give the scaler to the optimizer (sdesam.optim.SAM(..., scaler=scaler)); "
                             f"{type(self).__name__} scales it itself")
        return loss.reshape(())

    def _guarded(self, what: str):
        """Context for an extra pass: without ``model=`` it refuses BatchNorm updates."""
        if self._guard_running_stats:
            return refuse_running_stat_updates(f"{type(self).__name__}'s {what}")
        return contextlib.nullcontext()

    def _ddp(self):
        return _ddp_module(self.model)

    def _no_sync(self):
        """Context: no DDP gradient all-reduce (forward and backward) — or nothing."""
        ddp = self._ddp()
        return ddp.no_sync() if ddp is not None else contextlib.nullcontext()

    def _world_mean_(self, flat: Tensor) -> Tensor:
        """Average ``flat`` over the DDP processes in place (no-op without DDP)."""
        ddp = self._ddp()
        if ddp is not None:
            group = ddp.process_group
            dist.all_reduce(flat, group=group)
            flat.div_(dist.get_world_size(group))
        return flat

    def _perturbation_mean_(self, flat: Tensor) -> Tensor:
        """World mean when the perturbation is synchronised, else the local vector."""
        return self._world_mean_(flat) if self.sync_perturbation else flat

    def _gradient_graph(self, closure: Closure):
        """Loss and its gradients with ``create_graph=True`` (for second derivatives);
        run under ``no_sync`` so that DDP neither all-reduces nor expects a backward."""
        with self._no_sync():
            loss = self._evaluate(closure)
            with torch.enable_grad():
                grads = torch.autograd.grad(loss, self._params(), create_graph=True, allow_unused=True)
        return loss, grads

    def _hvp_function(self, grads, average: bool) -> Callable[[Tensor], Tensor]:
        """v (d,) ↦ H v (d,), the Hessian of the loss whose gradients ``grads`` are;
        averaged over DDP processes when ``average``."""
        params = self._params()
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]

        def hvp(v: Tensor) -> Tensor:
            pieces = self._split(v)
            out = [None] * len(params)
            if live:
                with torch.enable_grad():
                    products = torch.autograd.grad([grads[i] for i in live], [params[i] for i in live],
                                                   grad_outputs=[pieces[i] for i in live],
                                                   retain_graph=True, allow_unused=True)
                for i, hv in zip(live, products):
                    out[i] = hv
            flat = self._flatten(out)
            return self._world_mean_(flat) if average else flat

        return hvp

    # -- param groups, schedulers, state ----------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        if not hasattr(self, "base_optimizer"):     # during __init__
            super().add_param_group(param_group)
            return
        param_group.setdefault("rho", self.defaults["rho"])
        check_nonnegative(f"rho (param group {len(self.param_groups)})", param_group["rho"])
        self.base_optimizer.add_param_group(param_group)
        self._check_params()

    def _base_step(self) -> None:
        self.base_optimizer.step()
        # LR schedulers check that optimizer.step() ran before scheduler.step(); the
        # explicit first_step()/second_step() path must count as a step too.
        self._opt_called = True

    def _extra_state(self) -> dict:
        """The wrapper's own state (subclasses extend it)."""
        return {"kind": self.kind}

    def _load_extra_state(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state_dict was saved by a {state.get('kind')!r} optimizer, "
                             f"this is {self.kind!r}")

    def state_dict(self) -> dict:
        """``{"base": base optimizer state_dict, "wrapper": own state}``."""
        return {"base": self.base_optimizer.state_dict(), "wrapper": self._extra_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"base", "wrapper"}:
            raise ValueError("not a state_dict of a sdesam.optim optimizer: expected keys "
                             f"{{'base', 'wrapper'}}, got {sorted(state_dict)}")
        self._load_extra_state(state_dict["wrapper"])
        self.base_optimizer.load_state_dict(state_dict["base"])
        # Optimizer.load_state_dict replaces the list of param groups: share it again
        self.param_groups = self.base_optimizer.param_groups
