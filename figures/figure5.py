"""Figure 5: how fast Algorithm 1 (q-step power iteration) finds the top eigenvector.

    python -m figures.figure5                  # quick default (CPU, minutes)
    python -m figures.figure5 --full           # the paper-scale configuration (GPUs)

Each model is trained by the project's trainer (Eigen-SAM by default) up to the end of
epoch ``at_epoch`` of an ``epochs``-epoch schedule ("mid-training": the paper measures
at epoch 100 of 200), where ``figures.probes.PowerIterationProbe`` measures and the
run stops. On each of ``minibatches`` fixed minibatches of ``batch_size`` unaugmented
training images, with the minibatch Hessian ∇²f_γ in ``hessian_mode`` (default
"train", the function Algorithm 1 differentiates inside Eigen-SAM):

* the reference v₁ by Lanczos to relative Ritz residual ``ref_tol`` (the residual, λ₁
  and the products are recorded; sin∠(v, v₁) ≤ residual / gap);
* Algorithm 1 from ``starts`` random unit vectors (its initialisation), and from the
  run's current Eigen-SAM estimate v̂ (a warm start, as Eigen-SAM refreshes it), for
  q = 0 … ``q_max`` products: Align(v_q, v₁) (paper Sec. 4.3).

The figure shows the mean alignment against q with a Student-t 95% confidence band over
the random starts of all minibatches (and seeds), the warm start separately.

Quick (a CPU, minutes; not the paper's setting): Fashion-MNIST, ResNet-18 of width 8, a
2,000-image training subset, batch 128, a 4-epoch schedule measured after epoch 2,
Eigen-SAM p = 20; 2 minibatches × 5 random starts, q ≤ 10. Full: CIFAR-100, ResNet-18 and
WRN-28-10 with Table 1's preset (200 epochs, batch 256, ρ = 0.1, α = 0.2, p = 100),
measured after epoch 100 on 4 minibatches of 256 × 10 starts, q ≤ 20. The paper does not
say which optimizer trained the models of its Figure 5 nor how many starts it averaged.

Outputs in ``--out`` (default ``runs/figure5``): ``figure5_{dataset}.png``/``.pdf``,
``records.csv`` (model, seed, minibatch, start, q, alignment, eigenvalue_estimate),
``summary.json``, and ``runs/{model}-s{seed}`` (the trainer's run directory, stopped at
``at_epoch``, with the probe's ``figure5_probe.json``; rerunning reuses it).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sdesam._progress import progress as progress_bar
from sdesam.experiment import command
from sdesam.training import METHODS, train

from .probes import HESSIAN_MODES, PowerIterationProbe, TrainingStopped
from .runs import TrainingSettings, dataset_label, method_label, model_label, t_band

PAPER = ("cifar100", ("resnet18", "wrn28_10"), 100)
PROBE_FILE = "figure5_probe.json"
COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


@dataclass
class Config(TrainingSettings):
    """Everything that determines the result (saved in config.json and summary.json)."""

    dataset: str = "fashion_mnist"
    models: tuple = ("resnet18",)
    model_kwargs: dict = field(default_factory=lambda: {"width": 8})
    seeds: tuple = (0,)
    epochs: int | None = 4
    batch_size: int = 128
    train_subset: int | None = 2000
    test_subset: int | None = 1000
    method: str = "eigen_sam"
    alpha: float = 0.2
    p: int = 20
    q: int = 5
    at_epoch: int = 2
    minibatches: int = 2
    starts: int = 5
    q_max: int = 10
    hessian_mode: str = "train"
    ref_tol: float = 1e-5
    ref_max_iters: int = 200

    @classmethod
    def full(cls) -> "Config":
        return cls(dataset="cifar100", models=("resnet18", "wrn28_10"), model_kwargs={}, epochs=200,
                   batch_size=256, train_subset=None, test_subset=None, p=100, at_epoch=100,
                   minibatches=4, starts=10, q_max=20)

    def validate(self) -> "Config":
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.epochs is None or not 1 <= self.at_epoch <= self.epochs:
            raise ValueError(f"at_epoch must be in 1..epochs, got at_epoch={self.at_epoch}, epochs={self.epochs}")
        if self.hessian_mode not in HESSIAN_MODES:
            raise ValueError(f"hessian_mode must be one of {list(HESSIAN_MODES)}")
        self.check_training([(self.dataset, m, self.method, self.run_changes()) for m in self.models],
                            {"model": "--models"}, examples=self.minibatches * self.batch_size)
        return self

    def run_changes(self) -> dict:
        """The TrainConfig fields this figure sets in every run, besides the shared ones."""
        return {"alpha": self.alpha, "p": self.p, "q": self.q}


def measure(cfg: Config, model: str, seed: int, out: Path, opts) -> dict:
    """The probe's result for one (model, seed): read it, or train until it is written."""
    run_dir = out / "runs" / f"{model}-s{seed}"
    path = run_dir / PROBE_FILE
    if not path.exists():
        tc = cfg.train_config(cfg.dataset, model, cfg.method, seed, run_dir, **cfg.run_changes(),
                              data_dir=opts.data_dir, device=str(opts.device), threads=opts.threads,
                              progress=opts.progress)
        probe = PowerIterationProbe(at_epoch=cfg.at_epoch, path=path, minibatches=cfg.minibatches,
                                    batch_size=cfg.batch_size, starts=cfg.starts, q_max=cfg.q_max,
                                    seed=seed, mode=cfg.hessian_mode, ref_tol=cfg.ref_tol,
                                    ref_max_iters=cfg.ref_max_iters)
        try:
            train(tc, [probe])
        except TrainingStopped:
            pass
        else:
            raise RuntimeError(f"{run_dir}: training ended without reaching epoch {cfg.at_epoch}")
    return json.loads(path.read_text())


