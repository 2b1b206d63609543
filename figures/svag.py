"""The SAM-SVAG test: is an SDE a valid model of SAM at this learning rate?

    python -m figures.svag                 # quick default (2 CPU cores, minutes)
    python -m figures.svag --full          # ResNet-18 on CIFAR-10 (GPUs)

SVAG (Li, Malladi & Arora 2021) turns one step of size η into l steps of
x ← x − (η/l)[c₁Φ_{γ₁} + c₂Φ_{γ₂}], c₁,₂ = (1 ± √(2l − 1))/2, with two independent minibatches
each taking its own perturbed gradient Φ_γ = ∇f_γ(x + ρε_γ) (docs/math.md §7). As l grows it
converges to the SAM SDE (drift −E Φ_γ, diffusion η Cov Φ_γ) while keeping the first two
moments per unit of time; l = 1 is SAM itself. If the metrics plotted against effective
time (steps/l) agree for l = 1, 2, 4, 8, the SDE describes SAM at this η; where they
separate, it does not. The runs use the project's trainer (``sdesam.training.train`` with
``svag=l``: the learning rate η/l, l times the steps, the schedule stretched accordingly,
two minibatches per step; DDP works as for any run).

Quick (CPU; not the paper's setting): Fashion-MNIST, ResNet-18 of width 8 with GroupNorm
(per-example losses, as the SDE theory assumes), a 2,048-image training subset and 1,000
test images, batch 128, SAM with ρ = 0.05, plain SGD base (momentum 0, as SVAG's authors
run it), constant learning rate 0.05, 4 epochs of effective time, l ∈ {1, 2, 4, 8}, one
seed. Full: ResNet-18 (BatchNorm) on CIFAR-10, batch 128, lr 0.1, 40 effective epochs.

Outputs in ``--out`` (default ``runs/svag``): ``svag.png``/``.pdf`` (training loss, test
loss and test accuracy against effective epochs, one curve per l), ``records.csv`` (tidy:
l, seed, effective_epoch, metric, value), ``summary.json`` (configuration, the final
metrics per l with their spread over seeds, the largest gap to l = 8 over time, versions,
wall time) and ``runs/l{l}-s{seed}/`` (trainer run directories; a rerun resumes or
collects them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from sdesam.experiment import command
from sdesam.training import RESUME_MUTABLE_FIELDS, TrainConfig, train
from sdesam.training.files import FINAL_FILE, METRICS_FILE, read_json, read_jsonl

__all__ = ["Config", "main", "run"]

METRICS = ("train_loss", "test_loss", "test_accuracy")


@dataclass
class Config:
    """Everything that determines the result (config.json; a rerun resumes)."""

    dataset: str = "fashion_mnist"
    model: str = "resnet18"
    model_kwargs: dict = field(default_factory=lambda: {"width": 8, "norm": "group"})
    method: str = "sam"
    ls: tuple = (1, 2, 4, 8)
    seeds: tuple = (0,)
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.0
    weight_decay: float = 0.0
    schedule: str = "constant"
    rho: float = 0.05
    train_subset: int | None = 2048
    test_subset: int | None = 1000
    augment: bool = False

    @classmethod
    def full(cls) -> "Config":
        return cls(dataset="cifar10", model_kwargs={}, epochs=40, lr=0.1, train_subset=None, test_subset=None,
                   augment=True, seeds=(0, 1))

    def validate(self) -> "Config":
        if not self.ls or any(int(v) < 1 for v in self.ls) or len(set(self.ls)) != len(self.ls):
            raise ValueError(f"--ls must be distinct integers >= 1, got {list(self.ls)}")
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct integers >= 0, got {list(self.seeds)}")
        for l in self.ls:
            self.train_config(l, self.seeds[0], "runs/check").validate()
        return self

    def train_config(self, l: int, seed: int, out_dir, **run) -> TrainConfig:
        """The trainer's configuration of the run with SVAG's factor l."""
        return TrainConfig(dataset=self.dataset, model=self.model, model_kwargs=dict(self.model_kwargs),
                           method=self.method, svag=int(l), seed=seed, epochs=self.epochs, batch_size=self.batch_size,
                           lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, schedule=self.schedule,
                           rho=self.rho, train_subset=self.train_subset, test_subset=self.test_subset,
                           augment=self.augment, out_dir=str(out_dir), resume=True, **run)


def _train_or_collect(config: TrainConfig) -> tuple[dict, list[dict]]:
    """Train (resuming an interrupted run) unless finished; (final.json, metrics.jsonl lines)."""
    from pathlib import Path
    out = Path(config.out_dir)
    if not (out / FINAL_FILE).exists():
        train(config)
    final = read_json(out / FINAL_FILE)
    diffs = TrainConfig.from_dict(final["config"]).differences(config, ignore=RESUME_MUTABLE_FIELDS + ("device",))
    if diffs:
        raise ValueError(f"{out} holds a run of another configuration: {diffs}; use another --out")
    return final, read_jsonl(out / METRICS_FILE)


def run(cfg: Config, output, opts) -> dict:
    t_start = time.perf_counter()
    rows, walls = [], {}
    for l in cfg.ls:
        for seed in cfg.seeds:
            name = f"l{l}-s{seed}"
            tc = cfg.train_config(l, seed, output.file("runs") / name, device=str(opts.device),
                                  data_dir=opts.data_dir, threads=opts.threads, progress=opts.progress)
            final, history = _train_or_collect(tc)
            walls[name] = final.get("wall_time_s")
            for h in history:
                t = h.get("effective_epoch", h["epoch"]) if l > 1 else h["epoch"]
                rows += [{"l": l, "seed": seed, "effective_epoch": t, "metric": m, "value": h[m]}
                         for m in METRICS if m in h]
    output.csv("records.csv", ("l", "seed", "effective_epoch", "metric", "value"), rows)
    curves = _curves(rows, cfg)
    output.figure(plot(curves, cfg), "svag")
    summary = output.summary({"figure": "SAM-SVAG test", "final": _finals(curves),
                              "gap_to_largest_l": _gaps(curves, cfg), "run_wall_seconds": walls},
                             opts.device, t_start)
    print(format_summary(summary, cfg))
    return summary


def _curves(rows, cfg: Config) -> dict:
    """{(l, metric): (effective epochs (E,), values (seeds, E))}."""
    out = {}
    for l in cfg.ls:
        for m in METRICS:
            mine = [r for r in rows if r["l"] == l and r["metric"] == m]
            ts = sorted({round(r["effective_epoch"], 9) for r in mine})
            table = {(r["seed"], round(r["effective_epoch"], 9)): r["value"] for r in mine}
            out[l, m] = (np.array(ts), np.array([[table.get((s, t), np.nan) for t in ts] for s in cfg.seeds]))
    return out


def _finals(curves) -> dict:
    out = {}
    for (l, m), (ts, vals) in curves.items():
        last = vals[:, -1]
        out.setdefault(str(l), {})[m] = {"mean": float(np.nanmean(last)), "sd_over_seeds":
                                         float(np.nanstd(last, ddof=1)) if last.size > 1 else None,
                                         "effective_epoch": float(ts[-1])}
    return out


def _gaps(curves, cfg: Config) -> dict:
    """Per l and metric: the largest |seed-mean(l) − seed-mean(l_max)| over the effective
    times both record (integer effective epochs)."""
    lmax = max(cfg.ls)
    out = {}
    for (l, m), (ts, vals) in curves.items():
        if l == lmax:
            continue
        tr, vr = curves[lmax, m]
        common = sorted(set(np.round(ts, 6)) & set(np.round(tr, 6)))
        if not common:
            continue
        a = np.nanmean(vals, 0)[[int(np.flatnonzero(np.round(ts, 6) == t)[0]) for t in common]]
        b = np.nanmean(vr, 0)[[int(np.flatnonzero(np.round(tr, 6) == t)[0]) for t in common]]
        out.setdefault(str(l), {})[m] = float(np.max(np.abs(a - b)))
    return out


def plot(curves, cfg: Config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    titles = {"train_loss": "training loss", "test_loss": "test loss", "test_accuracy": "test accuracy"}
    cmap = plt.get_cmap("viridis")
    for ax, m in zip(axes, METRICS):
        for i, l in enumerate(cfg.ls):
            ts, vals = curves[l, m]
            ax.plot(ts, np.nanmean(vals, 0), "-o", ms=2.5, color=cmap(i / max(1, len(cfg.ls) - 1)),
                    label=f"l = {l}" + (" (SAM)" if l == 1 else ""))
        ax.set_xlabel("effective epoch (steps / l)")
        ax.set_title(titles[m])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"SAM-SVAG: {cfg.model} {cfg.model_kwargs or ''} on {cfg.dataset}, η = {cfg.lr}, ρ = {cfg.rho}, "
                 f"B = {cfg.batch_size}; mean over {len(cfg.seeds)} seed(s)", fontsize=9)
    fig.tight_layout()
    return fig


def format_summary(summary: dict, cfg: Config) -> str:
    lines = ["\n== SAM-SVAG: final metrics per l (effective epoch "
             f"{cfg.epochs}) and the largest gap to l = {max(cfg.ls)} over time =="]
    for l in cfg.ls:
        f = summary["final"][str(l)]
        gap = summary["gap_to_largest_l"].get(str(l), {})
        lines.append(f"l = {l}: " + ", ".join(f"{m} {f[m]['mean']:.4f}" + (f" (gap {gap[m]:.4f})" if m in gap else "")
                                           for m in METRICS if m in f))
    return "\n".join(lines)


main = command("figures.svag", __doc__, Config, run)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.svag")
