"""Run dynamics from one x₀ and record metrics as tidy records.

A record is one row ``(dynamics, seed, step, time, metric, value)`` with time = step·η
(the SDE time). Records stream to a CSV file as they are produced, and a run can
checkpoint its state atomically after every recorded step and resume exactly (all
randomness of step k is keyed by (seed, k)).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._checks import check_int
from .atomic import atomic_open
from .dynamics import Dynamics, RunState

__all__ = ["RECORD_FIELDS", "RecordWriter", "read_records", "record_steps", "run_trajectory", "simulate"]

RECORD_FIELDS = ("dynamics", "seed", "step", "time", "metric", "value")

Metric = Callable[[Tensor], float]
# ``metrics`` arguments: a mapping name → Metric, or one callable x → {name: value}
# (for metrics that share work, e.g. ``sdesam.metrics.ClassificationMetrics``).
Metrics = Mapping[str, Metric] | Callable[[Tensor], Mapping[str, float]]


class RecordWriter:
    """Append tidy records to a CSV file, flushing after every write.

    The header is written when the file is new or empty. Use as a context manager or
    call ``close()``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = open(self.path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=RECORD_FIELDS)
        if new:
            self._writer.writeheader()
            self._file.flush()

    def write(self, rows: Iterable[dict]) -> None:
        for row in rows:
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
                   on_record: Callable[[int], None] | None = None) -> list[dict]:
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
            rows = [{"dynamics": dynamics.name, "seed": seed, "step": k, "time": k * dynamics.eta,
                     "metric": name, "value": value} for name, value in values.items()]
            records.extend(rows)
            if writer is not None:
                writer.write(rows)
            if ckpt is not None:
                _atomic_save({"config": dynamics.config(), "state": state.state_dict(), "records": records}, ckpt)
            if on_record is not None:
                on_record(k)
    return records


def simulate(dynamics: Sequence[Dynamics], *, steps: int, record_every: int,
             metrics: Metrics, seeds: Sequence[int] = (0,), x0: Tensor | None = None,
             out: str | os.PathLike | None = None, progress: bool = True) -> list[dict]:
    """Run every dynamics from the same x₀ for ``steps`` steps, once per seed.

    Records at steps 0, record_every, …, steps (time = step·η) stream to ``out``
    (a CSV path) if given. Returns all records.
    """
    rec_steps = record_steps(steps, record_every)
    total = len(dynamics) * len(seeds) * len(rec_steps)
    bar = tqdm(total=total, desc="simulate", unit="record", disable=not progress)
    writer = RecordWriter(out) if out is not None else None
    records: list[dict] = []
    try:
        for dyn in dynamics:
            for seed in seeds:
                bar.set_postfix_str(f"{dyn.name} seed {seed}")
                records += run_trajectory(dyn, steps=rec_steps, metrics=metrics, seed=seed, x0=x0,
                                          writer=writer, on_record=lambda k: bar.update(1))
    finally:
        if writer is not None:
            writer.close()
        bar.close()
    return records
