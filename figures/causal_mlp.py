"""The paper's causal chain on Figure 2's MNIST MLP: discrete SAM, Eigen-SAM (Algorithm 2)
and the ideal Eigen-SAM next to SAM-SDE3 (Eq. 4), the aligned SDEs of Corollary 4.1.1
(Eq. 5, Eq. 6) and the Eigen-SAM SDE.

    python -m figures.causal_mlp                 # quick default (see below for two processes)
    python -m figures.causal_mlp --full          # a longer configuration (GPU)

Same model, data, x₀, η = 0.01, ρ = 0.2, B = 128 and metrics as ``figures.figure2``
(whose loading, aggregation and plotting this reuses); every method runs ``seeds``
seeds; discrete methods share the minibatch stream (keyed by (seed, step)), SDEs theirs
(keyed by (seed, sub-step), the same K for all of them). Besides the six Figure 2
metrics, each discrete method records ``alignment`` = Align(ε_γ, v₁(H_γ)) (paper
Sec. 4.3) of the perturbation it used at the step before each record, with v₁ of that
step's minibatch Hessian (Lanczos), and each aligned SDE its eigen-gap and Lanczos
residuals at every sub-step (``runs/*.json``, ``eigen_history``).

The quick default (≈ 13 min in two single-threaded processes on 2 CPU cores, see
``docs/results/causal.md``): 200 steps (t = 2; Figure 2 runs 500), 5 seeds, K = 4
minibatches per sub-step for every SDE (8 in Figure 2), Lanczos to relative residual
1e-3 for λ₁ and λ₂ (at most 100 products), the full-batch eigenvector of the ideal
Eigen-SAM taken on a fixed subset of 256 training examples, records every 25 steps, and
the five dynamics the three questions need (SAM, Eigen-SAM, ideal Eigen-SAM, SAM-SDE3,
Eq. 5); ``--dynamics`` adds Eq. 6 and the Eigen-SAM SDE (a step of Eq. 6 costs what
one of Eq. 5 does, ≈ 0.45 s here, the Eigen-SAM SDE's ≈ 0.7 of that). Run it as two
processes on one ``--out``, each with ``--threads 1`` (torch otherwise takes every core
in each process, and two processes then oversubscribe the cores, measured ≈ 3× slower),
e.g. ``--only-seeds 0 1 2`` and ``--only-seeds 3 4``; the last to finish aggregates
everything (or ``--collect``). Eigen-SAM (Algorithm 2) uses α = 0.2, q = 5 and p = 10
(the paper's p = 100 would refresh twice in this horizon). ``summary.json`` counts, per
aligned-SDE run, the sub-steps at which some minibatch's v₁ was not resolved
(residual/gap > 0.1 or > 1: the bound on the angle to the exact v₁).

Outputs in ``--out`` (default ``runs/causal_mlp``): ``causal_mlp.png``/``.pdf`` (the six
metrics + alignment), ``records.csv`` (tidy), ``discrepancy.md`` and ``summary.json``
(configuration, versions, wall times, discrepancy tables against each discrete method,
the answers to the three questions with seed noise), ``runs/`` per (method, seed) —
rerunning with the same ``--out`` resumes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from sdesam._progress import progress as progress_bar
from sdesam.atomic import atomic_write_text
from sdesam.curvature import alignment
from sdesam.eigenpairs import minibatch_top_eigenpairs
from sdesam.experiment import command, jsonable, read_json
from sdesam.metrics import FIGURE2_METRICS, ClassificationMetrics
from sdesam.registry import make_dynamics
from sdesam.simulate import RECORD_FIELDS, RecordWriter, record_steps, run_trajectory

from . import figure2

DISCRETE = ("sam", "eigen_sam", "ideal_eigen_sam")
SDES = ("sam_sde3", "aligned_sde5", "aligned_sde6", "eigen_sam_sde")
DYNAMICS = DISCRETE + SDES
#: the dynamics the three questions of ``answers`` compare (the quick default)
QUESTIONS = ("sam", "eigen_sam", "ideal_eigen_sam", "sam_sde3", "aligned_sde5")
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
    seeds: tuple = (0, 1, 2, 3, 4)
    steps: int = 200
    record_every: int = 25
    batch_size: int = 128
    n_batches: int = 4
    substeps: int = 1
    eig_tol: float = 1e-3
    eig_max_iters: int = 100
    full_hessian_examples: int = 256
    hessian_examples: int = 1024
    probe_minibatches: int = 3
    metric_eig_tol: float = 1e-3
    init_seed: int = 0
    dtype: str = "float32"
    dynamics: tuple = QUESTIONS


    @classmethod
    def full(cls) -> "Config":
        return cls(steps=500, record_every=50, n_batches=8, full_hessian_examples=2048, hessian_examples=4096,
                   dynamics=DYNAMICS)

    def validate(self) -> "Config":
        from sdesam._checks import check_choice, check_int, check_positive
        check_positive("eta", self.eta)
        check_positive("eig_tol", self.eig_tol)
        check_choice("dtype", self.dtype, {"float32", "float64"})
        check_int("n_batches (K, for a covariance)", self.n_batches, 2)
        if any(s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct integers >= 0, got {list(self.seeds)}")
        return self


def full_hessian_subset(cfg: Config, problem):
    """The fixed training examples whose Hessian stands in for the full-batch Hessian."""
    gen = torch.Generator().manual_seed(cfg.init_seed + 1)
    return torch.randperm(problem.n_train, generator=gen)[:cfg.full_hessian_examples].to(problem.device)


def make_all_dynamics(cfg: Config, problem) -> list:
    subset = full_hessian_subset(cfg, problem)
    eig = {"eig_method": "lanczos", "eig_tol": cfg.eig_tol, "eig_max_iters": cfg.eig_max_iters}
    sde = {"n_batches": cfg.n_batches, "substeps": cfg.substeps}
    kwargs = {"sam": {}, "eigen_sam": {"alpha": cfg.alpha, "p": cfg.p, "q": cfg.q},
              "ideal_eigen_sam": {"alpha": cfg.alpha, "hessian_subset": subset, **eig},
              "sam_sde3": sde, "aligned_sde5": {**sde, **eig}, "aligned_sde6": {**sde, **eig},
              "eigen_sam_sde": {**sde, **eig, "alpha": cfg.alpha, "hessian_subset": subset}}
    return [make_dynamics(name, problem, eta=cfg.eta, rho=cfg.rho, **kwargs[name]) for name in cfg.dynamics]


class AlignmentProbe:
    """Assumption B.2 and the alignment, measured on a discrete method's own perturbations.

    At the steps just before the recorded ones, through the method's ``observer`` hook (the
    method's own rule and eigenvector estimate): for the step's minibatch γ and
    ``extra`` more minibatches drawn from the probe's own stream, the top two eigenpairs of
    each H_γ and of the Hessian over the fixed ``subset`` (the full-batch Hessian's
    stand-in), by batched Lanczos; records Align(ε_γ, v₁(H_γ)) of the step's perturbation
    (``alignment``, the record) and keeps every sample (``samples``): the relative gaps
    (λ₁ − λ₂)/‖H‖ of the minibatch and subset Hessians, and Align(u_γ, v₁) for both, with
    u_γ = g_γ/‖g_γ‖ of each minibatch."""

    def __init__(self, dyn, steps, tol: float, max_iters: int, subset_problem, extra: int = 3):
        self.dyn, self.wanted = dyn, {k - 1 for k in steps if k > 0}
        self.tol, self.max_iters = tol, max_iters
        self.sub, self.extra = subset_problem, extra
        self.value = math.nan
        self.samples: list[dict] = []
        dyn.observer = self._observe

    def _observe(self, step, x, batch, eps):
        if step not in self.wanted:
            return
        p = self.dyn.problem
        gen = torch.Generator().manual_seed(1_000_003 * (step + 1))
        more = p.sample_batches(self.extra, gen) if self.extra else batch[:0, :]
        batches = torch.cat([batch[:1], more.to(batch.device)])                          # (1 + extra, B)
        xs = x[0]
        mb = minibatch_top_eigenpairs(p, xs, batches, method="lanczos", tol=self.tol, max_iters=self.max_iters,
                                      generator=gen)
        every = torch.arange(self.sub.n_train, device=p.device)[None]
        full = minibatch_top_eigenpairs(self.sub, xs, every, method="lanczos", tol=self.tol,
                                        max_iters=self.max_iters, generator=gen)
        g = p.gradient(xs, batches)
        u = g / g.norm(dim=-1, keepdim=True)
        self.value = float(alignment(eps[0], mb.vector[0]))
        rel = lambda e: (e.gap / e.scale).tolist()                                       # noqa: E731
        self.samples.append({
            "step": step, "relative_gap_minibatch": rel(mb), "relative_gap_full": rel(full)[0],
            "relative_residual_minibatch": (mb.residual / mb.scale).tolist(),
            "relative_residual_full": float(full.residual[0] / full.scale[0]),
            "align_minibatch": alignment(u, mb.vector).tolist(),
            "align_full": alignment(u, full.vector[0].expand_as(u)).tolist(),
            "align_eps_minibatch": self.value, "align_eps_full": float(alignment(eps[0], full.vector[0]))})


def _metrics_for(dyn, base, steps, cfg, subset_problem):
    probe = (AlignmentProbe(dyn, steps, cfg.eig_tol, cfg.eig_max_iters, subset_problem, cfg.probe_minibatches)
             if dyn.name in DISCRETE else None)

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
    measure.probe = probe
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
    for (dyn, metric), (_, vals) in c.items():
        if metric != "top_eigenvalue":
            continue
        drop = vals[:, -1] - vals[:, 0]
        se = float(np.std(drop, ddof=1) / math.sqrt(len(drop))) if len(drop) > 1 else math.nan
        out[dyn] = {"mean": float(np.mean(drop)), "se": se, "seeds": len(drop)}
    return out


def _jackknife(records: list[dict], statistic) -> tuple[float, float]:
    """(statistic(records), its jackknife standard error over the seeds): the statistic
    recomputed with each seed left out (every dynamics loses the same seed)."""
    seeds = sorted({r["seed"] for r in records})
    full = statistic(records)
    if len(seeds) < 2:
        return full, math.nan
    loo = np.array([statistic([r for r in records if r["seed"] != s]) for s in seeds])
    n = len(seeds)
    return full, float(np.sqrt((n - 1) / n * ((loo - loo.mean()) ** 2).sum()))


def _verdict(value: float, se: float, yes: str, no: str) -> str:
    """A verdict only where the value is ≥ 3 standard errors from zero."""
    if not math.isfinite(se) or se == 0:
        return "not resolved (no standard error)"
    z = value / se
    return yes if z >= 3 else no if z <= -3 else f"not resolved ({z:+.1f} SE)"


def answers(records: list[dict]) -> dict:
    """The three questions of the causal chain, per metric, each with its jackknife
    standard error over the seeds and a verdict where it is ≥ 3 SE from zero:

    * Q1: discrepancy(Eq. 5 vs SAM) − discrepancy(SAM-SDE3 vs SAM) > 0 ⇔ SAM-SDE3 is closer;
    * Q2: discrepancy(Eq. 5 vs SAM) − discrepancy(Eq. 5 vs Eigen-SAM) > 0 ⇔ Eigen-SAM (or the
      ideal Eigen-SAM) is closer to Eq. 5 than SAM is;
    * Q3: the per-seed λ₁ drop under Eq. 5 minus that under Eq. 4 (paired: the SDEs share
      their random numbers seed by seed) < 0 ⇔ λ₁ falls faster under Eq. 5.
    """
    present = {r["dynamics"] for r in records}
    metrics = [m for m in FIGURE2_METRICS if any(r["metric"] == m for r in records)]
    out = {"Q1 does SAM-SDE3 track SAM better than Eq. 5?": {},
           "Q2 is Eigen-SAM (and ideal Eigen-SAM) closer to Eq. 5 than SAM is?": {},
           "Q3 does λ1 fall faster under Eq. 5 than under Eq. 4?": None}

    def disc(recs, ref, other, metric):
        return figure2.discrepancy_table(recs, reference=ref).get(metric, {}).get(other, math.nan)

    if {"sam", "sam_sde3", "aligned_sde5"} <= present:
        for m in metrics:
            value, se = _jackknife(records, lambda r, m=m: disc(r, "sam", "aligned_sde5", m)
                                   - disc(r, "sam", "sam_sde3", m))
            out["Q1 does SAM-SDE3 track SAM better than Eq. 5?"][m] = {
                "eq5_minus_sde3": value, "se": se, "eq5": disc(records, "sam", "aligned_sde5", m),
                "sde3": disc(records, "sam", "sam_sde3", m),
                "verdict": _verdict(value, se, "yes: SAM-SDE3 is closer", "no: Eq. 5 is closer")}
    for ref in ("eigen_sam", "ideal_eigen_sam"):
        if {"sam", ref, "aligned_sde5"} <= present:
            q2 = {}
            for m in metrics:
                value, se = _jackknife(records, lambda r, m=m, ref=ref: disc(r, "sam", "aligned_sde5", m)
                                       - disc(r, ref, "aligned_sde5", m))
                q2[m] = {"sam_minus_" + ref: value, "se": se, "from_sam": disc(records, "sam", "aligned_sde5", m),
                         "from_" + ref: disc(records, ref, "aligned_sde5", m),
                         "verdict": _verdict(value, se, f"yes: {ref} is closer to Eq. 5", "no: SAM is closer")}
            out["Q2 is Eigen-SAM (and ideal Eigen-SAM) closer to Eq. 5 than SAM is?"][ref] = q2
    drops = _per_seed_drops(records)
    if {"aligned_sde5", "sam_sde3"} <= set(drops):
        common = sorted(set(drops["aligned_sde5"]) & set(drops["sam_sde3"]))
        d = np.array([drops["aligned_sde5"][s] - drops["sam_sde3"][s] for s in common])
        se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else math.nan
        out["Q3 does λ1 fall faster under Eq. 5 than under Eq. 4?"] = {
            "drop_eq5_minus_drop_eq4": float(d.mean()), "se": se, "seeds": common,
            "verdict": _verdict(-float(d.mean()), se, "yes: λ₁ falls faster under Eq. 5",
                                "no: λ₁ falls faster under Eq. 4")}
    return out


def _per_seed_drops(records: list[dict]) -> dict:
    """{dynamics: {seed: λ₁(last recorded step) − λ₁(0)}}."""
    out: dict = {}
    for r in records:
        if r["metric"] == "top_eigenvalue":
            out.setdefault(r["dynamics"], {}).setdefault(r["seed"], {})[r["step"]] = r["value"]
    return {d: {s: v[max(v)] - v[min(v)] for s, v in by_seed.items()} for d, by_seed in out.items()}


def assumption_b2(runs: dict, tol: float) -> dict:
    """The distribution of the probe's samples over every discrete run: quantiles of the
    relative eigen-gaps of the minibatch and subset (full-batch) Hessians and of
    Align(u_γ, v₁) for both, and how often a gap exceeds ``tol`` and the solve's residual
    (v₁ then determined to that accuracy: ‖sin∠(ŷ, v₁)‖ ≤ residual/gap)."""
    samples = [s for r in runs.values() for s in r.get("probe", [])]
    if not samples:
        return {}
    mb = np.array([g for s in samples for g in s["relative_gap_minibatch"]])
    mb_res = np.array([g for s in samples for g in s["relative_residual_minibatch"]])
    full = np.array([s["relative_gap_full"] for s in samples])
    full_res = np.array([s["relative_residual_full"] for s in samples])
    al_mb = np.array([a for s in samples for a in s["align_minibatch"]])
    al_full = np.array([a for s in samples for a in s["align_full"]])
    q = [0.05, 0.25, 0.5, 0.75, 0.95]

    def quant(v):
        return dict(zip(map(str, q), np.quantile(v, q).tolist()))
    return {"samples": len(samples), "minibatch_hessians": int(mb.size), "tol": tol,
            "relative_gap_minibatch": quant(mb), "relative_gap_full": quant(full),
            "align_minibatch": quant(al_mb), "align_full": quant(al_full),
            "fraction_gap_resolved_minibatch": float(np.mean((mb > tol) & (mb > mb_res))),
            "fraction_gap_resolved_full": float(np.mean((full > tol) & (full > full_res)))}


def plot_b2(runs: dict, cfg: Config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    samples = [s for r in runs.values() for s in r.get("probe", [])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = {"minibatch Hessians H_γ": [g for s in samples for g in s["relative_gap_minibatch"]],
              f"Hessian of {cfg.full_hessian_examples} training examples": [s["relative_gap_full"] for s in samples]}
    for label, v in series.items():
        v = np.sort(np.asarray(v))
        axes[0].step(np.maximum(v, 1e-12), np.arange(1, v.size + 1) / v.size, where="post", label=label)
    axes[0].axvline(cfg.eig_tol, color="gray", ls=":", label=f"eigen-solver tolerance {cfg.eig_tol:g}")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("relative eigen-gap (λ₁ − λ₂)/‖H‖")
    axes[0].set_ylabel("fraction of samples ≤ x")
    axes[0].set_title("Assumption B.2: is λ₁ simple?")
    axes[0].legend(fontsize=7)
    for label, key in (("v₁ of H_γ (its own minibatch)", "align_minibatch"),
                       (f"v₁ of the {cfg.full_hessian_examples}-example Hessian", "align_full")):
        v = np.sort(np.asarray([a for s in samples for a in s[key]]))
        axes[1].step(v, np.arange(1, v.size + 1) / v.size, where="post", label=label)
    axes[1].set_xlabel("Align(u_γ, v₁),  u_γ = g_γ/‖g_γ‖")
    axes[1].set_title("alignment of SAM's direction with v₁")
    axes[1].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"MLP 784-784-10 on MNIST, along the discrete runs ({len(samples)} probed steps, "
                 f"{1 + cfg.probe_minibatches} minibatches each)", fontsize=9)
    fig.tight_layout()
    return fig


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
                 f"K = {cfg.n_batches}, Lanczos tol {cfg.eig_tol}; mean ± 1 s.d. over {len(cfg.seeds)} seeds")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------
def run(cfg: Config, output, opts) -> dict:
    """Run (or continue) every (method, seed) pair and write the outputs; ``--collect`` only
    aggregates the pairs that have finished (the summary lists the missing ones);
    ``--only-seeds`` runs only those seeds (e.g. two processes on different seeds of one
    ``--out``) and aggregates whatever has finished."""
    args = opts.args
    collect, only_seeds, reverse = args.collect, args.only_seeds, args.reverse
    device, progress, data_dir = opts.device, opts.progress, opts.data_dir
    out = output.path
    t_start = time.perf_counter()
    (out / "runs").mkdir(exist_ok=True)
    problem = figure2.load_problem(cfg, device, data_dir)
    base = ClassificationMetrics(problem, hessian_examples=cfg.hessian_examples, eig_tol=cfg.metric_eig_tol,
                                 seed=cfg.init_seed)
    dynamics = make_all_dynamics(cfg, problem)
    subset_problem = problem.subproblem(full_hessian_subset(cfg, problem), cfg.full_hessian_examples,
                                        name="full-batch Hessian subset")
    steps = record_steps(cfg.steps, cfg.record_every)
    pairs = [(d, s) for s in cfg.seeds for d in dynamics]      # seeds outermost: partial runs stay balanced
    if reverse:                 # a second process on the same --out takes the pairs from the other end
        pairs = pairs[::-1]
    bar = progress_bar(len(pairs) * len(steps), desc="causal_mlp", unit="record", enabled=progress)
    runs, missing = {}, []
    try:
        for dyn, seed in pairs:
            run_id = f"{dyn.name}-seed{seed}"
            done = out / "runs" / f"{run_id}.json"
            if done.exists():
                runs[run_id] = read_json(done)
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
            measure = _metrics_for(dyn, base, steps, cfg, subset_problem)
            recs = run_trajectory(dyn, steps=steps, metrics=measure, seed=seed,
                                  checkpoint=ckpt, on_record=lambda k: bar.update(1))
            runs[run_id] = {"dynamics": dyn.name, "seed": seed, "config": jsonable(dyn.config()),
                            "wall_seconds": time.perf_counter() - t0, "records": recs,
                            "eigen_history": list(getattr(dyn, "eigen_history", [])),
                            "probe": measure.probe.samples if measure.probe is not None else []}
            output.json(f"runs/{run_id}.json", runs[run_id])
            ckpt.unlink(missing_ok=True)
    finally:
        bar.close()
    records = [r for run_ in runs.values() for r in run_["records"] if r["metric"] in METRICS]
    tmp = out / "records.csv.tmp"
    tmp.unlink(missing_ok=True)
    with RecordWriter(tmp) as w:
        w.write(records)
    tmp.replace(out / "records.csv")
    output.figure(plot(records, cfg, base.config()["hessian_examples"]), "causal_mlp")
    b2 = assumption_b2(runs, cfg.eig_tol)
    if b2:
        output.figure(plot_b2(runs, cfg), "assumption_b2")
    tables = discrepancy_tables(records)
    drops = lambda_drop(records)
    text = format_tables(tables)
    atomic_write_text(out / "discrepancy.md", text + "\n")
    eig_diag = {}
    for run_id, r in runs.items():
        h = r.get("eigen_history") or []
        if h:
            bound = np.array([x.get("sin_bound_max", math.nan) for x in h])
            eig_diag[run_id] = {"relative_gap_min": min(x["relative_gap_min"] for x in h),
                                "relative_residual_max": max(x["relative_residual_max"] for x in h),
                                "substeps": len(h), "sin_bound_max": float(np.nanmax(bound)),
                                "substeps_unresolved_0.1": int(np.sum(~(bound <= 0.1))),
                                "substeps_unresolved_1": int(np.sum(~(bound <= 1.0))),
                                "lanczos_hvps_per_substep_mean": float(np.mean([x["eig_hvps"] for x in h]))}
    align = {}
    for dyn in DISCRETE:
        vals = [r["value"] for r in records if r["dynamics"] == dyn and r["metric"] == "alignment"
                and not math.isnan(r["value"])]
        if vals:
            align[dyn] = {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
                          "n": len(vals)}
    summary = {
        "figure": "causal chain on the MNIST MLP", "metrics": base.config(),
        "dynamics": {d.name: jsonable(d.config()) for d in dynamics}, "problem": problem.config(),
        "run_wall_seconds": {k: v["wall_seconds"] for k, v in runs.items()},
        "discrepancy": tables, "discrepancy_definition": discrepancy_tables.__doc__.strip(),
        "lambda1_drop": drops, "answers": answers(records), "alignment": align, "assumption_b2": b2,
        "eigen_diagnostics": eig_diag, "record_fields": list(RECORD_FIELDS), "missing_runs": missing,
    }
    summary = output.summary(summary, device, t_start)
    print(f"wrote {out}/causal_mlp.png, .pdf, records.csv, discrepancy.md, summary.json "
          f"({summary['wall_seconds_this_invocation']:.0f} s)")
    print(text)
    print(json.dumps(summary["answers"], indent=1, default=str))
    return summary


def _extra_arguments(ap) -> None:
    ap.add_argument("--collect", action="store_true", help="only aggregate the finished runs in --out")
    ap.add_argument("--only-seeds", type=int, nargs="+", default=None,
                    help="run only these seeds in this invocation (aggregates every finished run)")
    ap.add_argument("--reverse", action="store_true", help="take the (method, seed) pairs in reverse order")


main = command("figures.causal_mlp", __doc__, Config, run, add_arguments=_extra_arguments,
               choices={"dtype": ["float32", "float64"], "dynamics": DYNAMICS})


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("figures.causal_mlp")
