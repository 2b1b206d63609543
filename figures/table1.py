"""Table 1 (test accuracy, paper Sec. 6.2): run or collect a grid, write Markdown and CSV.

    python -m figures.table1 --quick                      # small real grid on this CPU
    python -m figures.table1 --datasets cifar10 cifar100 --models resnet18 wrn28_10 \\
        --methods sgd sam eigen_sam --seeds 0 1 2 --jobs 1   # the paper's grid (GPUs)
    python -m figures.table1 --collect-only ...           # only tabulate finished runs

Each cell (dataset × model × method × seed) is one ``sdesam.training.train`` run with
the Table 1 preset (``sdesam.training.presets``) in ``RUNS_DIR/{dataset}-{model}-{method}-s{seed}``.
A cell whose ``final.json`` exists is collected, not rerun; an interrupted one is
resumed from its checkpoint. Each table entry is the final test accuracy (%) over the
seeds: mean ± 95% confidence half-width t_{0.975, n−1} · s / √n (Student t, s the sample
standard deviation), with the number of seeds n; the best mean of each architecture ×
dataset group is bold.

``--quick`` (documented in docs/training.md): Fashion-MNIST, ResNet-18 of width 8
(176k parameters), a fixed 3,000-image training subset and 1,000 test images, batch
128, 6 epochs (SGD 12), Eigen-SAM p = 20, seeds 0, 1, 2 — ``presets.QUICK``.

``--jobs N`` trains N cells at a time in separate processes with ``cpu_count // N``
threads each. ``--set KEY=VALUE`` overrides a ``TrainConfig`` field in every cell.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from scipy import stats

from sdesam.cli import key_value
from sdesam.training import RESUME_MUTABLE_FIELDS, TrainConfig, table1, table1_quick, train
from sdesam.training.files import FINAL_FILE, read_json
from sdesam.training.presets import TABLE1_DATASETS, TABLE1_METHODS, TABLE1_MODELS

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST",
                  "svhn": "SVHN"}
MODEL_LABELS = {"resnet18": "ResNet18", "resnet50": "ResNet50", "wrn28_10": "WideResNet-28-10"}
METHOD_LABELS = {"sgd": "SGD", "sam": "SAM", "eigen_sam": "Eigen-SAM", "usam": "USAM",
                 "reverse_sam": "Reverse-SAM", "egr": "EGR"}


def t_interval(values, level: float = 0.95) -> tuple[float, float | None]:
    """(mean, confidence half-width t_{(1+level)/2, n−1} · s / √n); half-width None for n < 2."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None
    return mean, float(stats.t.ppf((1 + level) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)


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


#: fields that say how a cell ran, not what it computes: ignored when matching finished runs
RUN_FIELDS = RESUME_MUTABLE_FIELDS + ("device",)


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the small CPU grid (see above)")
    ap.add_argument("--datasets", nargs="+", choices=TABLE1_DATASETS, default=None)
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--methods", nargs="+", default=list(TABLE1_METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--runs-dir", default=None, help="default runs/table1 (runs/table1-quick)")
    ap.add_argument("--out", default=None, help="output prefix, default RUNS_DIR/table1 (.md, .csv)")
    ap.add_argument("--collect-only", action="store_true", help="do not train; tabulate finished runs")
    ap.add_argument("--jobs", type=int, default=1, help="cells trained at a time (processes)")
    ap.add_argument("--set", dest="overrides", action="append", type=key_value, default=[],
                    metavar="KEY=VALUE", help="TrainConfig override for every cell (repeatable)")
    ap.add_argument("--decimals", type=int, default=None, help="decimals shown (default 1; quick 2)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    if args.decimals is not None and args.decimals < 0:
        raise SystemExit(f"--decimals must be >= 0, got {args.decimals}")
    tag = "table1-quick" if args.quick else "table1"
    datasets = args.datasets or (["fashion_mnist"] if args.quick else list(TABLE1_DATASETS))
    models = args.models or (["resnet18"] if args.quick else list(TABLE1_MODELS))
    if args.quick and (datasets != ["fashion_mnist"] or models != ["resnet18"]):
        raise SystemExit("--quick is the Fashion-MNIST / ResNet-18 grid; drop --datasets/--models")
    runs_dir = args.runs_dir or f"runs/{tag}"
    out = Path(args.out or Path(runs_dir) / "table1")
    try:
        configs = cell_configs(datasets, models, args.methods, args.seeds, runs_dir, args.quick,
                               dict(args.overrides))
    except (TypeError, ValueError) as err:
        raise SystemExit(str(err))
    t0 = time.perf_counter()
    if not args.collect_only:
        run_grid(configs, args.jobs)
    elapsed = time.perf_counter() - t0
    summary = summarize(collect(configs))
    decimals = args.decimals if args.decimals is not None else (2 if args.quick else 1)
    table = to_markdown(summary, datasets, models, args.methods, decimals)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(table)
    Path(f"{out}.csv").write_text(to_csv(summary))
    print(table, end="")
    print(f"({len(configs)} cells, {sum(s['n'] for s in summary.values())} finished; "
          f"mean ± 95% CI half-width over seeds (Student t), test accuracy %; "
          f"{elapsed:.0f} s; written to {out}.md and {out}.csv)")
    return 0


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.table1")
