"""Several processes: the ``torchrun`` environment → a process group, a device, and the few
collective operations sdesam needs.

Launch N processes per node with ``torchrun --nproc_per_node=N <module> ...`` (multi-node:
``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``; output directories on a shared
filesystem). torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; ``init_comm`` then
joins the default process group (NCCL on CUDA, gloo on CPU) unless one exists, and
resolves the device to ``cuda:LOCAL_RANK``. Without torchrun it is a single process.

Used by the Monte Carlo estimator (trajectory chunks c ≡ rank mod world size, gathered and
combined in chunk order: results bit-identical to one process) and by the trainer (DDP).
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Comm", "init_comm", "resolve_device", "check_device"]


def check_device(name) -> torch.device:
    """A ``torch.device`` for ``name`` (``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a device), or a
    ValueError that names the problem: an unknown device type, or CUDA (or a CUDA index)
    that this machine does not have."""
    if isinstance(name, torch.device):
        device = name
    else:
        try:
            device = torch.device(str(name))
        except RuntimeError:
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available on this machine (use cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_device(name, local_rank: int = 0) -> torch.device:
    """``"auto"`` → CUDA when available (``cuda:LOCAL_RANK``), else CPU; otherwise
    ``check_device(name)`` (a bare ``"cuda"`` becomes ``cuda:LOCAL_RANK``)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = check_device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


class Comm:
    """This process's place among the processes of one run (one process without torchrun).

    Attributes:
        rank, world_size, local_rank: as torchrun defines them (0, 1, 0 for one process).
        device: the process's device.
        backend: ``"gloo"``, ``"nccl"`` or None (one process).
        owns_group: whether ``init_comm`` created the process group (``close`` destroys it).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, device=None,
                 backend: str | None = None, owns_group: bool = False):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.backend, self.owns_group = backend, owns_group

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_chunks(self, n_chunks: int) -> list[int]:
        """Round-robin share of this rank: chunks rank, rank + W, rank + 2W, …"""
        return list(range(self.rank, n_chunks, self.world_size))

    def gather(self, mine: dict[Any, Any]) -> dict[Any, Any]:
        """Every rank's dict merged on every rank (keys must not collide)."""
        if not self.distributed:
            return dict(mine)
        parts: list[dict | None] = [None] * self.world_size
        dist.all_gather_object(parts, mine)
        merged = {}
        for p in parts:
            merged.update(p)
        return merged

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over processes in place (no-op for one process)."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_comm(device="cpu") -> Comm:
    """A ``Comm`` from torchrun's environment (joining or reusing the default process group),
    or a single-process one; ``device`` as ``resolve_device``."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return Comm(dist.get_rank(), dist.get_world_size(), local_rank, resolve_device(device, local_rank),
                    dist.get_backend())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Comm(device=resolve_device(device))
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but torch.distributed is not available")
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    return Comm(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend, owns_group=True)
