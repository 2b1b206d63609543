"""Figure 2: discrete SAM against the second- and third-order SAM SDEs on MNIST.

    python -m figures.figure2                 # quick default (CPU, minutes)
    python -m figures.figure2 --full          # the paper-scale configuration (GPU)

The MLP 784-784-10 with GeLU (``sdesam.models.MLP``) on MNIST, cross-entropy, η = 0.01,
ρ = 0.2 (ρ ≈ η^{1/3}); discrete SAM (paper Eq. 1), SAM-SDE2 (Eq. 3) and SAM-SDE3
(Eq. 4) start from the same initialisation and are run with several seeds each. The
six metrics of ``sdesam.metrics.ClassificationMetrics`` are recorded at regular steps.

Choices the paper leaves open (and why):
* batch size B = 128, i.i.d. uniform minibatches every step (the SDE theory's model);
* K minibatches per Euler sub-step for the SDE expectations (quick 8, full 32): K
  sets the Monte Carlo error of the drift, whose variance the drift-noise
  correction removes from the diffusion (docs/math.md §4);
* one Euler sub-step per η (m = 1) in the quick run, m = 2 in the full run;
* the horizon: quick 500 steps (t = 5, about one epoch), full 3000 steps (t = 30);
* inputs scaled to [0, 1] and standardised with MNIST's training mean/std
  (``sdesam.mnist_mlp``, the one builder of this problem).

Outputs in ``--out`` (default ``runs/figure2``): ``figure2.png``/``.pdf``, ``records.csv``
(tidy: dynamics, seed, step, time, metric, value), ``summary.json`` (configuration,
versions, device, wall times, discrepancy table) and ``runs/`` with one file per
finished (dynamics, seed) run; an interrupted invocation resumes from there (and
from per-run checkpoints) when rerun with the same ``--out``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from sdesam._checks import check_choice, check_int, check_nonnegative, check_positive
from sdesam._progress import progress as progress_bar
from sdesam.experiment import command, read_json
from sdesam.metrics import FIGURE2_METRICS, ClassificationMetrics
from sdesam.mnist_mlp import mnist_mlp_problem
from sdesam.problem import ModuleProblem
from sdesam.registry import make_dynamics
from sdesam.simulate import RECORD_FIELDS, RecordWriter, record_steps, run_trajectory

DYNAMICS = ("sam", "sam_sde2", "sam_sde3")
LABELS = {"sam": "discrete SAM", "sam_sde2": "SAM-SDE2 (Eq. 3)", "sam_sde3": "SAM-SDE3 (Eq. 4)"}
COLORS = {"sam": "black", "sam_sde2": "tab:blue", "sam_sde3": "tab:red"}


@dataclass
class Config:
    """Everything that determines the result (saved in summary.json and checked on resume)."""

    eta: float = 0.01
    rho: float = 0.2
    seeds: tuple = (0, 1, 2)
    steps: int = 500
    record_every: int = 50
    batch_size: int = 128
    n_batches: int = 8
    substeps: int = 1
    hessian_examples: int = 1024
    eig_tol: float = 1e-3
    init_seed: int = 0
    dtype: str = "float32"
    dynamics: tuple = DYNAMICS

    @classmethod
    def full(cls) -> "Config":
        return cls(seeds=(0, 1, 2, 3, 4), steps=3000, record_every=100, n_batches=32, substeps=2,
                   hessian_examples=4096)

    def validate(self) -> "Config":
        """Check every value before anything is written (ValueError naming the option)."""
        check_positive("eta", self.eta)
        check_nonnegative("rho", self.rho)
        check_positive("eig_tol", self.eig_tol)
        check_choice("dtype", self.dtype, {"float32", "float64"})
        check_int("n_batches (K, for a covariance)", self.n_batches, 2)
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct integers >= 0, got {list(self.seeds)}")
        for name in self.dynamics:
            check_choice("dynamics", name, DYNAMICS)
        if "sam" not in self.dynamics:
            raise ValueError("--dynamics must include sam (the reference of the discrepancy table)")
        return self


def load_problem(cfg: Config, device, data_dir=None, dataset: str = "mnist") -> ModuleProblem:
    """The 784-784-10 GeLU MLP on MNIST (train 60k, test 10k), initialised from init_seed."""
    return mnist_mlp_problem(hidden=784, batch_size=cfg.batch_size, dtype=cfg.dtype, device=device,
                             dataset=dataset, data_dir=data_dir, init_seed=cfg.init_seed)


def make_all_dynamics(cfg: Config, problem: ModuleProblem) -> list:
    out = []
    for name in cfg.dynamics:
        kw = {} if name == "sam" else {"n_batches": cfg.n_batches, "substeps": cfg.substeps}
        out.append(make_dynamics(name, problem, eta=cfg.eta, rho=cfg.rho, **kw))
    return out


# ------------------------------------------------------------------------------------
# Aggregation
# ------------------------------------------------------------------------------------
def curves(records: list[dict]) -> dict:
    """{(dynamics, metric): (steps (S,), values (seeds, S))} from tidy records."""
    out: dict = {}
    keys = sorted({(r["dynamics"], r["metric"]) for r in records})
    for dyn, metric in keys:
        rows = [r for r in records if r["dynamics"] == dyn and r["metric"] == metric]
        steps = sorted({r["step"] for r in rows})
        seeds = sorted({r["seed"] for r in rows})
        table = {(r["seed"], r["step"]): r["value"] for r in rows}
        vals = np.array([[table.get((s, k), np.nan) for k in steps] for s in seeds])
        out[dyn, metric] = (np.array(steps), vals)
    return out


def discrepancy_table(records: list[dict], reference: str = "sam") -> dict:
    """Per metric and SDE: mean over recorded steps t > 0 of |mean_seeds SDE − mean_seeds SAM|,
    divided by the metric's range (max − min over the recorded steps of all dynamics'
    seed-mean curves). ``sam_seed_se`` is the same normalisation applied to the standard
    error of discrete SAM's seed mean: differences of that size are seed noise."""
    c = curves(records)
    table = {}
    for metric in FIGURE2_METRICS:
        if (reference, metric) not in c:
            continue
        steps, ref = c[reference, metric]
        ref_mean = np.nanmean(ref, 0)
        means = {dyn: np.nanmean(v, 0) for (dyn, m), (_, v) in c.items() if m == metric}
        stacked = np.concatenate([m[None] for m in means.values()])
        rng = float(np.nanmax(stacked) - np.nanmin(stacked))
        later = steps > 0
        row = {"range": rng}
        for dyn, mean in means.items():
            if dyn == reference:
                continue
            row[dyn] = float(np.mean(np.abs(mean - ref_mean)[later]) / rng) if rng > 0 else float("nan")
        se = np.nanstd(ref, 0, ddof=1) / math.sqrt(ref.shape[0]) if ref.shape[0] > 1 else np.full_like(ref_mean, np.nan)
        row["sam_seed_se"] = float(np.mean(se[later]) / rng) if rng > 0 else float("nan")
        table[metric] = row
    return table


