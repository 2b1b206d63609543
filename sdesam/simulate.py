"""One trajectory per seed, with metrics on x (d,) recorded as tidy rows: the single-trajectory
view. (For expectations over many trajectories, ``sdesam.estimate``.)

A record is one row ``(dynamics, seed, step, time, metric, value)`` with time = step·η
(the SDE time). Records stream to a CSV file as they are produced, next to a JSON file
``<name>.json`` holding the problem's and every dynamics' complete configuration (rule and
its hyperparameters included). Writing into an existing file resumes it by key: rows whose
(dynamics, seed, step, metric) are already there are not written again, and runs whose
rows are all there are skipped; a file written by another configuration is refused with
a ValueError naming it. A run can also checkpoint its state atomically after every
recorded step and resume exactly (all randomness of step k is keyed by (seed, k)).
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from ._checks import check_int
from ._progress import progress as progress_bar
from .atomic import atomic_open, atomic_write_text
from .dynamics import Dynamics, RunState
from .montecarlo import labelled

__all__ = ["RECORD_FIELDS", "RecordWriter", "read_records", "record_steps", "run_trajectory", "simulate",
           "records_config_path"]

RECORD_FIELDS = ("dynamics", "seed", "step", "time", "metric", "value")
_FORMAT = "sdesam.records/1"

Metric = Callable[[Tensor], float]
# ``metrics`` arguments: a mapping name → Metric, or one callable x → {name: value}
# (for metrics that share work, e.g. ``sdesam.metrics.ClassificationMetrics``).
Metrics = Mapping[str, Metric] | Callable[[Tensor], Mapping[str, float]]


def records_config_path(path) -> Path:
    """The configuration file beside a records CSV: ``records.csv`` → ``records.csv.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _key(row) -> tuple:
    return (str(row["dynamics"]), int(row["seed"]), int(row["step"]), str(row["metric"]))


class RecordWriter:
    """Append tidy records to a CSV file, flushing after every write; never a duplicate key.

    Args:
        path: the CSV file (its directory is created).
        config: what produced the records (JSON-serialisable), kept in ``<path>.json``. When
            the CSV already holds records, ``config`` must equal the saved one (else
            ValueError naming the file); None skips the check (and writes no JSON file).

    ``done`` holds the keys (dynamics, seed, step, metric) already in the file; ``write``
    skips rows with those keys. Use as a context manager or call ``close()``.
    """

    def __init__(self, path: str | os.PathLike, config: dict | None = None):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise ValueError(f"records file {str(self.path)!r} is a directory")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cfg_path = records_config_path(self.path)
        existing = self.path.exists() and self.path.stat().st_size > 0
        if config is not None:
            config = json.loads(json.dumps(config, default=str))
            if existing:
                if not cfg_path.exists():
                    raise ValueError(f"{self.path} holds records without their configuration file "
                                     f"{cfg_path.name}: write to another file or delete it")
                saved = json.loads(cfg_path.read_text())
                if saved != config:
                    diff = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
                    raise ValueError(f"{self.path} holds records of another configuration (see {cfg_path.name}; "
                                     f"differs in {', '.join(diff)}): write to another file or delete both")
            else:
                atomic_write_text(cfg_path, json.dumps(config, indent=1) + "\n")
        self.done = {_key(r) for r in read_records(self.path)} if existing else set()
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=RECORD_FIELDS)
        if not existing:
            self._writer.writeheader()
            self._file.flush()

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
            key = _key(row)
            if key in self.done:
                continue
            self.done.add(key)
            self._writer.writerow({k: row[k] for k in RECORD_FIELDS})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read a records CSV back, with ``seed``/``step`` as int and ``time``/``value`` as float."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["seed"], r["step"] = int(r["seed"]), int(r["step"])
        r["time"], r["value"] = float(r["time"]), float(r["value"])
    return rows


def record_steps(steps: int, every: int) -> list[int]:
    """0, every, 2·every, …, and ``steps`` itself."""
    steps, every = check_int("steps", steps, 1), check_int("record_every", every, 1)
    return sorted(set(range(0, steps + 1, every)) | {steps})


def _measure(metrics, x: Tensor) -> dict[str, float]:
    if isinstance(metrics, Mapping):
        return {name: float(fn(x)) for name, fn in metrics.items()}
    return {name: float(v) for name, v in metrics(x).items()}


