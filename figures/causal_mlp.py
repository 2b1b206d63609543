"""The paper's causal chain on Figure 2's MNIST MLP: discrete SAM, Eigen-SAM (Algorithm 2)
and the ideal Eigen-SAM next to SAM-SDE3 (Eq. 4), the aligned SDEs of Corollary 4.1.1
(Eq. 5, Eq. 6) and the Eigen-SAM SDE.

    python -m figures.causal_mlp                 # quick default (2 CPU cores)
    python -m figures.causal_mlp --full          # a longer configuration (GPU)

Same model, data, x₀, η = 0.01, ρ = 0.2, B = 128 and metrics as ``figures.figure2``
(whose loading, aggregation and plotting this reuses); every method runs ``seeds``
seeds; discrete methods share the minibatch stream (keyed by (seed, step)), SDEs theirs
(keyed by (seed, sub-step), the same K for all of them). Besides the six Figure 2
metrics, each discrete method records ``alignment`` = Align(ε_γ, v₁(H_γ)) (paper
Sec. 4.3) of the perturbation it used at the step before each record, with v₁ of that
step's minibatch Hessian (Lanczos), and each aligned SDE its eigen-gap and Lanczos
residuals at every sub-step (``runs/*.json``, ``eigen_history``).

What the quick default cuts (the eigen-SDEs pay a Lanczos top-2 eigenpair per minibatch
and sub-step, ≈ 20–100 Hessian-vector products each, see ``benchmarks.causal``):
40 steps instead of Figure 2's 500 (t = 0.4), K = 2 minibatches per sub-step for every
SDE (8 in Figure 2; 2 is the least that gives a covariance), Lanczos tolerance 1e-2
relative residual (at most 60 products), and the full-batch eigenvector of the ideal
Eigen-SAM and the Eigen-SAM SDE taken on a fixed subset of 256 training examples. Time:
one seed of the seven methods at 20 steps took ≈ 210 s of CPU (one thread) here, so the
quick default is *estimated* at ≈ 15 min in one single-threaded process on an idle
machine (two processes with ``--only-seeds``, one per core, about halve it); ``--threads
1`` (default) avoids OpenMP stalls on a shared machine. Eigen-SAM (Algorithm 2) uses
α = 0.2, q = 5 and p = 10 (the paper's p = 100 would refresh once in this horizon).

Outputs in ``--out`` (default ``runs/causal_mlp``): ``causal_mlp.png``/``.pdf`` (the six
metrics + alignment), ``records.csv`` (tidy), ``discrepancy.md`` and ``summary.json``
(configuration, versions, wall times, discrepancy tables against each discrete method,
the answers to the three questions with seed noise), ``runs/`` per (method, seed) —
rerunning with the same ``--out`` resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sdesam.curvature import alignment
from sdesam.registry import make_dynamics
from sdesam.eigenpairs import minibatch_top_eigenpairs
from sdesam.metrics import FIGURE2_METRICS, ClassificationMetrics
from sdesam.simulate import RECORD_FIELDS, RecordWriter, record_steps, run_trajectory

from . import figure2
from sdesam.parallel import resolve_device

from .common import check_counts, save_figure, write_json_atomic, write_summary

DISCRETE = ("sam", "eigen_sam", "ideal_eigen_sam")
SDES = ("sam_sde3", "aligned_sde5", "aligned_sde6", "eigen_sam_sde")
DYNAMICS = DISCRETE + SDES
LABELS = {"sam": "discrete SAM", "eigen_sam": "Eigen-SAM (Alg. 2)", "ideal_eigen_sam": "ideal Eigen-SAM",
          "sam_sde3": "SAM-SDE3 (Eq. 4)", "aligned_sde5": "aligned SDE (Eq. 5)",
          "aligned_sde6": "aligned SDE (Eq. 6)", "eigen_sam_sde": "Eigen-SAM SDE"}
COLORS = {"sam": "black", "eigen_sam": "tab:green", "ideal_eigen_sam": "tab:olive", "sam_sde3": "tab:red",
          "aligned_sde5": "tab:blue", "aligned_sde6": "tab:cyan", "eigen_sam_sde": "tab:purple"}
METRICS = FIGURE2_METRICS + ("alignment",)


@dataclass
class Config:
    """Everything that determines the result (saved in summary.json and checked on resume)."""

    eta: float = 0.01
    rho: float = 0.2
    alpha: float = 0.2
    p: int = 10
    q: int = 5
    seeds: int = 3
    steps: int = 40
    record_every: int = 20
    batch_size: int = 128
    n_batches: int = 2
    substeps: int = 1
    eig_tol: float = 1e-2
    eig_max_iters: int = 60
    full_hessian_examples: int = 256
    hessian_examples: int = 1024
    metric_eig_tol: float = 1e-3
    init_seed: int = 0
    dtype: str = "float32"
    dynamics: tuple = DYNAMICS

    @classmethod
    def full(cls) -> "Config":
        return cls(seeds=5, steps=500, record_every=50, n_batches=8, eig_tol=1e-3, eig_max_iters=100,
                   full_hessian_examples=2048, hessian_examples=4096)


def make_all_dynamics(cfg: Config, problem) -> list:
    gen = torch.Generator().manual_seed(cfg.init_seed + 1)
    subset = torch.randperm(problem.n_train, generator=gen)[:cfg.full_hessian_examples].to(problem.device)
    eig = {"eig_method": "lanczos", "eig_tol": cfg.eig_tol, "eig_max_iters": cfg.eig_max_iters}
    sde = {"n_batches": cfg.n_batches, "substeps": cfg.substeps}
    kwargs = {"sam": {}, "eigen_sam": {"alpha": cfg.alpha, "p": cfg.p, "q": cfg.q},
              "ideal_eigen_sam": {"alpha": cfg.alpha, "hessian_subset": subset, **eig},
              "sam_sde3": sde, "aligned_sde5": {**sde, **eig}, "aligned_sde6": {**sde, **eig},
              "eigen_sam_sde": {**sde, **eig, "alpha": cfg.alpha, "hessian_subset": subset}}
    return [make_dynamics(name, problem, eta=cfg.eta, rho=cfg.rho, **kwargs[name]) for name in cfg.dynamics]


class AlignmentProbe:
    """Align(ε_γ, v₁(H_γ)) of the perturbation a discrete method uses, measured at the
    steps just before the recorded ones (a Lanczos run there), through the method's
    ``observer`` hook: the method's own rule and eigenvector estimate are what is measured."""

    def __init__(self, dyn, steps, tol: float, max_iters: int):
        self.dyn, self.wanted = dyn, {k - 1 for k in steps if k > 0}
        self.tol, self.max_iters = tol, max_iters
        self.value = math.nan
        dyn.observer = self._observe

    def _observe(self, step, x, batch, eps):
        if step in self.wanted:
            p = self.dyn.problem
            gen = torch.Generator(device=p.device).manual_seed(step)
            v1 = minibatch_top_eigenpairs(p, x[0], batch[0], method="lanczos", tol=self.tol,
                                          max_iters=self.max_iters, generator=gen).vector
            self.value = float(alignment(eps[0], v1))