def format_table(table: dict, sdes=("sam_sde2", "sam_sde3")) -> str:
    head = f"| metric | {' | '.join(sdes)} | closer | SAM seed s.e. |"
    lines = [head, "|" + "---|" * (len(sdes) + 3)]
    for metric, row in table.items():
        vals = [row.get(s, float("nan")) for s in sdes]
        closer = sdes[int(np.nanargmin(vals))] if not all(np.isnan(vals)) else "-"
        lines.append(f"| {metric} | " + " | ".join(f"{v:.4f}" for v in vals)
                     + f" | {closer} | {row['sam_seed_se']:.4f} |")
    return "\n".join(lines)


def plot(records: list[dict], cfg: Config, hessian_examples: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = curves(records)
    titles = {"train_loss": ("training loss", "cross-entropy (nats)"),
              "test_loss": ("test loss", "cross-entropy (nats)"),
              "test_accuracy": ("test accuracy", "accuracy (%)"),
              "param_norm": ("parameter norm", r"$\|x\|_2$"),
              "grad_norm": ("gradient norm (full batch)", r"$\|\nabla f(x)\|_2$"),
              "top_eigenvalue": ("top Hessian eigenvalue", rf"$\lambda_1$ ({hessian_examples} train examples)")}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, metric in zip(axes.flat, FIGURE2_METRICS):
        for dyn in cfg.dynamics:
            if (dyn, metric) not in c:
                continue
            steps, vals = c[dyn, metric]
            scale = 100.0 if metric == "test_accuracy" else 1.0
            t = steps * cfg.eta
            mean = np.nanmean(vals, 0) * scale
            ax.plot(t, mean, color=COLORS.get(dyn), label=LABELS.get(dyn, dyn), lw=1.6)
            if vals.shape[0] > 1:
                sd = np.nanstd(vals, 0, ddof=1) * scale
                ax.fill_between(t, mean - sd, mean + sd, color=COLORS.get(dyn), alpha=0.18, lw=0)
        title, ylabel = titles[metric]
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(r"time $t = k\eta$")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.suptitle(f"MLP 784-784-10 GeLU on MNIST: η = {cfg.eta}, ρ = {cfg.rho}, B = {cfg.batch_size}, "
                 f"K = {cfg.n_batches}, m = {cfg.substeps}; mean ± 1 s.d. over {len(cfg.seeds)} seeds")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------
def run(cfg: Config, output, opts) -> dict:
    """Run (or continue) every (dynamics, seed) pair and write the outputs."""
    t_start = time.perf_counter()
    out = output.path
    (out / "runs").mkdir(exist_ok=True)
    problem = load_problem(cfg, opts.device, opts.data_dir)
    metrics = ClassificationMetrics(problem, hessian_examples=cfg.hessian_examples, eig_tol=cfg.eig_tol,
                                    seed=cfg.init_seed)
    dynamics = make_all_dynamics(cfg, problem)
    steps = record_steps(cfg.steps, cfg.record_every)
    pairs = [(d, s) for d in dynamics for s in cfg.seeds]
    bar = progress_bar(len(pairs) * len(steps), desc="figure2", unit="record", enabled=opts.progress)
    runs = {}
    try:
        for dyn, seed in pairs:
            run_id = f"{dyn.name}-seed{seed}"
            done = out / "runs" / f"{run_id}.json"
            if done.exists():
                runs[run_id] = read_json(done)
                bar.update(len(steps))
                continue
            bar.set_postfix_str(run_id)
            t0 = time.perf_counter()
            ckpt = out / "runs" / f"{run_id}.pt"
            resumed = ckpt.exists()
            recs = run_trajectory(dyn, steps=steps, metrics=metrics, seed=seed, checkpoint=ckpt,
                                  on_record=lambda k: bar.update(1))
            runs[run_id] = {"dynamics": dyn.name, "seed": seed, "config": dyn.config(),
                            "wall_seconds": time.perf_counter() - t0, "resumed": resumed, "records": recs}
            output.json(f"runs/{run_id}.json", runs[run_id])
            ckpt.unlink(missing_ok=True)
    finally:
        bar.close()
    records = [r for run_ in runs.values() for r in run_["records"] if r["metric"] in FIGURE2_METRICS]
    tmp = out / "records.csv.tmp"
    tmp.unlink(missing_ok=True)
    with RecordWriter(tmp) as w:
        w.write(records)
    tmp.replace(out / "records.csv")
    output.figure(plot(records, cfg, metrics.config()["hessian_examples"]), "figure2")
    table = discrepancy_table(records)
    hvps = [r["value"] for run_ in runs.values() for r in run_["records"] if r["metric"] == "top_eigenvalue_hvps"]
    summary = output.summary({
        "figure": "Figure 2", "metrics": metrics.config(),
        "dynamics": {d.name: d.config() for d in dynamics}, "problem": problem.config(),
        "run_wall_seconds": {k: v["wall_seconds"] for k, v in runs.items()},
        "lanczos_hvps_per_eigenvalue": {"min": min(hvps), "max": max(hvps), "mean": float(np.mean(hvps))},
        "discrepancy": table,
        "discrepancy_definition": discrepancy_table.__doc__.strip(),
        "record_fields": list(RECORD_FIELDS),
    }, opts.device, t_start)
    print(f"wrote {out}/figure2.png, figure2.pdf, records.csv, summary.json "
          f"({summary['wall_seconds_this_invocation']:.0f} s)")
    print("Discrepancy to discrete SAM (mean |Δ| / range; lower is closer):")
    print(format_table(summary["discrepancy"]))
    return summary


main = command("figures.figure2", __doc__, Config, run, choices={"dtype": ["float32", "float64"], "dynamics": DYNAMICS})


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.figure2")
