"""Hooks into the training loop, for measurements that need the live run.

Subclass ``Callback`` and override what you need; pass instances to ``train(config,
callbacks=[...])``. Every hook receives a ``CallbackContext``. A hook may return a
dict of JSON-serialisable values:

- ``on_step`` (every ``every_steps`` steps, *before* the step, at parameters x_k, with
  the minibatch γ_k that step k is about to use): the dict is appended to
  ``steps.jsonl`` as ``{"step": k, "epoch": e, "callback": name, **dict}``;
- ``on_epoch_end`` (after the test evaluation): merged into that epoch's line of
  ``metrics.jsonl``;
- ``on_train_end``: merged into ``final.json``.

Records are kept in the checkpoint, so a resumed run rewrites them exactly (a hook
that ran after the last checkpoint runs again after resuming). Under DDP hooks run on
every process (they may use collectives); only rank 0's dicts are written.

Example — the alignment of SAM's perturbation with the top Hessian eigenvector every
100 steps (paper Fig. 1) needs at step k: ``ctx.model``, ``ctx.batch``, ``ctx.loss_fn``
and ``ctx.optimizer.perturbation(g)`` for the ε the optimizer would use.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = ["Callback", "CallbackContext"]


@dataclass
class CallbackContext:
    """What a hook sees.

    Attributes:
        config: the run's ``TrainConfig``.
        model: the network (not DDP-wrapped), in training mode during ``on_step``.
        optimizer: the run's optimizer (``sdesam.optim`` wrapper, or ``torch.optim.SGD``).
        step: ``on_step``: index k of the step about to run (0-based); otherwise the
            number of completed steps.
        epoch: the 0-based epoch being run (``on_step``) or just completed.
        batch: ``(inputs, labels)`` ready for ``model`` (normalised, augmented, resized,
            flattened for MLPs) — ``on_step`` only, else None.
        loss_fn: ``loss_fn(logits, labels) -> mean loss`` (cross-entropy, float32).
        device: where model and data live.
        out_dir: the run directory (write extra files here).
        rank, world_size: data-parallel position.
        metrics: the epoch's metrics (``on_epoch_end``) or the final ones
            (``on_train_end``); None in ``on_step``.
        model_inputs: ``ImageDataset → iterator of (inputs, labels)``: model-ready
            batches of a whole dataset, in order, no augmentation (e.g. a fixed subset
            for Hessian measurements); use ``train_data`` / ``test_data``.
        train_data, test_data: the ``ImageDataset``s of the run (after subsetting).
    """

    config: Any
    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: int
    epoch: int
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    device: torch.device
    out_dir: Path
    rank: int
    world_size: int
    model_inputs: Callable[..., Iterator[tuple[Tensor, Tensor]]]
    train_data: Any
    test_data: Any
    batch: tuple[Tensor, Tensor] | None = None
    metrics: dict | None = field(default=None)


class Callback:
    """Base class of training hooks; the defaults do nothing and record nothing.

    Attributes:
        every_steps: call ``on_step`` before steps k = 0, every_steps, 2·every_steps, …
            (None: never).
        name: label in ``steps.jsonl`` (default: the class name).
    """

    every_steps: int | None = None

    @property
    def name(self) -> str:
        return type(self).__name__

    def on_step(self, ctx: CallbackContext) -> dict | None:
        return None

    def on_epoch_end(self, ctx: CallbackContext) -> dict | None:
        return None

    def on_train_end(self, ctx: CallbackContext) -> dict | None:
        return None