def _metrics_for(dyn, base, steps, cfg):
    probe = AlignmentProbe(dyn, steps, cfg.eig_tol, cfg.eig_max_iters) if dyn.name in DISCRETE else None

    def measure(x):
        out = dict(base(x))
        if probe is not None:
            out["alignment"] = probe.value
            probe.value = math.nan
        hist = getattr(dyn, "eigen_history", None)
        if hist:
            out["eig_relative_gap_min"] = hist[-1]["relative_gap_min"]
            out["eig_relative_residual_max"] = hist[-1]["relative_residual_max"]
        return out
    return measure


# ------------------------------------------------------------------------------------
# Tables and answers
# ------------------------------------------------------------------------------------
def discrepancy_tables(records: list[dict]) -> dict:
    """{discrete method: figure2.discrepancy_table(records, reference=method)}: for every
    metric and every other dynamics, mean over recorded steps t > 0 of |seed-mean
    difference| / the metric's range over all methods; ``sam_seed_se`` there is the same
    normalisation of the reference's seed standard error."""
    present = {r["dynamics"] for r in records}
    return {ref: figure2.discrepancy_table(records, reference=ref) for ref in DISCRETE if ref in present}


def lambda_drop(records: list[dict]) -> dict:
    """λ₁(T) − λ₁(0) per dynamics: seed mean and standard error."""
    c = figure2.curves(records)
    out = {}
    for (dyn, metric), (steps, vals) in c.items():
        if metric != "top_eigenvalue":
            continue
        drop = vals[:, -1] - vals[:, 0]
        se = float(np.std(drop, ddof=1) / math.sqrt(len(drop))) if len(drop) > 1 else math.nan
        out[dyn] = {"mean": float(np.mean(drop)), "se": se, "seeds": len(drop)}
    return out


