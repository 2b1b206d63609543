"""Module-mode helpers for the extra passes of SAM-type optimizers.

SAM evaluates the gradient a second time at the perturbed point x + ρε and Eigen-SAM
evaluates Hessian-vector products; neither of these passes is a step of the data
stream, so BatchNorm running statistics must stay as the clean pass left them.

``frozen_running_stats`` does that without copying buffers: it sets
``track_running_stats = False`` on every BatchNorm (incl. ``SyncBatchNorm``) for the
duration. In training mode such a layer still normalises with the batch statistics
(the same function of the input as before) but neither reads nor writes
``running_mean``, ``running_var`` or ``num_batches_tracked``. (Setting ``momentum = 0``
instead, as some SAM code does, leaves ``num_batches_tracked`` counting and breaks
``momentum=None`` layers.)

``zero_momentum`` is that other convention — davda54/sam's ``disable_running_stats`` and
the official Eigen-SAM code's: every BatchNorm's ``momentum`` is 0 for the duration, so
the running statistics keep their values but ``num_batches_tracked`` still counts. It
exists to reproduce those codes exactly (``perturbed_bn="zero_momentum"``).

``refuse_running_stat_updates`` guards an extra pass when the optimizer was not told
which module the closure evaluates: a process-wide forward pre-hook raises a ValueError
before any BatchNorm layer that would change its running statistics runs its forward,
so the buffers are never touched.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._checks import check_choice

__all__ = ["frozen_running_stats", "zero_momentum", "eval_mode", "PERTURBED_BN", "perturbed_pass_stats",
           "updates_running_stats", "refuse_running_stat_updates"]

#: how the perturbed pass of SAM-type optimizers treats BatchNorm buffers:
#: ``"frozen"`` (``frozen_running_stats``, default) or ``"zero_momentum"`` (``zero_momentum``).
PERTURBED_BN = ("frozen", "zero_momentum")


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module):
    """Within the block, BatchNorm layers of ``module`` do not update their buffers."""
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    previous = [m.track_running_stats for m in layers]
    try:
        for m in layers:
            m.track_running_stats = False
        yield module
    finally:
        for m, flag in zip(layers, previous):
            m.track_running_stats = flag


@contextlib.contextmanager
def zero_momentum(module: nn.Module):
    """Within the block every BatchNorm of ``module`` has ``momentum = 0``: running
    statistics unchanged, ``num_batches_tracked`` incremented by each training forward."""
    layers = [m for m in module.modules() if isinstance(m, _BatchNorm)]
    previous = [m.momentum for m in layers]
    try:
        for m in layers:
            m.momentum = 0.0
        yield module
    finally:
        for m, momentum in zip(layers, previous):
            m.momentum = momentum


def perturbed_pass_stats(module: nn.Module, mode: str):
    """The context for a perturbed pass under ``mode``, one of ``PERTURBED_BN``."""
    check_choice("perturbed_bn", mode, PERTURBED_BN)
    return frozen_running_stats(module) if mode == "frozen" else zero_momentum(module)


def updates_running_stats(module: nn.Module) -> bool:
    """Whether a forward of ``module`` changes running statistics: a BatchNorm layer in
    training mode that tracks them with a momentum other than 0 (``None``, the cumulative
    average, counts)."""
    return (isinstance(module, _BatchNorm) and module.training and module.track_running_stats
            and module.running_mean is not None and module.momentum != 0)


@contextlib.contextmanager
def refuse_running_stat_updates(what: str):
    """Within the block, the forward of any module for which ``updates_running_stats`` holds
    raises a ValueError (before the layer runs: its buffers stay as they were). ``what``
    names the pass in the message. The hook is process-wide, for the block only."""
    def hook(module, args):
        if updates_running_stats(module):
            raise ValueError(
                f"{what} ran {module!r} in training mode, which would update its running "
                "statistics from a pass that is not a step of the data: pass model=<the module "
                "the closure evaluates> so that the optimizer freezes them (perturbed_bn), or "
                "model=None to let every pass update them")

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """Within the block ``module`` is in eval mode; each submodule's own ``training``
    flag is restored afterwards (so deliberately frozen submodules stay frozen)."""
    modules = list(module.modules())
    previous = [m.training for m in modules]
    try:
        module.eval()
        yield module
    finally:
        for m, flag in zip(modules, previous):
            m.training = flag
