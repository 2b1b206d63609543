"""Many independent runs of one dynamics, reduced on the fly to per-block statistics.

Layout (fixed by the configuration, never by the number of processes):

    M = n_chunks · chunk_size trajectories, chunk c = one vectorised state of
    ``chunk_size`` trajectories seeded with ``derived_seed(*key, c)``;
    each chunk is cut into ``blocks_per_chunk`` blocks of consecutive trajectories.

A chunk is the unit of work and of randomness: its result depends only on (key, c)
and the configuration, so chunks may run in any order on any process (round-robin
over ranks, ``validation.distributed``) and are combined in chunk order. A block is
the unit of the batch-means bootstrap (``validation.stats``): trajectories of a state
are i.i.d. (every trajectory draws its own minibatches and Gaussian increments), so
block means are i.i.d. too.

Nothing of a trajectory is kept except, at each recorded step k and for each test
function g, the block sums Σ g(x_k) and Σ g(x_k)² — arrays of shape
(n_blocks, n_records, n_tests) in float64, summed with numpy (deterministic, thread
count independent).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from sdesam._checks import check_int
from sdesam.dynamics import Dynamics
from sdesam.problem import derived_seed

__all__ = ["ChunkPlan", "BlockStats", "TestFunctions", "standard_tests", "run_chunk", "run_chunks"]

#: g(x) for x of shape (M, d) → (M,).
TestFunction = Callable[[Tensor], Tensor]
TestFunctions = Mapping[str, TestFunction]


def standard_tests(loss: TestFunction, dim: int, coordinate: int) -> dict:
    """The test functions g of the weak-error experiment, x (M, d) → (M,): ``loss``,
    ‖x‖² and the coordinate x[coordinate]."""
    if not -dim <= coordinate < dim:
        raise ValueError(f"coordinate must index one of d={dim} parameters, got {coordinate}")
    return {"loss": loss, "sqnorm": lambda x: (x * x).sum(-1), "coord": lambda x: x[:, coordinate]}


@dataclass(frozen=True)
class ChunkPlan:
    """How M trajectories are cut into chunks (work, seeds) and blocks (bootstrap)."""

    n_chunks: int
    chunk_size: int
    blocks_per_chunk: int

    def __post_init__(self):
        check_int("n_chunks", self.n_chunks, 1)
        check_int("chunk_size", self.chunk_size, 1)
        check_int("blocks_per_chunk", self.blocks_per_chunk, 1)
        if self.chunk_size % self.blocks_per_chunk:
            raise ValueError(f"chunk_size={self.chunk_size} must be a multiple of "
                             f"blocks_per_chunk={self.blocks_per_chunk}")

    @property
    def trajectories(self) -> int:
        return self.n_chunks * self.chunk_size

    @property
    def block_size(self) -> int:
        return self.chunk_size // self.blocks_per_chunk

    @property
    def n_blocks(self) -> int:
        return self.n_chunks * self.blocks_per_chunk

    def config(self) -> dict:
        return {"n_chunks": self.n_chunks, "chunk_size": self.chunk_size,
                "blocks_per_chunk": self.blocks_per_chunk, "block_size": self.block_size,
                "trajectories": self.trajectories}


@dataclass
class BlockStats:
    """Block sums of the test functions at the recorded steps.

    Attributes:
        sums: Σ_{trajectories in block} g(x_k), shape (n_blocks, n_records, n_tests).
        sumsq: Σ g(x_k)², same shape.
        block_size: trajectories per block (equal for all blocks).
        steps: the recorded steps k (n_records,).
        tests: test-function names (n_tests,).
    """

    sums: np.ndarray
    sumsq: np.ndarray
    block_size: int
    steps: tuple[int, ...]
    tests: tuple[str, ...]

    @property
    def n_blocks(self) -> int:
        return self.sums.shape[0]

    @property
    def trajectories(self) -> int:
        return self.n_blocks * self.block_size

    def block_means(self) -> np.ndarray:
        """(n_blocks, n_records, n_tests)."""
        return self.sums / self.block_size

    def mean(self) -> np.ndarray:
        """Monte Carlo estimate of E g(x_k), (n_records, n_tests)."""
        return self.sums.sum(0) / self.trajectories

    def variance(self) -> np.ndarray:
        """Unbiased sample variance of g(x_k) over all trajectories, (n_records, n_tests)."""
        M = self.trajectories
        m = self.mean()
        return np.maximum(self.sumsq.sum(0) / M - m * m, 0.0) * (M / max(M - 1, 1))

    def standard_error(self) -> np.ndarray:
        """Standard error of ``mean()``, (n_records, n_tests)."""
        return np.sqrt(self.variance() / self.trajectories)

    @classmethod
    def concatenate(cls, parts: Sequence["BlockStats"]) -> "BlockStats":
        """Blocks of several parts, in the given order."""
        first = parts[0]
        for p in parts[1:]:
            if p.block_size != first.block_size or p.steps != first.steps or p.tests != first.tests:
                raise ValueError("cannot concatenate BlockStats of different layouts")
        return cls(np.concatenate([p.sums for p in parts]), np.concatenate([p.sumsq for p in parts]),
                   first.block_size, first.steps, first.tests)

    def to_dict(self) -> dict:
        return {"sums": self.sums, "sumsq": self.sumsq, "block_size": self.block_size,
                "steps": list(self.steps), "tests": list(self.tests)}


def run_chunk(dynamics: Dynamics, x0: Tensor, seed: int, *, chunk_size: int, blocks_per_chunk: int,
              record_steps: Sequence[int], tests: TestFunctions) -> BlockStats:
    """Run ``chunk_size`` trajectories of ``dynamics`` from x0 (d,) with one seed.

    Returns the block sums of every test function at every step of ``record_steps``
    (sorted, starting at ≥ 0); the run ends at the last recorded step.
    """
    steps = tuple(sorted(set(int(k) for k in record_steps)))
    names = tuple(tests)
    state = dynamics.init_state(x0.expand(chunk_size, x0.numel()), seed)
    bs = chunk_size // blocks_per_chunk
    sums = np.zeros((blocks_per_chunk, len(steps), len(names)))
    sumsq = np.zeros_like(sums)
    with torch.no_grad():
        for r, k in enumerate(steps):
            dynamics.advance(state, k - state.step)
            vals = np.stack([tests[n](state.x).double().cpu().numpy() for n in names], axis=-1)
            vals = vals.reshape(blocks_per_chunk, bs, len(names))
            sums[:, r] = vals.sum(1)
            sumsq[:, r] = (vals * vals).sum(1)
    return BlockStats(sums, sumsq, bs, steps, names)


def chunk_seed(key: Sequence[int], chunk: int) -> int:
    """The seed of chunk ``chunk`` of the run identified by ``key`` (a tuple of ints)."""
    return derived_seed(*key, chunk)


def run_chunks(dynamics: Dynamics, x0: Tensor, key: Sequence[int], plan: ChunkPlan, *,
               record_steps: Sequence[int], tests: TestFunctions, chunks: Sequence[int],
               on_chunk: Callable[[int], None] | None = None) -> dict[int, BlockStats]:
    """Run the given chunk indices of ``plan`` (a rank's share); returns {chunk: stats}."""
    out = {}
    for c in chunks:
        if not 0 <= c < plan.n_chunks:
            raise ValueError(f"chunk {c} outside 0..{plan.n_chunks - 1}")
        out[c] = run_chunk(dynamics, x0, chunk_seed(key, c), chunk_size=plan.chunk_size,
                           blocks_per_chunk=plan.blocks_per_chunk, record_steps=record_steps, tests=tests)
        if on_chunk is not None:
            on_chunk(c)
    return out