def _atomic_save(obj, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def run_trajectory(dynamics: Dynamics, *, steps: Sequence[int], metrics: Metrics,
                   seed: int = 0, x0: Tensor | None = None, writer: RecordWriter | None = None,
                   checkpoint: str | os.PathLike | None = None,
                   on_record: Callable[[int], None] | None = None, label: str | None = None) -> list[dict]:
    """Run one trajectory of ``dynamics`` and evaluate ``metrics`` at ``steps``.

    Args:
        dynamics: any ``Dynamics`` (discrete integrator or SDE).
        steps: the steps k at which to record (sorted, ≥ 0); the run ends at the last.
        metrics: name → function of x (d,) returning a float, or one function of x
            returning a dict name → value.
        seed: the run's seed (all randomness derives from it).
        x0: initial point (d,); default the problem's x₀.
        writer: where records stream as they are produced.
        checkpoint: file for an atomic checkpoint after every recorded step; if it
            exists the run resumes from it (loaded with ``weights_only=True``).
        on_record: called with the step after each recording (progress bars).
        label: the ``dynamics`` column of the records (default ``dynamics.name``).

    Returns the records of this run (including those restored from a checkpoint).
    """
    steps = sorted(set(int(s) for s in steps))
    if not steps or steps[0] < 0:
        raise ValueError(f"steps must be non-empty and >= 0, got {steps[:5]}")
    ckpt = Path(checkpoint) if checkpoint is not None else None
    records: list[dict] = []
    if ckpt is not None and ckpt.exists():
        saved = torch.load(ckpt, weights_only=True)
        if saved["config"] != dynamics.config() or saved["state"]["seed"] != seed:
            raise ValueError(f"checkpoint {ckpt} was written by another configuration or seed; "
                             "delete it or use another output directory")
        state = RunState.from_state_dict(saved["state"])
        records = list(saved["records"])
    else:
        state = dynamics.init_state(x0, seed)
    done = {r["step"] for r in records}
    with torch.no_grad():
        for k in steps:
            if k < state.step or k in done:
                continue                                     # recorded before the checkpoint
            dynamics.advance(state, k - state.step)
            values = _measure(metrics, state.x[0])
            rows = [{"dynamics": label or dynamics.name, "seed": seed, "step": k, "time": k * dynamics.eta,
                     "metric": name, "value": value} for name, value in values.items()]
            records.extend(rows)
            if writer is not None:
                writer.write(rows)
            if ckpt is not None:
                _atomic_save({"config": dynamics.config(), "state": state.state_dict(), "records": records}, ckpt)
            if on_record is not None:
                on_record(k)
    return records


def simulate(dynamics, *, steps: int, record_every: int, metrics: Metrics, seeds: Sequence[int] = (0,),
             x0: Tensor | None = None, out: str | os.PathLike | None = None, progress: bool = True) -> list[dict]:
    """Run every dynamics from the same x₀ for ``steps`` steps, one trajectory per seed.

    Args:
        dynamics: a sequence of ``Dynamics`` (labelled by their distinct names) or a mapping
            {label: Dynamics}.
        steps, record_every: records at steps 0, record_every, …, steps (time = step·η).
        metrics: name → function of x (d,) returning a float, or one function x → dict.
        seeds: one trajectory per seed (integers ≥ 0, distinct).
        x0: the start (d,), default the problem's.
        out: a CSV path; records stream there as produced, with the configuration in
            ``<out>.json``; rerunning into the same file resumes by key (see the module).
        progress: a progress bar (lines in a log).

    Returns all records of the requested runs (those already in ``out`` included).
    """
    runs = labelled(dynamics)
    seeds = [check_int("seed", s, 0) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers >= 0, at least one, got {list(seeds)}")
    rec_steps = record_steps(steps, record_every)
    problem = next(iter(runs.values())).problem
    if x0 is not None and (not isinstance(x0, Tensor) or x0.shape != (problem.dim,)):
        raise ValueError(f"x0 must have shape (d,) = ({problem.dim},)")
    writer = None
    previous: list[dict] = []
    if out is not None:
        config = {"format": _FORMAT, "problem": problem.config(),
                  "dynamics": {label: d.config() for label, d in runs.items()},
                  "x0": "problem.x0" if x0 is None else [float(v) for v in x0.flatten()[:8]] + ["…"]}
        writer = RecordWriter(out, config)
        previous = read_records(out)
    bar = progress_bar(len(runs) * len(seeds) * len(rec_steps), desc="simulate", unit="record", enabled=progress)
    records: list[dict] = []
    try:
        for label, dyn in runs.items():
            for seed in seeds:
                have = [r for r in previous if r["dynamics"] == label and r["seed"] == seed]
                if have and {r["step"] for r in have} >= set(rec_steps):
                    records += [r for r in have if r["step"] in rec_steps]
                    bar.update(len(rec_steps))
                    continue
                bar.set_postfix_str(f"{label} seed {seed}")
                records += run_trajectory(dyn, steps=rec_steps, metrics=metrics, seed=seed, x0=x0, writer=writer,
                                          on_record=lambda k: bar.update(1), label=label)
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    return records
