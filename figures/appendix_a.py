"""Appendix A (Figure 4): SAM against Reverse-SAM and EGR, training and test loss.

    python -m figures.appendix_a               # quick default (CPU, minutes)
    python -m figures.appendix_a --full        # the paper's configuration (GPUs)

Three methods trained by the project's trainer with the same settings (docs/math.md §3):
SAM x ← x − η∇f_γ(x + ρ g/‖g‖); Reverse-SAM x ← x − η∇f_γ(x − ρ g/‖g‖) (the sign of the
ascent flipped: a theory driven by the quadratic term alone predicts no difference);
EGR x ← x − η∇[f_γ + ρ‖∇f_γ‖] with coefficient ρ (what the second-order SDE says SAM
optimises). Per epoch: the training loss — the mean clean minibatch loss f_γ(x_k) over
the epoch's steps (training mode, augmented batches), as the trainer logs it — and the
test loss on the whole test split (or ``test_subset``), eval mode; mean over the runs of
``seeds`` with a Student-t 95% band. The final test accuracies are tabulated (mean ± 95% CI),
as the paper reports them (95.5 ± 0.1, 95.0 ± 0.2, 94.4 ± 0.2 % on CIFAR-10).

Quick (a CPU, minutes; not the paper's setting): Fashion-MNIST, ResNet-18 of width 8, a
2,000-image training subset, 1,000 test images, batch 128, 6 epochs (90 steps), ρ = 0.05,
seeds 0, 1. Full: ResNet-18 on CIFAR-10 with Table 1's preset (200 epochs, batch 256,
ρ = 0.05), seeds 0, 1, 2.

Outputs in ``--out`` (default ``runs/appendix_a``): ``appendix_a_{dataset}.png``/``.pdf``,
``records.csv`` (tidy: method, seed, epoch, metric, value), ``accuracy.md``,
``summary.json``, and ``runs/{method}-s{seed}`` (trainer run directories; rerunning
resumes or collects them).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from sdesam._progress import progress as progress_bar
from sdesam.atomic import atomic_write_text
from sdesam.experiment import command

from .runs import TrainingSettings, dataset_label, method_label, model_label, run_or_collect, t_band, training_caption

METHODS = ("sam", "reverse_sam", "egr")
COLORS = {"sam": "tab:blue", "reverse_sam": "tab:orange", "egr": "tab:green"}
PAPER = ("cifar10", "resnet18")
PAPER_ACCURACY = {"sam": "95.5 ± 0.1", "egr": "95.0 ± 0.2", "reverse_sam": "94.4 ± 0.2"}


@dataclass
class Config(TrainingSettings):
    """Everything that determines the result (saved in config.json and summary.json)."""

    dataset: str = "fashion_mnist"
    model: str = "resnet18"
    model_kwargs: dict = field(default_factory=lambda: {"width": 8})
    seeds: tuple = (0, 1)
    epochs: int | None = 6
    batch_size: int = 128
    train_subset: int | None = 2000
    test_subset: int | None = 1000
    methods: tuple = METHODS

    @classmethod
    def full(cls) -> "Config":
        return cls(dataset="cifar10", model_kwargs={}, seeds=(0, 1, 2), epochs=None, batch_size=256, train_subset=None,
                   test_subset=None)

    def validate(self) -> "Config":
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"methods must be among {list(METHODS)}, got {m!r}")
        self.check_training([(self.dataset, self.model, m, {}) for m in self.methods], {"method": "--methods"})
        return self


def tidy_records(method: str, seed: int, run) -> list[dict]:
    return [{"method": method, "seed": seed, "epoch": h["epoch"], "metric": metric, "value": h[metric]}
            for h in run.history for metric in ("train_loss", "test_loss", "test_accuracy")]


def curve(rows, method: str, metric: str):
    """(epochs, mean over seeds, t half-width)."""
    by_epoch: dict = {}
    for r in rows:
        if r["method"] == method and r["metric"] == metric:
            by_epoch.setdefault(r["epoch"], []).append(r["value"])
    epochs = sorted(by_epoch)
    bands = [t_band(by_epoch[e]) for e in epochs]
    return np.array(epochs), np.array([b[0] for b in bands]), np.array([b[1] for b in bands])


def final_accuracy(rows, cfg: Config) -> dict:
    out = {}
    for method in cfg.methods:
        epochs, mean, half = curve(rows, method, "test_accuracy")
        vals = [100 * r["value"] for r in rows if r["method"] == method and r["metric"] == "test_accuracy"
                and r["epoch"] == epochs[-1]]
        m, h = t_band(vals)
        out[method] = {"mean": m, "ci95": h, "n": len(vals), "values": vals}
    return out


def to_markdown(cfg: Config, acc: dict) -> str:
    paper = (cfg.dataset, cfg.model) == PAPER and not cfg.model_kwargs
    lines = [f"Final test accuracy (%) on {dataset_label(cfg.dataset)}, {model_label(cfg.model)}"
             + ("" if paper else " (quick stand-in; the paper's column is ResNet-18 on CIFAR-10)")
             + ": mean ± 95% CI half-width over seeds (Student t)\n",
             "| Method | this run | paper (ResNet-18, CIFAR-10) |", "|---|---|---|"]
    for method in cfg.methods:
        a = acc[method]
        half = "n/a" if math.isnan(a["ci95"]) else f"{a['ci95']:.2f}"
        lines.append(f"| {method_label(method)} | {a['mean']:.2f} ± {half} (n={a['n']}) | {PAPER_ACCURACY[method]} |")
    return "\n".join(lines) + "\n"


def plot(rows, cfg: Config, rhos):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in zip(axes, ("train_loss", "test_loss"), ("training loss", "test loss")):
        for method in cfg.methods:
            x, m, h = curve(rows, method, metric)
            ax.plot(x, m, "-o", ms=3, color=COLORS[method], label=method_label(method))
            if len(cfg.seeds) > 1:
                ax.fill_between(x, m - np.nan_to_num(h), m + np.nan_to_num(h), color=COLORS[method], alpha=0.2, lw=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel("cross-entropy")
        ax.set_title(title)
        ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, which="both")
    rho = "ρ = " + ", ".join(f"{r:g}" for r in rhos)
    fig.suptitle(f"{training_caption(cfg, PAPER)}, {rho}; mean ± 95% CI over {len(cfg.seeds)} seeds", fontsize=10)
    fig.tight_layout()
    return fig


def run(cfg: Config, output, opts) -> dict:
    """Train (or resume / collect) every (method, seed) run and write the outputs."""
    t_start = time.perf_counter()
    out = output.path
    cells = [(m, s) for m in cfg.methods for s in cfg.seeds]
    rows, walls, rhos = [], {}, set()
    bar = progress_bar(len(cells), desc="appendix_a runs", unit="run", enabled=opts.progress)
    try:
        for method, seed in cells:
            name = f"{method}-s{seed}"
            tc = cfg.train_config(cfg.dataset, cfg.model, method, seed, out / "runs" / name, data_dir=opts.data_dir,
                                  device=str(opts.device), threads=opts.threads, progress=opts.progress)
            rhos.add(tc.rho)
            result = run_or_collect(name, tc)
            walls[name] = result.final["wall_time_s"]
            rows += tidy_records(method, seed, result)
            bar.update(1)
    finally:
        bar.close()
    output.csv("records.csv", ["method", "seed", "epoch", "metric", "value"], rows)
    acc = final_accuracy(rows, cfg)
    markdown = to_markdown(cfg, acc)
    atomic_write_text(output.file("accuracy.md"), markdown)
    stem = f"appendix_a_{cfg.dataset}"
    output.figure(plot(rows, cfg, sorted(rhos)), stem)
    final_losses = {}
    for method in cfg.methods:
        final_losses[method] = {}
        for metric in ("train_loss", "test_loss"):
            _, m, h = curve(rows, method, metric)
            final_losses[method][metric] = {"mean": float(m[-1]), "ci95": float(h[-1])}
    summary = output.summary({
        "figure": "Appendix A (Figure 4)", "config": asdict(cfg), "dataset": cfg.dataset, "model": cfg.model,
        "rho": sorted(rhos), "is_paper_setting": (cfg.dataset, cfg.model) == PAPER and not cfg.model_kwargs,
        "final_test_accuracy_pct": acc, "paper_test_accuracy_pct": PAPER_ACCURACY, "final_losses": final_losses,
        "measurements": {
            "train_loss": "per epoch, the mean clean minibatch loss f_gamma(x_k) over the epoch's steps "
                          "(training mode, augmented batches), as the trainer logs it",
            "test_loss": "per epoch, mean cross-entropy over the test split (or test_subset), eval mode",
            "band": "Student-t 95% CI of the mean over seeds",
        },
        "files": {"figure": f"{stem}.png", "records": "records.csv", "accuracy": "accuracy.md"},
        "run_wall_seconds": walls,
    }, opts.device, t_start)
    print(markdown, end="")
    print(f"(written to {out}/{summary['files']['figure']} (+ .pdf), records.csv, accuracy.md, summary.json; "
          f"{summary['wall_seconds_this_invocation']:.0f} s)")
    return summary


main = command("figures.appendix_a", __doc__, Config, run)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.appendix_a")