def tidy_records(model: str, seed: int, result: dict) -> list[dict]:
    return [{"model": model, "seed": seed, "minibatch": mb["index"], "start": row["start"], "q": row["q"],
             "alignment": row["alignment"], "eigenvalue_estimate": row["eigenvalue_estimate"]}
            for mb in result["minibatches"] for row in mb["rows"]]


def curves(rows, model: str, q_max: int) -> dict:
    """{"random": [(mean, ci95, n) per q], "warm": …} for one model."""
    out = {}
    for kind in ("random", "warm"):
        per_q = []
        for q in range(q_max + 1):
            vals = [r["alignment"] for r in rows if r["model"] == model and r["q"] == q
                    and (r["start"] == "warm") == (kind == "warm")]
            if vals:
                mean, half = t_band(vals)
                per_q.append({"q": q, "mean": mean, "ci95": half, "n": len(vals)})
        if per_q:
            out[kind] = per_q
    return out


def first_q_reaching(curve: list[dict], level: float):
    """Smallest q whose mean alignment is ≥ level (None if none)."""
    return next((c["q"] for c in curve if c["mean"] >= level), None)


def plot(cfg: Config, all_curves: dict):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    for color, (model, cur) in zip(COLORS, all_curves.items()):
        for kind, style in (("random", "-o"), ("warm", "--s")):
            if kind not in cur:
                continue
            q = np.array([c["q"] for c in cur[kind]])
            m = np.array([c["mean"] for c in cur[kind]])
            h = np.nan_to_num(np.array([c["ci95"] for c in cur[kind]]))
            n = cur[kind][0]["n"]
            label = (f"{model_label(model)}: random start (mean ± 95% CI, n = {n})" if kind == "random"
                     else f"{model_label(model)}: warm start from the run's v̂ (n = {n})")
            ax.plot(q, m, style, ms=3, color=color, label=label)
            lo, hi = np.clip(m - h, 1 - np.sqrt(2), 1), np.clip(m + h, 1 - np.sqrt(2), 1)   # Align's range
            ax.fill_between(q, lo, hi, color=color, alpha=0.15 if kind == "random" else 0.08, lw=0)
    ax.axhline(1.0, color="k", ls="--", lw=0.8)
    ax.set_xlabel("q (Hessian-vector products in Algorithm 1)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(r"Align($\hat v_q$, $v_1$)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    paper = cfg.dataset == PAPER[0] and not cfg.model_kwargs
    note = "" if paper else f" (stand-in for the paper's {dataset_label(PAPER[0])})"
    width = f", width {cfg.model_kwargs['width']}" if "width" in cfg.model_kwargs else ""
    ax.set_title(f"{dataset_label(cfg.dataset)}{note}{width}: {method_label(cfg.method)} run after epoch "
                 f"{cfg.at_epoch}/{cfg.epochs};\nminibatch Hessian (B = {cfg.batch_size}, {cfg.hessian_mode} mode), "
                 f"{cfg.minibatches} minibatch(es) × {cfg.starts} random starts", fontsize=9)
    fig.tight_layout()
    return fig


def run(cfg: Config, output, opts) -> dict:
    """Train every (model, seed) run up to ``at_epoch`` (or reuse its probe file) and write the outputs."""
    t_start = time.perf_counter()
    out = output.path
    cells = [(m, s) for m in cfg.models for s in cfg.seeds]
    rows, references, probe_seconds = [], {}, {}
    bar = progress_bar(len(cells), desc="figure5 runs", unit="run", enabled=opts.progress)
    try:
        for model, seed in cells:
            result = measure(cfg, model, seed, out, opts)
            rows += tidy_records(model, seed, result)
            references[f"{model}-s{seed}"] = {"epoch": result["epoch"], "step": result["step"],
                                              "test_accuracy_at_epoch": result["metrics"]["test_accuracy"],
                                              "minibatch_references": [mb["reference"]
                                                                       for mb in result["minibatches"]]}
            probe_seconds[f"{model}-s{seed}"] = result["probe_seconds"]
            bar.update(1)
    finally:
        bar.close()
    output.csv("records.csv", ["model", "seed", "minibatch", "start", "q", "alignment", "eigenvalue_estimate"],
               rows)
    all_curves = {m: curves(rows, m, cfg.q_max) for m in cfg.models}
    stem = f"figure5_{cfg.dataset}"
    output.figure(plot(cfg, all_curves), stem)
    summary = output.summary({
        "figure": "Figure 5", "config": asdict(cfg), "dataset": cfg.dataset, "models": list(cfg.models),
        "paper_setting": {"dataset": PAPER[0], "models": list(PAPER[1]), "at_epoch": PAPER[2]},
        "alignment_by_q": all_curves,
        "q_for_mean_alignment": {m: {f"{lvl}": first_q_reaching(c.get("random", []), lvl) for lvl in (0.5, 0.9, 0.99)}
                                 for m, c in all_curves.items()},
        "references": references,
        "measurements": {
            "hessian": f"minibatch Hessian of the mean loss over {cfg.batch_size} unaugmented training images "
                       f"({cfg.hessian_mode} mode) at the parameters after epoch {cfg.at_epoch}",
            "reference": f"v1 by Lanczos to relative Ritz residual <= {cfg.ref_tol} "
                         f"(at most {cfg.ref_max_iters} products)",
            "estimate": "Algorithm 1 iterate after q Hessian-vector products from a random unit vector (or the "
                        "run's current v_hat: 'warm'); alignment = Align(v_q, v1) (Sec. 4.3)",
            "band": "Student-t 95% CI of the mean over all random starts of all minibatches and seeds",
        },
        "files": {"figure": f"{stem}.png", "records": "records.csv"},
        "probe_seconds": probe_seconds,
    }, opts.device, t_start)
    print(f"wrote {out}/{summary['files']['figure']} (+ .pdf), records.csv, summary.json "
          f"({summary['wall_seconds_this_invocation']:.0f} s)")
    for model, cur in summary["alignment_by_q"].items():
        for kind, c in cur.items():
            print(f"  {model_label(model)} {kind}: " + ", ".join(f"q={x['q']}: {x['mean']:.3f}" for x in c))
    return summary


main = command("figures.figure5", __doc__, Config, run)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.figure5")
