"""Table 1 (test accuracy, paper Sec. 6.2): run or collect a grid, write Markdown and CSV.

    python -m figures.table1 --quick                      # small real grid on this CPU
    python -m figures.table1 --datasets cifar10 cifar100 --models resnet18 wrn28_10 \\
        --methods sgd sam eigen_sam --seeds 0 1 2 --jobs 1   # the paper's grid (GPUs)
    python -m figures.table1 --collect-only ...           # only tabulate finished runs

Each cell (dataset × model × method × seed) is one ``sdesam.training.train`` run with
the Table 1 preset (``sdesam.training.presets``) in ``OUT/{dataset}-{model}-{method}-s{seed}``.
A cell whose ``final.json`` exists is collected, not rerun (after checking that it was
produced by the cell's configuration); an interrupted one is resumed from its
checkpoint. ``--out`` may hold cells of several grids: each cell is checked on its own,
so a grid can be run in parts (e.g. one seed per machine) and tabulated whole. Each
table entry is the final test accuracy (%) over the seeds: mean ± 95% confidence
half-width t_{0.975, n−1} · s / √n (Student t, s the sample standard deviation), with
the number of seeds n; the best mean of each architecture × dataset group is bold. The
table is written to ``OUT/table1.md`` and ``OUT/table1.csv``.

``--quick`` (documented in docs/training.md): Fashion-MNIST, ResNet-18 of width 8
(176k parameters), a fixed 3,000-image training subset and 1,000 test images, batch
128, 6 epochs (SGD 12), Eigen-SAM p = 20, seeds 0, 1, 2 — ``presets.QUICK``.

``--jobs N`` trains N cells at a time in separate processes with ``cpu_count // N``
threads each (unless ``--threads``). ``--set KEY=VALUE`` overrides a ``TrainConfig``
field in every cell (not those a cell's place in the grid or a flag sets).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from sdesam.atomic import atomic_write_text
from sdesam.cli import prog_name
from sdesam.data import check_data_dir
from sdesam.experiment import add_config_arguments, config_from_args
from sdesam.parallel import resolve_device
from sdesam.training import TrainConfig, table1, table1_quick, train
from sdesam.training.files import FINAL_FILE, read_json
from sdesam.training.presets import QUICK, TABLE1_DATASETS, TABLE1_METHODS, TABLE1_MODELS

from .runs import DATASET_LABELS, METHOD_LABELS, MODEL_LABELS, RUN_FIELDS, check_distinct, check_overrides, t_interval

__all__ = ["Grid", "cell_configs", "collect", "summarize", "to_markdown", "to_csv", "run_grid", "main",
           "t_interval"]


@dataclass
class Grid:
    """The cells of a Table 1 grid and the ``TrainConfig`` fields every cell takes.

    Attributes:
        datasets, models, methods, seeds: the grid (every combination is a cell).
        overrides: further ``TrainConfig`` fields of every cell (``--set KEY=VALUE``).
    """

    datasets: tuple = TABLE1_DATASETS
    models: tuple = TABLE1_MODELS
    methods: tuple = TABLE1_METHODS
    seeds: tuple = (0, 1, 2)
    overrides: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "Grid":
        """The ``--quick`` grid: ``presets.QUICK``'s dataset and model."""
        return cls(datasets=(QUICK["dataset"],), models=(QUICK["model"],))


def cell_configs(datasets, models, methods, seeds, runs_dir, quick=False, overrides=None) -> list[TrainConfig]:
    """One ``TrainConfig`` per grid cell, with ``resume=True`` and out_dir under runs_dir."""
    overrides = dict(overrides or {})
    configs = []
    for dataset in datasets:
        for model in models:
            for method in methods:
                for seed in seeds:
                    out = os.fspath(Path(runs_dir) / f"{dataset}-{model}-{method}-s{seed}")
                    settings = dict(overrides, out_dir=out, resume=True)
                    if quick:
                        cfg = table1_quick(method, seed, **settings)
                    else:
                        cfg = table1(dataset, model, method, seed, **settings)
                    configs.append(cfg)
    return configs


def collect(configs) -> list[dict]:
    """Rows (dataset, model, method, seed, test_accuracy, …) of the finished cells; a
    finished run must have been produced by the cell's configuration (up to
    ``RUN_FIELDS``)."""
    rows = []
    for cfg in configs:
        path = Path(cfg.out_dir) / FINAL_FILE
        if not path.exists():
            continue
        final = read_json(path)
        diffs = TrainConfig.from_dict(final["config"]).differences(cfg, ignore=RUN_FIELDS)
        if diffs:
            raise ValueError(f"{path} was produced by a different configuration: {diffs}")
        rows.append({"dataset": cfg.dataset, "model": cfg.model, "method": cfg.method, "seed": cfg.seed,
                     "test_accuracy": final["test_accuracy"], "test_loss": final["test_loss"],
                     "train_loss": final["train_loss"], "wall_time_s": final["wall_time_s"],
                     "out_dir": cfg.out_dir})
    return rows


def summarize(rows) -> dict:
    """{(model, method, dataset): {"mean", "half_width", "n", "std", "values"}} in % accuracy."""
    groups = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["dataset"]), []).append(
            (r["seed"], 100.0 * r["test_accuracy"]))
    summary = {}
    for key, pairs in groups.items():
        values = [v for _, v in sorted(pairs)]
        mean, half = t_interval(values)
        summary[key] = {"mean": mean, "half_width": half, "n": len(values),
                        "std": statistics.stdev(values) if len(values) > 1 else None,
                        "seeds": [s for s, _ in sorted(pairs)], "values": values}
    return summary


