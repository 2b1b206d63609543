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
"""
from __future__ import annotations

import contextlib

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._checks import check_choice

__all__ = ["frozen_running_stats", "zero_momentum", "eval_mode", "PERTURBED_BN", "perturbed_pass_stats"]

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
