"""Weak error of Corollary 4.1.1's aligned SDEs (Eq. 5, Eq. 6) against discrete SAM as a
function of the measured alignment of SAM's perturbation with the minibatch Hessian's
top eigenvector (docs/eigen_sam_sde.md).

    python -m validation.alignment_sweep --out DIR            # quick default (2 CPU cores)
    python -m validation.alignment_sweep --out DIR --full     # more trajectories, finer Euler

The toy: ``sdesam.toys.logistic_problem`` (logistic regression, d = 3, n = 5, B = 3,
exact minibatch enumeration) with feature scales (κ, 0.6, 0.3). κ sets the data's
conditioning: for large κ the first coordinate dominates both the minibatch gradients
and the minibatch Hessians, so u_γ = g_γ/‖g_γ‖ lines up with v₁(H_γ); for κ ≈ 0.6 it
does not. For each κ, at one (η, ρ = c·η^{1/3}, T):

* measured alignment: E Align(u_γ, v₁(H_γ)) and E|cos∠(u_γ, v₁)| over every minibatch
  and every step of ``align_trajectories`` discrete SAM trajectories (exact over γ);
* the corollary's two conditions, on the same states: the O(ρ) gap
  ρ‖E[H_γu_γ − s*λ₁v₁]‖ (Eq. 5 → Eq. 6) and the O(ρ²) gap (ρ²/2)‖E[∇³f_γ[u_γ, u_γ] −
  ∇³f_γ[v₁, v₁]]‖ (SAM-SDE3 → Eq. 5), next to the size of SAM's own ρ term ρ‖E H_γu_γ‖;
* the weak errors E = max_k |E g(x_k) − E g(X_{kη})| of SAM-SDE3, Eq. 5 and Eq. 6 against
  discrete SAM (``validation.experiment.measure_setting``: bootstrap standard errors,
  SDEs sharing their Brownian increments).

Outputs in ``--out``: ``alignment_sweep.png``/``.pdf``, ``records.csv`` (tidy: kappa,
alignment, model, test, error, se), ``summary.json`` (configuration, versions, wall
time, every number) and ``runs/kappa=*.json`` (one per finished κ; a rerun resumes).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import torch

from sdesam.curvature import alignment
from sdesam.eigenpairs import minibatch_top_eigenpairs
from sdesam.experiment import command
from sdesam.montecarlo import ChunkPlan, standard_tests
from sdesam.parallel import Comm
from sdesam.registry import make_dynamics
from sdesam.rules import DirectionRule
from sdesam.toys import logistic_problem

from .experiment import Setting, _rng, _summarise, measure_setting, num_steps

MODELS = ("sam_sde3", "aligned_sde5", "aligned_sde6")
LABELS = {"sam_sde3": "SAM-SDE3 (Eq. 4)", "aligned_sde5": "Eq. 5", "aligned_sde6": "Eq. 6"}


@dataclass
class Config:
    kappas: tuple = (0.6, 1.2, 2.4, 4.8)
    eta: float = 0.1
    c: float = 1.0
    horizon: float = 1.0
    substeps: int = 4
    n_chunks: int = 2
    chunk_size: int = 5000
    blocks_per_chunk: int = 10
    n_boot: int = 500
    align_trajectories: int = 500
    seed: int = 0

    @classmethod
    def full(cls) -> "Config":
        return cls(kappas=(0.6, 0.85, 1.2, 1.7, 2.4, 3.4, 4.8), substeps=8, n_chunks=10, chunk_size=10_000,
                   n_boot=1000, align_trajectories=2000)

    @property
    def rho(self) -> float:
        return self.c * self.eta ** (1 / 3)

    def validate(self) -> "Config":
        from sdesam._checks import check_positive
        for k in self.kappas:
            check_positive("kappa", k)
        check_positive("eta", self.eta)
        check_positive("c", self.c)
        num_steps(self.horizon, self.eta)
        ChunkPlan(self.n_chunks, self.chunk_size, self.blocks_per_chunk)
        return self


def alignment_and_gaps(problem, cfg: Config) -> dict:
    """Alignment and the corollary's two drift gaps, averaged over the states of discrete
    SAM trajectories (every step, every trajectory) and exactly over the minibatches."""
    rho, steps = cfg.rho, int(round(cfg.horizon / cfg.eta))
    sam = make_dynamics("sam", problem, eta=cfg.eta, rho=rho)
    state = sam.init_state(problem.x0.expand(cfg.align_trajectories, -1), seed=cfg.seed + 17)
    batches = problem.enumerate_batches()
    acc = {k: [] for k in ("align", "abs_cos", "gap_rho", "gap_rho2", "sam_rho_term", "relative_gap_min")}
    for _ in range(steps):
        x = state.x[:, None, :]
        tv = problem.taylor(x, batches, "sam", rho, 2, components=True)
        eig = minibatch_top_eigenpairs(problem, x, batches, method="dense")
        tv1 = problem.taylor(x, batches, DirectionRule(), rho, 2, eigvec=eig.vector, components=True)
        s = torch.einsum("mkd,mkd->mk", tv.g, eig.vector).sign()
        u = tv.eps
        acc["align"].append(alignment(u, eig.vector).mean(1))
        acc["abs_cos"].append(torch.einsum("mkd,mkd->mk", u, eig.vector).abs().mean(1))
        acc["gap_rho"].append(rho * (tv.h - (s * eig.value)[..., None] * eig.vector).mean(1).norm(dim=-1))
        acc["gap_rho2"].append(0.5 * rho * rho * (tv.t - tv1.t).mean(1).norm(dim=-1))
        acc["sam_rho_term"].append(rho * tv.h.mean(1).norm(dim=-1))
        acc["relative_gap_min"].append((eig.gap / eig.scale).amin(1))
        sam.advance(state, 1)
    out = {k: float(torch.stack(v).mean()) for k, v in acc.items() if k != "relative_gap_min"}
    out["relative_gap_min"] = float(torch.stack(acc["relative_gap_min"]).min())
    return out


def run_kappa(kappa: float, index: int, cfg: Config, progress=None) -> dict:
    problem = logistic_problem(scales=(kappa, 0.6, 0.3))
    t0 = time.perf_counter()
    diag = alignment_and_gaps(problem, cfg)
    kw = {"n_batches": "exact", "substeps": cfg.substeps}
    setting = Setting(cfg.eta, cfg.rho, cfg.horizon, {m: (m, kw) for m in MODELS}, label=f"kappa={kappa:g}")
    plan = ChunkPlan(cfg.n_chunks, cfg.chunk_size, cfg.blocks_per_chunk)
    tests = standard_tests(problem, 0)
    res = measure_setting(problem, setting, tests=tests, plan=plan, key=(cfg.seed, 11, index), comm=Comm(),
                          progress=progress)
    entry, _ = _summarise(res, cfg.n_boot, _rng(cfg.seed, "eta", 1000 + index))
    return {"kappa": kappa, "problem": problem.config(), "diagnostics": diag, "errors": entry["errors"],
            "curves": entry["curves"], "wall_s": time.perf_counter() - t0, "model_wall_s": entry["wall_s"]}


def plot(results: list[dict], cfg: Config):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tests = list(results[0]["errors"][MODELS[0]])
    fig, axes = plt.subplots(1, len(tests) + 1, figsize=(5 * (len(tests) + 1), 4.2))
    # x: κ (log scale), labelled with the measured alignment (it saturates at large κ)
    al = [r["kappa"] for r in results]
    ticks = [f"{r['kappa']:g}\n({r['diagnostics']['align']:.3f})" for r in results]
    for ax, t in zip(axes, tests):
        for m in MODELS:
            y = [r["errors"][m][t]["error"] for r in results]
            se = [r["errors"][m][t]["se"] for r in results]
            ax.errorbar(al, y, yerr=se, marker="o", capsize=3, label=LABELS[m])
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xticks(al, ticks)
        ax.minorticks_off()
        ax.set_xlabel(r"κ  (measured E Align($u_\gamma$, $v_1(H_\gamma)$))")
        ax.set_title(f"weak error vs discrete SAM: {t}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    ax = axes[-1]
    for key, lab in (("gap_rho", r"$\rho\|E[H u - s^*\lambda_1 v_1]\|$ (Eq. 5→6)"),
                     ("gap_rho2", r"$\frac{\rho^2}{2}\|E[\nabla^3 f(u,u) - \nabla^3 f(v_1,v_1)]\|$ (Eq. 4→5)"),
                     ("sam_rho_term", r"$\rho\|E H u\|$ (SAM's $\rho$ term)")):
        ax.plot(al, [r["diagnostics"][key] for r in results], marker="s", label=lab)
    ax.set_yscale("log")
    ax.set_xscale("log")
    ax.set_xticks(al, ticks)
    ax.minorticks_off()
    ax.set_xlabel(r"κ  (measured E Align($u_\gamma$, $v_1(H_\gamma)$))")
    ax.set_title("drift gaps of the corollary (mean over SAM states)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.suptitle(f"logistic toy, features (κ, 0.6, 0.3), κ ∈ {list(cfg.kappas)}: η = {cfg.eta}, ρ = {cfg.rho:.3g}, "
                 f"T = {cfg.horizon}, m = {cfg.substeps}, M = {cfg.n_chunks * cfg.chunk_size}; bars ±1 bootstrap SE")
    fig.tight_layout()
    return fig


def run(cfg: Config, output, opts) -> dict:
    t_start = time.perf_counter()
    results = []
    for i, kappa in enumerate(cfg.kappas):
        name = f"runs/kappa={kappa:g}.json"
        if output.file(name).exists():
            results.append(json.loads(output.file(name).read_text()))
            continue
        if opts.progress:
            print(f"kappa = {kappa:g} ...", file=sys.stderr, flush=True)
        output.file("runs").mkdir(exist_ok=True)
        r = run_kappa(kappa, i, cfg)
        output.json(name, r)
        results.append(r)
    rows = [{"kappa": r["kappa"], "alignment": r["diagnostics"]["align"], "model": m, "test": t,
             "error": e["error"], "se": e["se"]}
            for r in results for m in MODELS for t, e in r["errors"][m].items()]
    output.csv("records.csv", ("kappa", "alignment", "model", "test", "error", "se"), rows)
    output.figure(plot(results, cfg), "alignment_sweep")
    summary = output.summary({"experiment": "alignment sweep (Corollary 4.1.1)", "rho": cfg.rho,
                              "results": results}, "cpu", t_start)
    print(f"{'kappa':>6} {'Align':>7} {'|cos|':>6} {'gap_rho':>9} {'gap_rho2':>9} {'rho*EHu':>9}  "
          + "  ".join(f"{LABELS[m] + ' [loss]':>22}" for m in MODELS))
    for r in results:
        d = r["diagnostics"]
        print(f"{r['kappa']:6.3g} {d['align']:7.3f} {d['abs_cos']:6.3f} {d['gap_rho']:9.2e} {d['gap_rho2']:9.2e} "
              f"{d['sam_rho_term']:9.2e}  " + "  ".join(
                  f"{r['errors'][m]['loss']['error']:.2e}±{r['errors'][m]['loss']['se']:.1e}".rjust(22)
                  for m in MODELS))
    print(f"wall time {summary['wall_seconds_this_invocation']:.0f} s")
    return summary


main = command("validation.alignment_sweep", __doc__, Config, run, default_device="cpu")


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("validation.alignment_sweep")
