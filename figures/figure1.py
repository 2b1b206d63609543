"""Figure 1: perturbation–eigenvector alignment and the top Hessian eigenvalue in training.

    python -m figures.figure1                  # quick default (CPU, minutes)
    python -m figures.figure1 --full           # the paper-scale configuration (GPU)

The paper's 6-layer SimpleCNN (``sdesam.models.SimpleCNN``, Jastrzebski et al.'s
Keras reference) trained with SGD, SAM and Eigen-SAM by the project's trainer
(``sdesam.training.train``), measured by ``figures.probes.AlignmentProbe``:

* left: Align(ε_k, v₁) (paper Sec. 4.3) of the perturbation ε_k that step k uses
  (SAM: g/‖g‖, Eq. 2; Eigen-SAM: Eq. 8) with v₁ the top eigenvector of the **minibatch**
  Hessian ∇²f_γk(x_k) of that step's own minibatch (Corollary 4.1.1's v₁), measured
  every ``align_every`` steps; per epoch the mean and a Student-t 95% confidence band
  over the measurements of that epoch (all seeds pooled), individual values as dots;
* right: λ₁ of the Hessian of the mean loss over a **fixed subset** of
  ``hessian_examples`` training images (``hessian_mode``, default eval) every
  ``subset_every`` steps and at the end, for SGD, SAM and Eigen-SAM (mean over seeds,
  with a t band when there are several).

Both eigenproblems are solved by Lanczos to relative Ritz residual ``eig_tol``; the
residuals and products are in ``records.csv``. Dataset: ``auto`` = CIFAR-10 when its
files are present, otherwise Fashion-MNIST (labelled in titles, file names and JSON).

Choices the paper leaves open: lr 0.01 (SimpleCNN has no BatchNorm), Table 1's other
settings (momentum 0.9, cosine, weight decay 5e-5, crop + flip, ρ = 0.05, α = 0.2, q = 5),
batch 128, every method trained for the same number of epochs. Quick: a 2,048-image
subset, 3 epochs (48 steps), p = 20, alignment every 6 steps, λ₁ on 128 images every
12 steps, seed 0. Full: all of CIFAR-10, 100 epochs, p = 100, seeds 0, 1, 2, alignment every
78 steps (5 per epoch), λ₁ on 2,048 images every epoch.

Outputs in ``--out`` (default ``runs/figure1``): ``figure1_{dataset}.png``/``.pdf``,
``records.csv`` (tidy: method, seed, step, epoch, metric, value), ``summary.json``
(configuration, environment, wall times, the numbers shown) and ``runs/{method}-s{seed}``
(one trainer run directory each; rerunning resumes or collects them).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from sdesam._progress import progress as progress_bar
from sdesam.experiment import command

from .probes import HESSIAN_MODES, AlignmentProbe
from .runs import (
    TrainingSettings,
    dataset_label,
    method_label,
    resolve_dataset,
    run_or_collect,
    t_band,
    training_caption,
)

COLORS = {"sgd": "tab:gray", "sam": "tab:blue", "eigen_sam": "tab:red"}
METHODS = ("sgd", "sam", "eigen_sam")
PAPER_DATASET, PAPER_MODEL = "cifar10", "simple_cnn"


@dataclass
class Config(TrainingSettings):
    """Everything that determines the result (saved in config.json and summary.json)."""

    dataset: str = "auto"
    model: str = "simple_cnn"
    model_kwargs: dict = field(default_factory=dict)
    seeds: tuple = (0,)
    epochs: int | None = 3
    batch_size: int = 128
    train_subset: int | None = 2048
    test_subset: int | None = 1000
    lr: float | None = 0.01
    rho: float | None = 0.05
    overrides: dict = field(default_factory=dict)
    methods: tuple = METHODS
    align_methods: tuple = ("sam", "eigen_sam")
    alpha: float = 0.2
    p: int = 20
    q: int = 5
    align_every: int = 6
    subset_every: int = 12
    hessian_examples: int = 128
    hessian_batch_size: int = 128
    hessian_mode: str = "eval"
    eig_tol: float = 1e-3
    eig_max_iters: int = 100

    @classmethod
    def full(cls) -> "Config":
        return cls(dataset="cifar10", seeds=(0, 1, 2), epochs=100, train_subset=None, test_subset=None, p=100,
                   align_every=78, subset_every=390, hessian_examples=2048, hessian_batch_size=256)

    def validate(self) -> "Config":
        for m in self.methods + self.align_methods:
            if m not in METHODS:
                raise ValueError(f"methods must be among {list(METHODS)}, got {m!r}")
        if not set(self.align_methods) <= set(self.methods):
            raise ValueError(f"--align-methods {' '.join(self.align_methods)} must be among --methods "
                             f"{' '.join(self.methods)}")
        if self.hessian_mode not in HESSIAN_MODES:
            raise ValueError(f"hessian_mode must be one of {list(HESSIAN_MODES)}")
        if self.subset_every % self.align_every:
            raise ValueError(f"subset_every ({self.subset_every}) must be a multiple of align_every "
                             f"({self.align_every})")
        if self.epochs is None:
            raise ValueError("--epochs must be a number: every method trains for the same number of epochs")
        dataset = PAPER_DATASET if self.dataset == "auto" else self.dataset
        self.check_training([(dataset, self.model, m, self.run_changes()) for m in self.methods],
                            {"method": "--methods"}, examples=self.hessian_examples)
        return self

    def run_changes(self) -> dict:
        """The TrainConfig fields this figure sets in every run, besides the shared ones."""
        return {"alpha": self.alpha, "p": self.p, "q": self.q}


def steps_per_epoch(cfg: Config, n_train: int) -> int:
    return n_train // cfg.batch_size      # the trainer drops the last incomplete batch


# ------------------------------------------------------------------------------------
# Records and aggregation
# ------------------------------------------------------------------------------------
def tidy_records(method: str, seed: int, run, spe: int) -> list[dict]:
    """Rows (method, seed, step, epoch, metric, value): the probe's step records, the
    end-of-training λ₁, and the trainer's per-epoch metrics. ``epoch`` = step / steps per
    epoch (training progress); ``measured_in_epoch`` (1-based) groups the bands."""
    rows = []

    def add(step, metric, value):
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            rows.append({"method": method, "seed": seed, "step": step, "epoch": step / spe,
                         "metric": metric, "value": value})

    for rec in run.steps:
        for key, value in rec.items():
            if key not in ("step", "epoch", "callback"):
                add(rec["step"], key, value)
    final = run.final.get("final_sharpness", {})
    for key, value in final.items():
        if key != "step":
            add(final["step"], key, value)
    for h in run.history:
        for key in ("train_loss", "test_loss", "test_accuracy"):
            add(h["step"], key, h[key])
    return rows


def per_epoch_bands(rows, method, metric, spe) -> list[dict]:
    """Per epoch of measurement (1-based): mean, t 95% half-width, n over all seeds."""
    groups: dict = {}
    for r in rows:
        if r["method"] == method and r["metric"] == metric:
            groups.setdefault(int(r["step"]) // spe + 1, []).append(r["value"])
    out = []
    for epoch in sorted(groups):
        mean, half = t_band(groups[epoch])
        out.append({"epoch": epoch, "mean": mean, "ci95": half, "n": len(groups[epoch])})
    return out


def curve(rows, method, metric) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epochs, mean over seeds, t half-width) of a metric measured at common steps."""
    by_step: dict = {}
    for r in rows:
        if r["method"] == method and r["metric"] == metric:
            by_step.setdefault(r["step"], (r["epoch"], []))[1].append(r["value"])
    steps = sorted(by_step)
    x = np.array([by_step[s][0] for s in steps])
    bands = [t_band(by_step[s][1]) for s in steps]
    return x, np.array([b[0] for b in bands]), np.array([b[1] for b in bands])


