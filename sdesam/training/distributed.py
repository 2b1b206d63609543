"""Data parallelism for the trainer: ``torchrun`` environment → process group, device.

Launch N processes per node with ``torchrun --nproc_per_node=N -m sdesam.train ...``
(multi-node: ``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``; the run directory must
be on a shared filesystem). torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``;
the trainer then joins the default process group (NCCL on CUDA, gloo on CPU) unless the
caller already created one, and uses ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "setup_distributed", "resolve_device", "all_reduce_sum", "barrier"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in data-parallel training.

    Attributes:
        rank, world_size, local_rank: as torchrun defines them (0, 1, 0 without DDP).
        owns_group: whether the trainer created the process group (and must destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available (``cuda:LOCAL_RANK``), else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    """Join (or reuse) the default process group when ``WORLD_SIZE`` > 1."""
    if dist.is_available() and dist.is_initialized():
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return info, resolve_device(device_name, info.local_rank)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(), resolve_device(device_name)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but torch.distributed is not available")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name, local_rank)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True), device


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over processes in place (no-op for one process)."""
    if info.world_size > 1:
        dist.all_reduce(t)
    return t


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()
