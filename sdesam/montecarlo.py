"""Monte Carlo expectations E g(x_k) ± standard error over many trajectories of any dynamics.

    est = sdesam.estimate({"sam": sam, "sde3": sde3}, tests={"loss": f, "sqnorm": sqnorm},
                          steps=100, record_every=10, trajectories=4096, out="runs/est")
    est.mean("sde3")            # (n_records, n_tests) means;  est.se("sde3") their SEs
    est.difference("sde3", "sam")    # E g(sde3) − E g(sam) with its SE

Layout (fixed by the configuration, never by the number of processes):

    M = n_chunks · chunk_size trajectories; chunk c is one vectorised state of
    ``chunk_size`` trajectories seeded with ``derived_seed(*key, c)``, cut into
    ``blocks_per_chunk`` blocks of consecutive trajectories.

A chunk is the unit of work, of randomness and of resumption: its result depends only on
(key, c) and the configuration, so chunks may run in any order on any process (c ≡ rank
mod world size under torchrun) and are combined in chunk order — the result is
bit-identical whatever the number of processes. All dynamics of one ``estimate`` call use
the same chunk seeds (common random numbers: they share their minibatch draws where their
sampling agrees, and their Brownian increments where their noise has the same shape), so
their differences are estimated with paired, lower-variance errors; independent runs are
separate calls with different ``seed`` keys. A block is the unit of the standard errors
and of the batch-means bootstrap: trajectories of a chunk are i.i.d. (antithetic pairs of
an SDE with ``antithetic=True`` are adjacent and never split by a block), so block means
are i.i.d.

Nothing of a trajectory is kept except, at each recorded step k and for each test
function g, the block sums Σ g(x_k) and Σ g(x_k)² — arrays of shape
(n_blocks, n_records, n_tests) in float64, summed with numpy (deterministic, independent
of the thread count).

Files (``out``, a directory): ``config.json`` (the problem's and every dynamics'
complete configuration, the tests, recorded steps, layout and seed), ``chunks/<label>/
<c>.npz`` (one atomic file per finished chunk), and ``estimates.csv`` — tidy rows
(dynamics, step, time, test, mean, se, trajectories), rewritten atomically after every
chunk. A rerun with the same configuration resumes from the finished chunks; another
configuration is refused with a ValueError naming ``config.json``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from ._checks import check_int
from ._progress import progress as progress_bar
from ._streams import derived_seed
from .atomic import atomic_open, atomic_write_text
from .dynamics import Dynamics
from .parallel import Comm

__all__ = ["ChunkPlan", "BlockStats", "Estimate", "estimate", "run_chunk", "chunk_seed", "standard_tests",
           "TestFunction", "ESTIMATE_FIELDS", "labelled", "check_tests"]

#: g(x) for x of shape (M, d) → (M,).
TestFunction = Callable[[Tensor], Tensor]
#: columns of estimates.csv
ESTIMATE_FIELDS = ("dynamics", "step", "time", "test", "mean", "se", "trajectories")
_FORMAT = "sdesam.estimate/1"


@dataclass(frozen=True)
class ChunkPlan:
    """How M trajectories are cut into chunks (work, seeds, resumption) and blocks (errors)."""

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

    @classmethod
    def for_trajectories(cls, trajectories: int, chunk_size: int | None = None,
                         blocks_per_chunk: int | None = None) -> "ChunkPlan":
        """The plan of ``trajectories`` = n_chunks · chunk_size (default chunk 1,024 or fewer,
        8 blocks per chunk or fewer)."""
        M = check_int("trajectories", trajectories, 2)
        size = check_int("chunk_size", chunk_size, 1) if chunk_size is not None else min(M, 1024)
        if M % size:
            raise ValueError(f"trajectories={M} must be a multiple of chunk_size={size}")
        blocks = blocks_per_chunk if blocks_per_chunk is not None else max(
            b for b in range(1, min(8, size) + 1) if size % b == 0)
        return cls(M // size, size, check_int("blocks_per_chunk", blocks, 1))

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
                "n_blocks": self.n_blocks, "trajectories": self.trajectories}


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
        """Sample variance of g(x_k) over all trajectories, (n_records, n_tests)."""
        M = self.trajectories
        m = self.mean()
        return np.maximum(self.sumsq.sum(0) / M - m * m, 0.0) * (M / max(M - 1, 1))

    def standard_error(self) -> np.ndarray:
        """Standard error of ``mean()`` from the spread of the block means (valid for any
        dependence within a block, e.g. antithetic pairs), (n_records, n_tests)."""
        bm = self.block_means()
        nb = bm.shape[0]
        if nb < 2:
            return np.full(bm.shape[1:], np.nan)
        return np.sqrt(bm.var(0, ddof=1) / nb)

    def naive_standard_error(self) -> np.ndarray:
        """√(Var g / M): the standard error if all M trajectories were independent."""
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

    def to_arrays(self) -> dict:
        return {"sums": self.sums, "sumsq": self.sumsq, "block_size": np.array(self.block_size),
                "steps": np.array(self.steps), "tests": np.array(self.tests)}

    @classmethod
    def from_arrays(cls, a) -> "BlockStats":
        return cls(np.array(a["sums"]), np.array(a["sumsq"]), int(a["block_size"]),
                   tuple(int(k) for k in a["steps"]), tuple(str(t) for t in a["tests"]))


def standard_tests(problem, coordinate: int = 0, eval_examples: Tensor | None = None) -> dict[str, TestFunction]:
    """The test functions of the weak-error experiments, each x (M, d) → (M,), batched over M:

    * ``loss``: the mean training loss f(x) (``problem.full_loss``); for a ``ModuleProblem``
      with ``eval_examples`` (a LongTensor of training indices), the mean loss over those
      examples, evaluated for all M points in the problem's batched blocks;
    * ``sqnorm``: ‖x‖²;
    * ``coord``: the coordinate x[coordinate].
    """
    dim = problem.dim
    if not -dim <= coordinate < dim:
        raise ValueError(f"coordinate must index one of d={dim} parameters, got {coordinate}")
    if eval_examples is not None:
        sub = problem.subproblem(eval_examples, int(eval_examples.numel()), name="evaluation subset")
        every = torch.arange(sub.n_train, device=problem.device)[None]

        def loss(x):
            return sub.loss(x, every)
    else:
        loss = problem.full_loss
    return {"loss": loss, "sqnorm": lambda x: (x * x).sum(-1), "coord": lambda x: x[:, coordinate]}


def check_tests(tests: Mapping[str, TestFunction]) -> dict[str, TestFunction]:
    if not isinstance(tests, Mapping) or not tests:
        raise ValueError("tests must be a non-empty mapping name → function x (M, d) → (M,)")
    for name, fn in tests.items():
        if not isinstance(name, str) or not name or not callable(fn):
            raise ValueError(f"tests must map names (str) to callables, got {name!r}: {fn!r}")
    return dict(tests)


def _evaluate(tests: Mapping[str, TestFunction], x: Tensor) -> np.ndarray:
    """(M, n_tests) float64 values of every test function at x (M, d)."""
    cols = []
    for name, fn in tests.items():
        with torch.no_grad():
            v = fn(x)
        if not isinstance(v, Tensor) or v.shape != (x.shape[0],):
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"test function {name!r} must return a tensor of shape (M,) = ({x.shape[0]},) "
                             f"for x of shape {tuple(x.shape)}, got {got}")
        cols.append(v.detach().double().cpu().numpy())
    return np.stack(cols, axis=-1)


def run_chunk(dynamics: Dynamics, x0: Tensor, seed: int, *, chunk_size: int, blocks_per_chunk: int,
              record_steps: Sequence[int], tests: Mapping[str, TestFunction]) -> BlockStats:
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
            vals = _evaluate(tests, state.x).reshape(blocks_per_chunk, bs, len(names))
            sums[:, r] = vals.sum(1)
            sumsq[:, r] = (vals * vals).sum(1)
    return BlockStats(sums, sumsq, bs, steps, names)


def chunk_seed(key: Sequence[int], chunk: int) -> int:
    """The seed of chunk ``chunk`` of the run identified by ``key`` (a tuple of ints)."""
    return derived_seed(*key, chunk)


def labelled(dynamics) -> dict[str, Dynamics]:
    """{label: dynamics} from one dynamics, a sequence (labelled by ``name``, which must then
    be distinct) or a mapping."""
    if isinstance(dynamics, Dynamics):
        dynamics = [dynamics]
    if isinstance(dynamics, Mapping):
        out = dict(dynamics)
    else:
        out = {}
        for d in dynamics:
            if not isinstance(d, Dynamics):
                raise ValueError(f"expected sdesam Dynamics, got {type(d).__name__}")
            if d.name in out:
                raise ValueError(f"two dynamics are both named {d.name!r} (configurations {out[d.name].config()} "
                                 f"and {d.config()}): pass a mapping {{label: dynamics}} to tell them apart")
            out[d.name] = d
    if not out:
        raise ValueError("no dynamics given")
    for label, d in out.items():
        if not isinstance(label, str) or not label or "/" in label:
            raise ValueError(f"dynamics labels must be non-empty strings without '/', got {label!r}")
        if not isinstance(d, Dynamics):
            raise ValueError(f"{label!r} is not a sdesam Dynamics but {type(d).__name__}")
    problems = {id(d.problem) for d in out.values()}
    if len(problems) > 1:
        raise ValueError("all dynamics of one estimate must share one problem")
    return out


def _record_steps(steps, record_every, record_at) -> tuple[int, ...]:
    if record_at is not None:
        ks = sorted(set(int(k) for k in record_at))
        if not ks or ks[0] < 0:
            raise ValueError(f"record_at must list steps >= 0, got {record_at!r}")
        return tuple(ks)
    steps = check_int("steps", steps, 1)
    every = check_int("record_every", record_every, 1)
    return tuple(sorted(set(range(0, steps + 1, every)) | {steps}))


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


class Estimate:
    """What ``estimate`` returns: per dynamics label, the block statistics of every test
    function at every recorded step, with means, standard errors and paired differences.

    Attributes:
        stats: {label: BlockStats}.
        configs: {label: the dynamics' ``config()``}.
        steps, tests: the recorded steps and test-function names.
        config: the whole configuration (what ``config.json`` holds).
        wall_s: {label: seconds spent in this call's chunks}.
    """

    def __init__(self, stats: dict[str, BlockStats], configs: dict[str, dict], etas: dict[str, float],
                 config: dict, wall_s: dict[str, float]):
        self.stats, self.configs, self.etas, self.config, self.wall_s = stats, configs, etas, config, wall_s
        first = next(iter(stats.values()))
        self.steps, self.tests = first.steps, first.tests

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.stats)

    @property
    def trajectories(self) -> int:
        return next(iter(self.stats.values())).trajectories

    def mean(self, label: str) -> np.ndarray:
        """E g(x_k), (n_records, n_tests)."""
        return self.stats[label].mean()

    def se(self, label: str) -> np.ndarray:
        """Standard errors of ``mean(label)`` (spread of the block means)."""
        return self.stats[label].standard_error()

    def difference(self, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        """(E g(a) − E g(b), its standard error), each (n_records, n_tests). The two share
        their random numbers block by block, so the error comes from the paired block
        differences (smaller than either error alone when the runs are correlated)."""
        d = self.stats[a].block_means() - self.stats[b].block_means()
        return d.mean(0), d.std(0, ddof=1) / math.sqrt(d.shape[0])

    def rows(self) -> list[dict]:
        """Tidy rows (``ESTIMATE_FIELDS``), one per (dynamics, step, test)."""
        out = []
        for label, st in self.stats.items():
            mean, se = st.mean(), st.standard_error()
            for r, k in enumerate(st.steps):
                for j, t in enumerate(st.tests):
                    out.append({"dynamics": label, "step": k, "time": k * self.etas[label], "test": t,
                                "mean": float(mean[r, j]), "se": float(se[r, j]), "trajectories": st.trajectories})
        return out


def _write_rows(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=ESTIMATE_FIELDS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _check_config(path: Path, config: dict) -> None:
    saved = json.loads(path.read_text())
    if saved != config:
        keys = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise ValueError(f"{path} holds an estimate of another configuration (differs in {', '.join(keys)}); "
                         "use another out= directory or delete it")


def estimate(dynamics, tests: Mapping[str, TestFunction], *, steps: int | None = None, record_every: int = 1,
             record_at: Sequence[int] | None = None, trajectories: int = 1024, chunk_size: int | None = None,
             blocks_per_chunk: int | None = None, seed: int | Sequence[int] = 0, x0: Tensor | None = None,
             out: str | Path | None = None, comm: Comm | None = None, progress: bool = False,
             on_chunk: Callable[[str, int], None] | None = None) -> Estimate:
    """E g(x_k) ± SE over ``trajectories`` independent trajectories of each dynamics.

    Args:
        dynamics: a ``Dynamics``, a sequence of them (labelled by their distinct ``name``) or
            a mapping {label: Dynamics}; all on one problem, all started at ``x0``.
        tests: {name: g} with g(x (M, d)) → (M,) evaluated on whole chunks at once
            (``standard_tests`` gives the loss, ‖x‖² and a coordinate).
        steps, record_every: record at 0, record_every, …, steps; or ``record_at`` (a list).
        trajectories: M = n_chunks · chunk_size.
        chunk_size: trajectories advanced together (one vectorised state; memory ∝ it).
        blocks_per_chunk: blocks per chunk for the standard errors (≥ 2 blocks in all).
        seed: an integer or a tuple of integers keying the chunks' seeds; every dynamics
            of the call uses the same ones (common random numbers).
        x0: the start (d,) (default the problem's x0).
        out: a directory for config.json, chunks/ and estimates.csv (resumable); None keeps
            everything in memory.
        comm: a ``sdesam.parallel.Comm`` to shard chunks over torchrun processes.
        progress: show progress (a bar on a terminal, lines in a log).
        on_chunk: called with (label, chunk) after each chunk this process runs.
    """
    runs = labelled(dynamics)
    tests = check_tests(tests)
    rec = _record_steps(steps, record_every, record_at)
    plan = ChunkPlan.for_trajectories(trajectories, chunk_size, blocks_per_chunk)
    if plan.n_blocks < 2:
        raise ValueError(f"{plan.trajectories} trajectories in {plan.n_blocks} block give no standard error: "
                         "use at least 2 blocks (blocks_per_chunk or more chunks)")
    for label, d in runs.items():
        if getattr(d, "antithetic", False) and plan.block_size % 2:
            raise ValueError(f"{label!r} pairs its trajectories (antithetic=True): the block size "
                             f"{plan.block_size} must be even")
    key = (int(seed),) if isinstance(seed, (int, np.integer)) else tuple(int(s) for s in seed)
    if any(k < 0 for k in key):
        raise ValueError(f"seed must be integers >= 0, got {seed!r}")
    problem = next(iter(runs.values())).problem
    start = problem.x0 if x0 is None else x0
    if not isinstance(start, Tensor) or start.shape != (problem.dim,):
        raise ValueError(f"x0 must have shape (d,) = ({problem.dim},), got "
                         f"{tuple(start.shape) if isinstance(start, Tensor) else type(start).__name__}")
    comm = comm or Comm()
    config = {"format": _FORMAT, "problem": problem.config(),
              "dynamics": {label: d.config() for label, d in runs.items()}, "tests": list(tests),
              "record_steps": list(rec), "plan": plan.config(), "seed": list(key),
              "x0": "problem.x0" if x0 is None else f"sha256:{_digest(start)}"}
    config = json.loads(json.dumps(config, default=str))
    directory = None if out is None else Path(out)
    if directory is not None:
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"out={str(directory)!r} exists and is not a directory")
        cfg_path = directory / "config.json"
        if cfg_path.exists():
            _check_config(cfg_path, config)
        comm.barrier()
        if comm.is_main:
            directory.mkdir(parents=True, exist_ok=True)
            if not cfg_path.exists():
                atomic_write_text(cfg_path, json.dumps(config, indent=1) + "\n")
        comm.barrier()
    mine = comm.my_chunks(plan.n_chunks)
    bar = progress_bar(len(runs) * len(mine), desc="estimate", unit="chunk", enabled=progress and comm.is_main)
    results: dict[str, dict[int, BlockStats]] = {label: {} for label in runs}
    wall = {label: 0.0 for label in runs}
    try:
        for label, dyn in runs.items():
            for c in mine:
                path = None if directory is None else directory / "chunks" / label / f"{c}.npz"
                if path is not None and path.exists():
                    with np.load(path) as a:
                        results[label][c] = BlockStats.from_arrays(a)
                else:
                    t0 = time.perf_counter()
                    results[label][c] = run_chunk(dyn, start, chunk_seed(key, c), chunk_size=plan.chunk_size,
                                                  blocks_per_chunk=plan.blocks_per_chunk, record_steps=rec,
                                                  tests=tests)
                    wall[label] += time.perf_counter() - t0
                    if path is not None:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        with atomic_open(path, "wb") as f:
                            np.savez(f, **results[label][c].to_arrays())
                        if comm.is_main and not comm.distributed:
                            _write_partial(directory, results, runs, plan)
                    if on_chunk is not None:
                        on_chunk(label, c)
                bar.set_postfix_str(label)
                bar.update(1)
    finally:
        bar.close()
    merged = {label: comm.gather(parts) for label, parts in results.items()}
    stats = {}
    for label, parts in merged.items():
        missing = [c for c in range(plan.n_chunks) if c not in parts]
        if missing:
            raise RuntimeError(f"chunks {missing[:5]} of {label!r} were run by no process")
        stats[label] = BlockStats.concatenate([parts[c] for c in range(plan.n_chunks)])
    result = Estimate(stats, config["dynamics"], {label: d.eta for label, d in runs.items()}, config, wall)
    if directory is not None and comm.is_main:
        _write_rows(directory / "estimates.csv", result.rows())
    return result


def _write_partial(directory: Path, results, runs, plan) -> None:
    """estimates.csv from the chunks finished so far (their trajectories column says how many)."""
    rows = []
    for label, parts in results.items():
        if not parts:
            continue
        st = BlockStats.concatenate([parts[c] for c in sorted(parts)])
        part = Estimate({label: st}, {}, {label: runs[label].eta}, {}, {})
        rows += part.rows()
    _write_rows(directory / "estimates.csv", rows)