def summarize(rows, cfg: Config, spe: int) -> dict:
    out = {"alignment_minibatch": {}, "alignment_vhat": {}, "alignment_subset": {},
           "subset_lambda1": {}, "final_test_accuracy": {}}
    for method in cfg.methods:
        for key, metric in (("alignment_minibatch", "align_minibatch"), ("alignment_vhat", "align_vhat"),
                            ("alignment_subset", "align_subset")):
            vals = [r["value"] for r in rows if r["method"] == method and r["metric"] == metric]
            if vals:
                mean, half = t_band(vals)
                out[key][method] = {"mean": mean, "ci95": half, "n": len(vals), "min": min(vals),
                                    "max": max(vals), "per_epoch": per_epoch_bands(rows, method, metric, spe)}
        x, mean, half = curve(rows, method, "subset_lambda1")
        if len(x):
            out["subset_lambda1"][method] = {"epochs": x.tolist(), "mean": mean.tolist(), "ci95": half.tolist(),
                                             "initial": float(mean[0]), "final": float(mean[-1])}
        x, mean, half = curve(rows, method, "test_accuracy")
        if len(x):
            out["final_test_accuracy"][method] = {"mean": float(mean[-1]), "ci95": float(half[-1])}
    res = [r["value"] for r in rows if r["metric"].endswith("lambda1_rel_residual")]
    hv = [r["value"] for r in rows if r["metric"].endswith("lambda1_hvps")]
    unconverged = sum(1 for r in rows if r["metric"].endswith("lambda1_converged") and r["value"] == 0)
    out["lanczos"] = {"max_rel_residual": max(res) if res else None, "hvps_min": min(hv) if hv else None,
                      "hvps_max": max(hv) if hv else None, "unconverged": unconverged}
    return out