def answers(tables: dict, drops: dict) -> dict:
    """The issue's three questions, answered from the measured tables (per metric)."""
    out = {}
    sam = tables.get("sam", {})
    q1 = {m: {"sam_sde3": row.get("sam_sde3"), "aligned_sde5": row.get("aligned_sde5"),
              "sam_seed_se": row["sam_seed_se"],
              "sde3_closer": (row.get("sam_sde3") is not None and row.get("aligned_sde5") is not None
                              and row["sam_sde3"] < row["aligned_sde5"])} for m, row in sam.items()}
    out["Q1 does SAM-SDE3 track SAM better than Eq. 5?"] = q1
    q2 = {}
    for ref in ("eigen_sam", "ideal_eigen_sam"):
        if ref in tables:
            q2[ref] = {m: {"to_eq5_from_" + ref: row.get("aligned_sde5"),
                           "to_eq5_from_sam": sam.get(m, {}).get("aligned_sde5"),
                           "closer_than_sam": (row.get("aligned_sde5") is not None and m in sam
                                               and row["aligned_sde5"] < sam[m].get("aligned_sde5", math.inf)),
                           "seed_se_" + ref: row["sam_seed_se"]} for m, row in tables[ref].items()}
    out["Q2 is Eigen-SAM (and ideal Eigen-SAM) closer to Eq. 5 than SAM is?"] = q2
    if "aligned_sde5" in drops and "sam_sde3" in drops:
        a, b = drops["aligned_sde5"], drops["sam_sde3"]
        out["Q3 does λ1 fall faster under Eq. 5 than under Eq. 4?"] = {
            "drop_eq5": a, "drop_eq4": b, "difference": a["mean"] - b["mean"],
            "difference_se": math.sqrt(a["se"] ** 2 + b["se"] ** 2),
            "eq5_falls_faster": a["mean"] < b["mean"]}
    return out


def format_tables(tables: dict) -> str:
    lines = []
    for ref, table in tables.items():
        others = [d for d in DYNAMICS if any(d in row for row in table.values())]
        lines.append(f"\nreference: {LABELS[ref]} (mean |Δ| / range; lower is closer)")
        lines.append("| metric | " + " | ".join(others) + " | ref. seed s.e. |")
        lines.append("|" + "---|" * (len(others) + 2))
        for metric, row in table.items():
            lines.append(f"| {metric} | " + " | ".join(f"{row.get(o, float('nan')):.4f}" for o in others)
                         + f" | {row['sam_seed_se']:.4f} |")
    return "\n".join(lines)


def plot(records: list[dict], cfg: Config, hessian_examples: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    c = figure2.curves(records)
    titles = {"train_loss": "training loss", "test_loss": "test loss", "test_accuracy": "test accuracy (%)",
              "param_norm": r"parameter norm $\|x\|_2$", "grad_norm": r"full-batch $\|\nabla f(x)\|_2$",
              "top_eigenvalue": rf"$\lambda_1$ ({hessian_examples} train examples)",
              "alignment": r"Align($\epsilon_\gamma$, $v_1(H_\gamma)$), discrete methods"}
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5))
    for ax, metric in zip(axes.flat, METRICS):
        for dyn in cfg.dynamics:
            if (dyn, metric) not in c:
                continue
            steps, vals = c[dyn, metric]
            keep = ~np.all(np.isnan(vals), 0)
            scale = 100.0 if metric == "test_accuracy" else 1.0
            mean = np.nanmean(vals[:, keep], 0) * scale
            t = steps[keep] * cfg.eta
            ls = "--" if dyn in SDES else "-"
            ax.plot(t, mean, ls, color=COLORS[dyn], label=LABELS[dyn], lw=1.5, marker="o", ms=3)
            if vals.shape[0] > 1:
                sd = np.nanstd(vals[:, keep], 0, ddof=1) * scale
                ax.fill_between(t, mean - sd, mean + sd, color=COLORS[dyn], alpha=0.12, lw=0)
        ax.set_title(titles[metric])
        ax.set_xlabel(r"time $t = k\eta$")
        ax.grid(alpha=0.3)
    axes.flat[-1].axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"MLP 784-784-10 GeLU on MNIST: η = {cfg.eta}, ρ = {cfg.rho}, α = {cfg.alpha}, B = {cfg.batch_size}, "
                 f"K = {cfg.n_batches}, Lanczos tol {cfg.eig_tol}; mean ± 1 s.d. over {cfg.seeds} seeds")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------