def to_markdown(summary, datasets, models, methods, decimals: int = 1) -> str:
    """Table 1's layout: one row per architecture × method, one column per dataset."""
    head = "| Architecture | Method | " + " | ".join(DATASET_LABELS.get(d, d) for d in datasets) + " |"
    lines = [head, "|" + "---|" * (2 + len(datasets))]
    best = {}
    for model in models:
        for dataset in datasets:
            means = [summary[(model, m, dataset)]["mean"] for m in methods if (model, m, dataset) in summary]
            if means:
                best[(model, dataset)] = round(max(means), decimals)
    for model in models:
        for i, method in enumerate(methods):
            cells = []
            for dataset in datasets:
                s = summary.get((model, method, dataset))
                if s is None:
                    cells.append("—")
                    continue
                mean = f"{s['mean']:.{decimals}f}"
                if round(s["mean"], decimals) == best[(model, dataset)] and len(methods) > 1:
                    mean = f"**{mean}**"
                half = "n/a" if s["half_width"] is None else f"{s['half_width']:.{decimals}f}"
                cells.append(f"{mean} ± {half} (n={s['n']})")
            label = MODEL_LABELS.get(model, model) if i == 0 else ""
            lines.append(f"| {label} | {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(summary) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["dataset", "model", "method", "n_seeds", "mean_accuracy_pct", "ci95_half_width_pct",
                     "std_pct", "seeds", "accuracies_pct"])
    for (model, method, dataset), s in sorted(summary.items()):
        writer.writerow([dataset, model, method, s["n"], f"{s['mean']:.4f}",
                         "" if s["half_width"] is None else f"{s['half_width']:.4f}",
                         "" if s["std"] is None else f"{s['std']:.4f}",
                         " ".join(map(str, s["seeds"])), " ".join(f"{v:.4f}" for v in s["values"])])
    return out.getvalue()


def _run_cell(config_dict: dict, threads: int | None) -> str:
    cfg = TrainConfig.from_dict(config_dict)
    if threads is not None and cfg.threads is None:
        cfg = cfg.replace(threads=threads)
    train(cfg)
    return cfg.out_dir


def run_grid(configs, jobs: int = 1) -> None:
    """Train the unfinished cells, ``jobs`` at a time."""
    todo = [c for c in configs if not (Path(c.out_dir) / FINAL_FILE).exists()]
    if not todo:
        return
    if jobs == 1:
        for cfg in todo:
            print(f"training {cfg.out_dir}", file=sys.stderr, flush=True)
            train(cfg)
        return
    threads = max(1, (os.cpu_count() or 1) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_run_cell, cfg.replace(progress=False).to_dict(), threads) for cfg in todo]
        for future in futures:
            print(f"finished {future.result()}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog_name("python -m figures.table1"), description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="the small CPU grid (see above); its datasets and models are fixed")
    ap.add_argument("--out", type=Path, default=None,
                    help="directory of the cells and the table (default runs/table1; runs/table1-quick)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    ap.add_argument("--data-dir", default=None, help="data directory (default $SDESAM_DATA or ~/.cache/sdesam)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads of every cell (default: torch's; with --jobs N, cpu_count // N)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(ap, Grid, Grid())
    ap.add_argument("--collect-only", action="store_true", help="do not train; tabulate finished runs")
    ap.add_argument("--jobs", type=int, default=1, help="cells trained at a time (processes)")
    ap.add_argument("--decimals", type=int, default=None, help="decimals shown (default 1; quick 2)")
    return ap


def _grid(args) -> Grid:
    """The grid the flags describe, refused (ValueError naming the option) before anything
    runs when a flag contradicts another or no cell could train."""
    grid = config_from_args(args, Grid.quick() if args.quick else Grid())
    if args.quick and (grid.datasets, grid.models) != (Grid.quick().datasets, Grid.quick().models):
        raise ValueError("--quick is the Fashion-MNIST / ResNet-18 grid; drop --datasets/--models")
    for name in ("datasets", "models", "methods", "seeds"):
        check_distinct(f"--{name}", getattr(grid, name))
    check_overrides(grid.overrides, {"dataset": "--datasets", "model": "--models", "method": "--methods",
                                     "seed": "--seeds"})
    return grid


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.collect_only and args.jobs != 1:
        raise ValueError("--jobs has no effect with --collect-only (nothing is trained)")
    if args.decimals is not None and args.decimals < 0:
        raise ValueError(f"--decimals must be >= 0, got {args.decimals}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    grid = _grid(args)
    out = args.out or Path("runs") / ("table1-quick" if args.quick else "table1")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    check_data_dir(args.data_dir)
    resolve_device(args.device)                 # refuses a device this machine lacks; cells resolve it again
    settings = dict(grid.overrides, data_dir=args.data_dir, device=args.device, threads=args.threads,
                    progress=not args.no_progress)
    configs = cell_configs(grid.datasets, grid.models, grid.methods, grid.seeds, out, args.quick, settings)
    t0 = time.perf_counter()
    if not args.collect_only:
        run_grid(configs, args.jobs)
    elapsed = time.perf_counter() - t0
    summary = summarize(collect(configs))
    decimals = args.decimals if args.decimals is not None else (2 if args.quick else 1)
    table = to_markdown(summary, grid.datasets, grid.models, grid.methods, decimals)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "table1.md", table)
    atomic_write_text(out / "table1.csv", to_csv(summary))
    print(table, end="")
    print(f"({len(configs)} cells, {sum(s['n'] for s in summary.values())} finished; "
          f"mean ± 95% CI half-width over seeds (Student t), test accuracy %; "
          f"{elapsed:.0f} s; written to {out / 'table1.md'} and {out / 'table1.csv'})")
    return 0


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.table1")