# ------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------
def plot(rows, cfg: Config, spe: int, rhos):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for method in cfg.align_methods:
        pts = [(r["epoch"], r["value"]) for r in rows if r["method"] == method and r["metric"] == "align_minibatch"]
        if not pts:
            continue
        ax1.scatter(*zip(*pts), s=8, alpha=0.35, color=COLORS[method])
        bands = per_epoch_bands(rows, method, "align_minibatch", spe)
        x = np.array([b["epoch"] - 0.5 for b in bands])
        m = np.array([b["mean"] for b in bands])
        h = np.nan_to_num(np.array([b["ci95"] for b in bands]))
        ax1.plot(x, m, "-o", ms=3, color=COLORS[method], label=f"{method_label(method)}: mean per epoch ± 95% CI")
        lo, hi = np.clip(m - h, 1 - math.sqrt(2), 1), np.clip(m + h, 1 - math.sqrt(2), 1)   # Align's range
        ax1.fill_between(x, lo, hi, color=COLORS[method], alpha=0.2, lw=0)
    ax1.axhline(1 - math.sqrt(2), color="k", ls=":", lw=1, label="orthogonal vectors (1 − √2)")
    ax1.axhline(1.0, color="k", ls="--", lw=0.8)
    ax1.set_ylim(1 - math.sqrt(2) - 0.05, 1.05)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel(r"Align($\epsilon_\gamma$, $v_1(\nabla^2 f_\gamma)$)")
    ax1.set_title("perturbation vs top eigenvector of the minibatch Hessian")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for method in cfg.methods:
        x, mean, half = curve(rows, method, "subset_lambda1")
        if not len(x):
            continue
        ax2.plot(x, mean, "-o", ms=3, color=COLORS[method], label=method_label(method))
        if len(cfg.seeds) > 1:
            ax2.fill_between(x, mean - np.nan_to_num(half), mean + np.nan_to_num(half), color=COLORS[method],
                             alpha=0.2, lw=0)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel(rf"$\lambda_1$ (Hessian on {cfg.hessian_examples} training images, {cfg.hessian_mode} mode)")
    ax2.set_title("top Hessian eigenvalue")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    rho = ", ".join(f"{r:g}" for r in rhos)
    fig.suptitle(f"{training_caption(cfg, (PAPER_DATASET, PAPER_MODEL))}, {cfg.epochs} epochs, ρ = {rho}, "
                 f"α = {cfg.alpha}, p = {cfg.p}, "
                 f"q = {cfg.q}, {len(cfg.seeds)} seed(s)", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------
def run(cfg: Config, output, opts) -> dict:
    """Train (or resume / collect) every (method, seed) run and write the outputs."""
    from sdesam.data import load_dataset
    t_start = time.perf_counter()
    out = output.path
    cfg = replace(cfg, dataset=resolve_dataset(cfg.dataset, PAPER_DATASET, "fashion_mnist", opts.data_dir))
    n_train = cfg.train_subset or len(load_dataset(cfg.dataset, opts.data_dir)[0])
    spe = steps_per_epoch(cfg, n_train)
    pairs = [(m, s) for m in cfg.methods for s in cfg.seeds]
    rows, walls, rhos = [], {}, set()
    bar = progress_bar(len(pairs), desc="figure1 runs", unit="run", enabled=opts.progress)
    try:
        for method, seed in pairs:
            name = f"{method}-s{seed}"
            tc = cfg.train_config(cfg.dataset, cfg.model, method, seed, out / "runs" / name, **cfg.run_changes(),
                                  data_dir=opts.data_dir, device=str(opts.device), threads=opts.threads,
                                  progress=opts.progress)
            rhos.add(tc.rho)
            probe = AlignmentProbe(every_steps=cfg.align_every, subset_every=cfg.subset_every,
                                   subset_examples=cfg.hessian_examples, subset_batch_size=cfg.hessian_batch_size,
                                   subset_mode=cfg.hessian_mode, align=method in cfg.align_methods,
                                   tol=cfg.eig_tol, max_iters=cfg.eig_max_iters, seed=seed)
            result = run_or_collect(name, tc, [probe])
            walls[name] = result.final["wall_time_s"] + result.final.get("final_sharpness", {}).get("probe_seconds", 0)
            rows += tidy_records(method, seed, result, spe)
            bar.update(1)
    finally:
        bar.close()
    output.csv("records.csv", ["method", "seed", "step", "epoch", "metric", "value"], rows)
    numbers = summarize(rows, cfg, spe)
    stem = f"figure1_{cfg.dataset}"
    output.figure(plot(rows, cfg, spe, sorted(rhos)), stem)
    summary = output.summary({
        "figure": "Figure 1", "config": asdict(cfg), "dataset": cfg.dataset,
        "paper_dataset": PAPER_DATASET, "dataset_is_papers": cfg.dataset == PAPER_DATASET,
        "train_examples": n_train, "steps_per_epoch": spe, "total_steps": spe * cfg.epochs,
        "measurements": {
            "align_minibatch": "Align(eps_k, v1(Hessian of the step's own minibatch loss, training mode)) "
                               "before step k; eps_k = the optimizer's perturbation rule at g_k (SGD: g/|g|)",
            "align_vhat": "Eigen-SAM only: Align(v_hat used by step k, that minibatch v1)",
            "subset_lambda1": f"lambda1 of the Hessian of the mean loss over a fixed subset of "
                              f"{cfg.hessian_examples} training images ({cfg.hessian_mode} mode, subset seed 0)",
            "align_subset": "Align(eps_k, v1 of that subset Hessian) at the subset steps",
            "eigensolver": f"Lanczos, relative Ritz residual <= {cfg.eig_tol}, at most {cfg.eig_max_iters} "
                           "products, determinism check first",
            "band": "Student-t 95% confidence interval of the mean over the measurements of an epoch "
                    "(all seeds pooled); lambda1 band over seeds",
        },
        "results": numbers, "files": {"figure": f"{stem}.png", "records": "records.csv"},
        "run_wall_seconds": walls,
    }, opts.device, t_start)
    res = summary["results"]
    print(f"wrote {out}/{summary['files']['figure']} (+ .pdf), records.csv, summary.json "
          f"({summary['wall_seconds_this_invocation']:.0f} s) — {dataset_label(summary['dataset'])}")
    for method, a in res["alignment_minibatch"].items():
        print(f"  Align(eps, v1 minibatch) {method_label(method)}: mean {a['mean']:.3f} ± {a['ci95']:.3f} "
              f"(n = {a['n']}, range {a['min']:.3f} … {a['max']:.3f})")
    for method, s in res["subset_lambda1"].items():
        print(f"  lambda1 (subset) {method_label(method)}: {s['initial']:.3g} at start → {s['final']:.3g} at end")
    return summary


main = command("figures.figure1", __doc__, Config, run)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.figure1")
