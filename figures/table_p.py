"""Tables 3–4: Eigen-SAM's test accuracy against the refresh interval p (paper Appendix F).

    python -m figures.table_p                  # quick default (CPU, minutes)
    python -m figures.table_p --full           # the paper's grid (GPUs)

For every dataset × model, Eigen-SAM trained with each p of ``ps`` (v̂ re-estimated by
q power iterations every p steps, counted globally from the first step, which refreshes)
and SAM, one run per seed of ``seeds``, by the project's trainer with Table 1's preset. An entry
is the final test accuracy in %, mean ± t_{0.975, n−1}·s/√n over the seeds (Student t, s
the sample standard deviation), with n — Table 1's convention (``figures.table1``). The
layout is the paper's: one table per dataset, one row per architecture, columns
p = …, SAM. The number of refreshes each p gives in the run is printed under the table:
with few steps a large p refreshes only a handful of times.

Quick (a CPU, minutes; not the paper's setting): Fashion-MNIST, ResNet-18 of width 8, a
2,000-image training subset, 1,000 test images, batch 128, 4 epochs (60 steps),
p ∈ {5, 10, 20, 50} (12, 6, 3 and 2 refreshes), seeds 0, 1. Full: CIFAR-10 (Table 3) and
CIFAR-100 (Table 4), ResNet-18 and WRN-28-10, Table 1's preset (200 epochs, batch 256:
39,000 steps on CIFAR), p ∈ {100, 200, 500, 1000}, seeds 0, 1, 2.

Outputs in ``--out`` (default ``runs/table_p``): ``table_p.md`` (the tables),
``table_p.csv`` (tidy: one row per run), ``table_p_{datasets}.png``/``.pdf`` (accuracy
against p, SAM as a band), ``summary.json``, and ``runs/{dataset}-{model}-{p…|sam}-s{seed}``
(trainer run directories; rerunning resumes or collects them).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from sdesam._progress import progress as progress_bar
from sdesam.atomic import atomic_write_text
from sdesam.experiment import command
from sdesam.refresh import RefreshSchedule

from .runs import TrainingSettings, dataset_label, model_label, run_or_collect, t_band

PAPER_TABLES = {"cifar10": "Table 3", "cifar100": "Table 4"}
COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


@dataclass
class Config(TrainingSettings):
    """Everything that determines the result (saved in config.json and summary.json)."""

    datasets: tuple = ("fashion_mnist",)
    models: tuple = ("resnet18",)
    model_kwargs: dict = field(default_factory=lambda: {"width": 8})
    seeds: tuple = (0, 1)
    epochs: int | None = 4
    batch_size: int = 128
    train_subset: int | None = 2000
    test_subset: int | None = 1000
    ps: tuple = (5, 10, 20, 50)
    include_sam: bool = True
    alpha: float = 0.2
    q: int = 5

    @classmethod
    def full(cls) -> "Config":
        return cls(datasets=("cifar10", "cifar100"), models=("resnet18", "wrn28_10"), model_kwargs={},
                   seeds=(0, 1, 2), epochs=None, batch_size=256, train_subset=None, test_subset=None,
                   ps=(100, 200, 500, 1000))

    def validate(self) -> "Config":
        if not self.ps or min(self.ps) < 1 or len(set(self.ps)) != len(self.ps):
            raise ValueError(f"ps must be distinct integers >= 1, got {self.ps}")
        cells = [(d, m, "sam" if c == "sam" else "eigen_sam", self.run_changes(c))
                 for d in self.datasets for m in self.models for c in self.columns()]
        self.check_training(cells, {"dataset": "--datasets", "model": "--models", "method": "--ps and --include-sam",
                                    "p": "--ps"})
        return self

    def run_changes(self, column) -> dict:
        """The TrainConfig fields this table sets in the runs of ``column`` (a p or "sam")."""
        return {"alpha": self.alpha, "q": self.q, **({} if column == "sam" else {"p": column})}

    def columns(self) -> list:
        return list(self.ps) + (["sam"] if self.include_sam else [])


def column_label(column) -> str:
    return "SAM" if column == "sam" else f"p={column}"


def refreshes(p: int, steps: int) -> int:
    """Eigen-SAM refresh steps in a run of ``steps`` steps (global counting, first step refreshes)."""
    schedule = RefreshSchedule(p)
    return sum(schedule.refreshes_at(k) for k in range(steps))


def entries(rows) -> dict:
    """{(dataset, model, p or "sam"): mean, t half-width, n, values} of the test accuracy (%)."""
    groups: dict = {}
    for r in rows:
        key = "sam" if r["p"] == "" else r["p"]
        groups.setdefault((r["dataset"], r["model"], key), []).append(100 * r["test_accuracy"])
    out = {}
    for key, vals in groups.items():
        mean, half = t_band(vals)
        out[key] = {"mean": mean, "ci95": half, "n": len(vals), "values": vals}
    return out


def to_markdown(cfg: Config, table: dict, steps: dict) -> str:
    lines = []
    for dataset in cfg.datasets:
        paper = PAPER_TABLES.get(dataset)
        title = f"{paper} layout" if paper else "Tables 3–4 layout"
        lines.append(f"**{title}: test accuracy (%) on {dataset_label(dataset)} for different p "
                     "(interval steps for estimating eigenvectors) using Eigen-SAM** — mean ± 95% CI "
                     f"half-width over seeds (Student t), n seeds\n")
        cols = cfg.columns()
        lines.append("| Architecture | " + " | ".join(column_label(c) for c in cols) + " |")
        lines.append("|" + "---|" * (len(cols) + 1))
        for model in cfg.models:
            cells_ = []
            for c in cols:
                e = table.get((dataset, model, c))
                if e is None:
                    cells_.append("—")
                    continue
                half = "n/a" if math.isnan(e["ci95"]) else f"{e['ci95']:.2f}"
                cells_.append(f"{e['mean']:.2f} ± {half} (n={e['n']})")
            width = f" (width {cfg.model_kwargs['width']})" if "width" in cfg.model_kwargs else ""
            lines.append(f"| {model_label(model)}{width} | " + " | ".join(cells_) + " |")
        n = steps.get(dataset)
        if n:
            lines.append("\nRefreshes per run (" + f"{n} steps): "
                         + ", ".join(f"p={p}: {refreshes(p, n)}" for p in cfg.ps) + "\n")
    return "\n".join(lines) + "\n"


def plot(cfg: Config, table: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(cfg.datasets), figsize=(5.5 * len(cfg.datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], cfg.datasets):
        for color, model in zip(COLORS, cfg.models):
            ps = [p for p in cfg.ps if (dataset, model, p) in table]
            m = np.array([table[(dataset, model, p)]["mean"] for p in ps])
            h = np.nan_to_num(np.array([table[(dataset, model, p)]["ci95"] for p in ps]))
            ax.errorbar(ps, m, yerr=h, fmt="-o", ms=4, capsize=3, color=color,
                        label=f"{model_label(model)}: Eigen-SAM (± 95% CI)")
            for p in ps:
                vals = table[(dataset, model, p)]["values"]
                ax.scatter([p] * len(vals), vals, s=10, color="k", alpha=0.5, zorder=3)
            sam = table.get((dataset, model, "sam"))
            if sam is not None:
                half = 0.0 if math.isnan(sam["ci95"]) else sam["ci95"]
                ax.axhline(sam["mean"], color=color, ls="--", lw=1, label=f"{model_label(model)}: SAM")
                ax.axhspan(sam["mean"] - half, sam["mean"] + half, color=color, alpha=0.1, lw=0)
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(list(cfg.ps))
        ax.set_xticklabels([str(p) for p in cfg.ps])
        ax.set_xlabel("refresh interval p (steps)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset_label(dataset)} ({PAPER_TABLES.get(dataset, 'quick stand-in for Tables 3–4')})",
                     fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    n_train = "all" if cfg.train_subset is None else f"{cfg.train_subset}"
    fig.suptitle(f"{n_train} training images, B = {cfg.batch_size}, {cfg.epochs or 'preset'} epochs, α = {cfg.alpha}, "
                 f"q = {cfg.q}, {len(cfg.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    return fig


def run(cfg: Config, output, opts) -> dict:
    """Train (or resume / collect) every (dataset, model, column, seed) run and write the outputs."""
    t_start = time.perf_counter()
    out = output.path
    grid = [(d, m, c, s) for d in cfg.datasets for m in cfg.models for c in cfg.columns() for s in cfg.seeds]
    rows, walls, steps = [], {}, {}
    bar = progress_bar(len(grid), desc="table_p runs", unit="run", enabled=opts.progress)
    try:
        for dataset, model, column, seed in grid:
            name = f"{dataset}-{model}-{'sam' if column == 'sam' else f'p{column}'}-s{seed}"
            method = "sam" if column == "sam" else "eigen_sam"
            tc = cfg.train_config(dataset, model, method, seed, out / "runs" / name, **cfg.run_changes(column),
                                  data_dir=opts.data_dir, device=str(opts.device), threads=opts.threads,
                                  progress=opts.progress)
            result = run_or_collect(name, tc)
            walls[name] = result.final["wall_time_s"]
            steps[dataset] = result.final["steps"]
            rows.append({"dataset": dataset, "model": model, "column": column_label(column),
                         "p": "" if column == "sam" else column, "seed": seed,
                         "test_accuracy": result.final["test_accuracy"], "test_loss": result.final["test_loss"],
                         "train_loss": result.final["train_loss"], "steps": result.final["steps"],
                         "refreshes": "" if column == "sam" else refreshes(column, result.final["steps"])})
            bar.update(1)
    finally:
        bar.close()
    output.csv("table_p.csv", ["dataset", "model", "column", "p", "seed", "test_accuracy", "test_loss",
                               "train_loss", "steps", "refreshes"], rows)
    table = entries(rows)
    markdown = to_markdown(cfg, table, steps)
    atomic_write_text(output.file("table_p.md"), markdown)
    stem = "table_p_" + "_".join(cfg.datasets)
    output.figure(plot(cfg, table), stem)
    summary = output.summary({
        "table": "Tables 3-4", "config": asdict(cfg), "datasets": list(cfg.datasets), "models": list(cfg.models),
        "paper_datasets": PAPER_TABLES,
        "entries": [{"dataset": d, "model": m, "column": column_label(c), **e} for (d, m, c), e in table.items()],
        "steps_per_run": steps, "refreshes": {d: {str(p): refreshes(p, n) for p in cfg.ps} for d, n in steps.items()},
        "entry_definition": "final test accuracy (%), mean ± t_{0.975,n-1} s/sqrt(n) over seeds",
        "files": {"markdown": "table_p.md", "csv": "table_p.csv", "figure": f"{stem}.png"},
        "run_wall_seconds": walls,
    }, opts.device, t_start)
    print(markdown, end="")
    print(f"(written to {out}/table_p.md, table_p.csv, {summary['files']['figure']}, summary.json; "
          f"{summary['wall_seconds_this_invocation']:.0f} s)")
    return summary


main = command("figures.table_p", __doc__, Config, run)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.table_p")