def run(cfg: Config, out: Path, *, device: torch.device, data_dir=None, progress: bool = True,
        collect: bool = False, only_seeds=None, reverse: bool = False) -> dict:
    """Run (or continue) every (method, seed) pair and write the outputs; with ``collect``
    only aggregate the pairs that have finished (the summary lists the missing ones); with
    ``only_seeds`` run only those seeds (e.g. two processes on different seeds of one
    ``out``) and aggregate whatever has finished."""
    t_start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    figure2._check_resume(out, cfg)
    problem = figure2.load_problem(cfg, device, data_dir)
    base = ClassificationMetrics(problem, hessian_examples=cfg.hessian_examples, eig_tol=cfg.metric_eig_tol,
                                 seed=cfg.init_seed)
    dynamics = make_all_dynamics(cfg, problem)
    steps = record_steps(cfg.steps, cfg.record_every)
    pairs = [(d, s) for s in range(cfg.seeds) for d in dynamics]      # seeds outermost: partial runs stay balanced
    if reverse:                 # a second process on the same --out takes the pairs from the other end
        pairs = pairs[::-1]
    bar = tqdm(total=len(pairs) * len(steps), desc="causal_mlp", unit="record", disable=not progress)
    runs, missing = {}, []
    try:
        for dyn, seed in pairs:
            run_id = f"{dyn.name}-seed{seed}"
            done = out / "runs" / f"{run_id}.json"
            if done.exists():
                runs[run_id] = json.loads(done.read_text())
                bar.update(len(steps))
                continue
            if collect or (only_seeds is not None and seed not in only_seeds):
                missing.append(run_id)
                continue
            bar.set_postfix_str(run_id)
            t0 = time.perf_counter()
            ckpt = out / "runs" / f"{run_id}.pt"
            if hasattr(dyn, "eigen_history"):
                dyn.eigen_history.clear()
            recs = run_trajectory(dyn, steps=steps, metrics=_metrics_for(dyn, base, steps, cfg), seed=seed,
                                  checkpoint=ckpt, on_record=lambda k: bar.update(1))
            runs[run_id] = {"dynamics": dyn.name, "seed": seed, "config": _jsonable(dyn.config()),
                            "wall_seconds": time.perf_counter() - t0, "records": recs,
                            "eigen_history": list(getattr(dyn, "eigen_history", []))}
            write_json_atomic(runs[run_id], done)
            ckpt.unlink(missing_ok=True)
    finally:
        bar.close()
    records = [r for run_ in runs.values() for r in run_["records"] if r["metric"] in METRICS]
    tmp = out / "records.csv.tmp"
    tmp.unlink(missing_ok=True)
    with RecordWriter(tmp) as w:
        w.write(records)
    tmp.replace(out / "records.csv")
    save_figure(plot(records, cfg, base.config()["hessian_examples"]), out, "causal_mlp")
    tables = discrepancy_tables(records)
    drops = lambda_drop(records)
    text = format_tables(tables)
    (out / "discrepancy.md").write_text(text + "\n")
    eig_diag = {}
    for run_id, r in runs.items():
        h = r.get("eigen_history") or []
        if h:
            eig_diag[run_id] = {"relative_gap_min": min(x["relative_gap_min"] for x in h),
                                "relative_residual_max": max(x["relative_residual_max"] for x in h),
                                "lanczos_hvps_per_substep_mean": float(np.mean([x["eig_hvps"] for x in h]))}
    align = {}
    for dyn in DISCRETE:
        vals = [r["value"] for r in records if r["dynamics"] == dyn and r["metric"] == "alignment"
                and not math.isnan(r["value"])]
        if vals:
            align[dyn] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                          "n": len(vals)}
    summary = {
        "figure": "causal chain on the MNIST MLP", "config": asdict(cfg), "metrics": base.config(),
        "dynamics": {d.name: _jsonable(d.config()) for d in dynamics}, "problem": problem.config(),
        "run_wall_seconds": {k: v["wall_seconds"] for k, v in runs.items()},
        "discrepancy": tables, "discrepancy_definition": discrepancy_tables.__doc__.strip(),
        "lambda1_drop": drops, "answers": answers(tables, drops), "alignment": align,
        "eigen_diagnostics": eig_diag, "record_fields": list(RECORD_FIELDS), "missing_runs": missing,
    }
    summary = write_summary(summary, out, device, t_start)
    summary["table_text"] = text
    return summary


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/causal_mlp"))
    ap.add_argument("--full", action="store_true", help="longer configuration (for a GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    for f in fields(Config):
        if f.name == "dynamics":
            ap.add_argument("--dynamics", nargs="+", choices=DYNAMICS, default=None)
        else:
            ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                            help=f"default {f.default} (quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--collect", action="store_true", help="only aggregate the finished runs in --out")
    ap.add_argument("--only-seeds", type=int, nargs="+", default=None,
                    help="run only these seeds in this invocation (aggregates every finished run)")
    ap.add_argument("--reverse", action="store_true", help="take the (method, seed) pairs in reverse order")
    ap.add_argument("--no-progress", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config.full() if args.full else Config()
    for f in fields(Config):
        v = getattr(args, f.name)
        if v is not None:
            setattr(cfg, f.name, tuple(v) if f.name == "dynamics" else v)
    check_counts(cfg)
    summary = run(cfg, args.out, device=resolve_device(args.device), data_dir=args.data_dir,
                  progress=not args.no_progress, collect=args.collect, only_seeds=args.only_seeds,
                  reverse=args.reverse)
    print(f"wrote {args.out}/causal_mlp.png, .pdf, records.csv, discrepancy.md, summary.json "
          f"({summary['wall_seconds_this_invocation']:.0f} s)")
    print(summary["table_text"])
    print(json.dumps(summary["answers"], indent=1, default=str))
    return summary


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.causal_mlp")
