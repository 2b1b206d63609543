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
"""
from __future__ import annotations

import contextlib

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["frozen_running_stats", "eval_mode"]


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
