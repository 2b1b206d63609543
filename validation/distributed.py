"""Sharding chunks of trajectories over processes with ``torch.distributed``.

Launched by ``torchrun --nproc_per_node=N -m validation.weak_error ...`` (which sets
RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT), every rank runs the chunks
c ≡ rank (mod world size), then all ranks gather every chunk's statistics and
combine them in chunk order. Each chunk's result depends only on its seed and the
configuration, so the combined statistics — and everything computed from them — are
bit-identical to a single-process run with the same seed (checked by
``tests/test_weak_error_distributed.py``). Backend: gloo on CPU, nccl on CUDA.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Comm", "init_comm"]


class Comm:
    """Rank, world size and an ordered all-gather; a single process when not launched."""

    def __init__(self, rank: int = 0, world_size: int = 1, backend: str | None = None):
        self.rank, self.world_size, self.backend = rank, world_size, backend

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def my_chunks(self, n_chunks: int) -> list[int]:
        """Round-robin share of this rank: chunks rank, rank + W, rank + 2W, …"""
        return list(range(self.rank, n_chunks, self.world_size))

    def gather_chunks(self, mine: dict[int, Any], n_chunks: int) -> list[Any]:
        """Every rank's {chunk: result} gathered on every rank, as a list in chunk order."""
        if self.distributed:
            parts: list[dict | None] = [None] * self.world_size
            dist.all_gather_object(parts, mine)
            merged = {}
            for p in parts:
                merged.update(p)
        else:
            merged = dict(mine)
        missing = [c for c in range(n_chunks) if c not in merged]
        if missing:
            raise RuntimeError(f"chunks {missing[:5]} were run by no rank")
        return [merged[c] for c in range(n_chunks)]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def init_comm(device: torch.device | str = "cpu") -> Comm:
    """A ``Comm`` from torchrun's environment, or a single-process one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Comm()
    device = torch.device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return Comm(dist.get_rank(), dist.get_world_size(), backend)
