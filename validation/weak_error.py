"""Weak-approximation error of the SGD / SAM SDEs against η: a numerical check of
Theorem 4.1 (paper Theorem B.4), on toys with exact expectations and on the MNIST MLP.

    python -m validation.weak_error [--mode eta|rho|ablation|all] [--problem logcosh|logistic|mlp] --out DIR
    torchrun --standalone --nproc_per_node=N -m validation.weak_error ...      (same results, sharded)

For each setting, M_d independent runs of discrete SAM (Eq. 1) and M of each SDE — SGD-SDE,
SAM-SDE2 (Eq. 3), SAM-SDE3 (Eq. 4), integrated by Euler–Maruyama with m sub-steps per η —
start at x₀, and

    E(η) = max_{k ≤ N} |E g(x_k) − E g(X_{kη})|,     N = T/η,

is estimated for the test functions g ∈ {loss, ‖x‖², a coordinate x_i}, with batch-means
bootstrap standard errors (``validation.stats``). Theory (ρ = c·η^{1/3}): SAM-SDE3 error
O(η) (slope 1), SAM-SDE2 O(ρ²) = O(η^{2/3}), SGD-SDE O(ρ) = O(η^{1/3}) — for the exact
solution of each SDE. The Euler solver adds its own O(η/m) error; ``--extrapolate``
also runs every model at m/2 sub-steps (the same Brownian path) and reports Richardson's
extrapolation 2·E g(X^m) − E g(X^{m/2}) as ``<model>@m→∞``, the model's error without the
solver's.

Modes:
* ``eta`` (default): the η grid with ρ = c·η^{1/3}; log-log slopes with 95% intervals.
* ``rho``: fixed η, a ρ grid and ρ = 0 (the O(η) floor): SAM-SDE2 should fall like ρ²,
  SAM-SDE3 like ρ³ above the floor.
* ``ablation``: fixed η, ρ: the models for several Euler sub-steps m (and K for Monte Carlo
  problems): how fine the SDE must be integrated.
* ``substeps``: the η sweep with every model at each m of ``--ablation-substeps`` (runs with
  m = 1, 2, 4, … share their Brownian paths and their minibatches at common times) and
  Richardson's extrapolation from the two finest: the Euler solver's error separated from
  the model's, at every η.
* ``all``: eta, rho and ablation in turn.

Methods: ``--method`` names the SAM-family method under test (``sam``, ``usam``,
``reverse_sam``, ``asam``, ``fisher_sam``, ``gsam``, ``wsam``, ``msam``; hyperparameters
``--xi``, ``--eta-f``, ``--gsam-alpha``, ``--wsam-gamma``, ``--micro-batches``): the discrete
process is SAM with that method's rule ε, update map Φ and micro-batches, and SAM-SDE2 /
SAM-SDE3 take the same (drift −E Φ(g_γ, v_γ), docs/math.md §6).

Problems: the toys of ``sdesam.toys`` (exact expectations over every minibatch; default
``logcosh``), or ``mlp``: Figure 2's GeLU MLP on MNIST (``sdesam.mnist_mlp``) at a width and
training subset that fit the machine, Monte Carlo over K minibatches per sub-step (the
quick default fits 2 CPU cores; ``--full`` is the paper's 784-784-10 on all 60,000 images,
for GPUs). Variance reduction, all unbiased: SAM and the SDEs may run different numbers of
trajectories (``--discrete-trajectories``, the cheaper process gets more), the SDE models
share their random numbers (their differences are resolved far below their own errors),
and ``--antithetic`` pairs SDE trajectories with opposite Brownian increments; the
measured variance-reduction factors are reported.

Outputs in ``--out DIR``: ``summary.json`` (configuration, every number, fits, checks,
variance reductions, versions, wall times), ``errors.csv`` and ``curves.csv`` (tidy),
``weak_error.png`` (eta mode), ``weak_error_rho.png``, ``weak_error_ablation.png``, the
per-chunk statistics under ``settings/`` (a rerun with the same configuration resumes
from them), and a printed table.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass

import torch

from sdesam._progress import progress as progress_bar
from sdesam.experiment import command
from sdesam.montecarlo import ChunkPlan, standard_tests
from sdesam.parallel import init_comm
from sdesam.registry import REGISTRY, SAM_FAMILY, SAM_FAMILY_HYPERPARAMETERS, sam_family_member
from sdesam.toys import TOY_PROBLEMS, make_toy_problem

from .experiment import THEORY_SLOPES, check_geometric, num_steps, sweep_ablation, sweep_eta, sweep_rho
from .plotting import LABELS, plot_ablation, plot_sweep

__all__ = ["Config", "main", "run", "build_problem", "claim_checks", "format_tables", "TESTS"]

TESTS = ("loss", "sqnorm", "coord")
MODES = ("eta", "rho", "ablation", "substeps", "all")


@dataclass
class Config:
    """Everything that determines the result (saved in config.json; a rerun resumes).

    Toy defaults; ``--problem mlp`` starts from ``Config.mlp()`` and ``--full`` from
    ``Config.mlp_full()`` (the paper's network). On the toys the SDE runs are antithetic
    pairs, whose variance is 8–900× smaller than independent runs' (measured, reported in
    summary.json), so 20,000 SDE trajectories against 200,000 of the cheap discrete SAM
    give smaller standard errors than 100,000 of each.
    """

    problem: str = "logcosh"
    mode: str = "eta"
    discrete: str = "sam"
    models: tuple = ("sgd_sde", "sam_sde2", "sam_sde3")
    # the SAM-family method under test: its discrete method and its SDEs share the rule,
    # update map and micro-batches of ``sdesam.registry.sam_family_member``
    method: str = "sam"
    xi: float = 0.0
    eta_f: float = 1.0
    gsam_alpha: float = 0.1
    wsam_gamma: float = 0.9
    micro_batches: int = 3
    etas: tuple = (0.1, 0.05, 0.025, 0.0125)
    c: float = 1.0
    horizon: float = 1.0
    record_every: int = 1
    rho_eta: float = 0.0125
    rhos: tuple = (0.1, 0.2, 0.4, 0.8)
    rho_zero: bool = True
    ablation_eta: float = 0.05
    ablation_substeps: tuple = (1, 2, 4, 8, 16)
    ablation_batches: tuple = (2, 4, 8, 16)
    substeps: int = 8
    extrapolate: bool = False
    n_batches: str = "exact"
    diffusion: str = "taylor"
    drift_noise_correction: bool = True
    antithetic: bool = True
    trajectories: int = 20_000
    discrete_trajectories: int | None = 200_000
    chunk_size: int = 10_000
    discrete_chunk_size: int | None = 50_000
    blocks_per_chunk: int = 10
    n_boot: int = 1000
    tests: tuple = TESTS
    coordinate: int | None = None
    seed: int = 0
    dtype: str = "float64"
    # the MLP problem (``--problem mlp``)
    hidden: int = 32
    n_train: int | None = 2048
    batch_size: int = 32
    eval_examples: int = 512
    dataset: str = "mnist"

    @classmethod
    def mlp(cls) -> "Config":
        """The quick MLP study (784-32-10 on 2,048 MNIST images; 2 CPU cores, ≤ 20 min).

        ρ = 0.3·η^{1/3} keeps ρ ≤ 0.17 over η ∈ [0.02, 0.16], where the one-step moment test
        finds SAM-SDE3's drift within a few per cent of SAM's mean increment; at the larger
        c = 0.93 (ρ up to 0.4) its drift is off by 36% and the curve measures the expansion's
        failure, not its order. T = 0.32 gives the O(η) term time to grow above the Monte
        Carlo noise; 8 Euler sub-steps keep the solver's error below the model's
        (docs/results/weak_error.md has the m ∈ {1, 2, 4, 8} diagnosis).
        """
        return cls(problem="mlp", etas=(0.16, 0.08, 0.04, 0.02), c=0.3, horizon=0.32, record_every=1,
                   rho_eta=0.02, rhos=(0.05, 0.1, 0.2, 0.4), ablation_eta=0.04, substeps=8, extrapolate=False,
                   n_batches="2", antithetic=True, trajectories=1024, discrete_trajectories=16384,
                   chunk_size=64, discrete_chunk_size=512, blocks_per_chunk=8, dtype="float32",
                   eval_examples=256, micro_batches=4)

    @classmethod
    def mlp_full(cls) -> "Config":
        """The paper's 784-784-10 network on all 60,000 images (a GPU configuration)."""
        return dataclasses.replace(cls.mlp(), hidden=784, n_train=None, batch_size=128, eval_examples=1024,
                                   etas=(0.08, 0.04, 0.02, 0.01), horizon=0.64, n_batches="8", substeps=8,
                                   trajectories=2048, discrete_trajectories=16384, chunk_size=256,
                                   discrete_chunk_size=1024)

    @classmethod
    def defaults(cls, args) -> "Config":
        mlp = getattr(args, "problem", "logcosh") == "mlp"
        if getattr(args, "full", False):
            if not mlp:
                raise ValueError("--full is the paper's MLP configuration: use it with --problem mlp")
            return cls.mlp_full()
        return cls.mlp() if mlp else cls()

    def n_batches_value(self):
        return "exact" if self.n_batches == "exact" else int(self.n_batches)

    def validate(self) -> "Config":
        from sdesam._checks import check_choice, check_int, check_positive
        check_choice("problem", self.problem, set(TOY_PROBLEMS) | {"mlp"})
        check_choice("mode", self.mode, MODES)
        check_choice("diffusion", self.diffusion, {"taylor", "paper"})
        check_choice("dtype", self.dtype, {"float32", "float64"})
        check_choice("dataset", self.dataset, {"mnist", "synthetic"})
        if self.discrete not in REGISTRY or REGISTRY[self.discrete].kind != "discrete":
            raise ValueError(f"--discrete must be a discrete method of sdesam.DYNAMICS, got {self.discrete!r}")
        check_choice("method", self.method, SAM_FAMILY)
        if self.method != "sam" and self.discrete != "sam":
            raise ValueError(f"--method {self.method} runs discrete SAM with its rule and update map: "
                             f"leave --discrete at sam (got {self.discrete!r})")
        self.family_kwargs()                     # the hyperparameters' own checks
        for m in self.models:
            if m not in REGISTRY or REGISTRY[m].kind != "sde":
                raise ValueError(f"--models must name SDEs of sdesam.DYNAMICS, got {m!r}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"--models must be distinct, got {self.models}")
        if self.n_batches != "exact":
            try:
                check_int("n_batches (K)", int(self.n_batches), 2)
            except ValueError:
                raise ValueError(f"--n-batches must be 'exact' or an integer K >= 2, got {self.n_batches!r}") from None
        if self.problem == "mlp" and self.n_batches == "exact":
            raise ValueError("--problem mlp has no exact expectations: give --n-batches K")
        for t in self.tests:
            check_choice("test function", t, set(TESTS))
        if len(set(self.tests)) != len(self.tests):
            raise ValueError(f"--tests must be distinct, got {self.tests}")
        check_geometric("etas", self.etas, 4 if self.mode in ("eta", "substeps", "all") else 1)
        check_geometric("rhos", self.rhos, 3 if self.mode in ("rho", "all") else 1)
        check_positive("c", self.c)
        check_positive("horizon", self.horizon)
        for eta in self.etas:
            num_steps(self.horizon, eta)
        for name in ("rho_eta", "ablation_eta"):
            num_steps(self.horizon, check_positive(name, getattr(self, name)))
        for m in self.ablation_substeps:
            check_int("ablation substeps m", m, 1)
        for k in self.ablation_batches:
            check_int("ablation K", k, 2)
        if self.extrapolate and (self.substeps < 2 or self.substeps % 2):
            raise ValueError(f"--extrapolate needs an even --substeps m >= 2 (it also runs m/2), got {self.substeps}")
        check_int("n_boot", self.n_boot, 100)
        self.plans()
        return self

    def family_kwargs(self) -> dict:
        """rule / update / micro_batches of ``method`` (empty for plain SAM)."""
        if self.method == "sam":
            return {}
        return sam_family_member(self.method, **{k: getattr(self, k) for k in SAM_FAMILY_HYPERPARAMETERS})

    def discrete_process(self):
        """The discrete process of a setting: a name, or (name, kwargs) for a family method."""
        return (self.discrete, self.family_kwargs()) if self.method != "sam" else self.discrete

    def plans(self) -> tuple[ChunkPlan, ChunkPlan]:
        """(the SDE models' plan, the discrete process's plan)."""
        models = ChunkPlan.for_trajectories(self.trajectories, self.chunk_size, self.blocks_per_chunk)
        size = self.discrete_chunk_size or self.chunk_size
        disc = ChunkPlan.for_trajectories(self.discrete_trajectories or self.trajectories, size,
                                          self.blocks_per_chunk if size % self.blocks_per_chunk == 0 else None)
        if self.antithetic and models.block_size % 2:
            raise ValueError(f"--antithetic pairs trajectories: the block size {models.block_size} "
                             "(chunk_size / blocks_per_chunk) must be even")
        return models, disc


def build_problem(cfg: Config, device, data_dir=None):
    """(problem, test functions, data source) of the configuration."""
    if cfg.problem == "mlp":
        from sdesam.mnist_mlp import mnist_mlp_problem
        problem = mnist_mlp_problem(hidden=cfg.hidden, n_train=cfg.n_train, batch_size=cfg.batch_size,
                                    dtype=cfg.dtype, device=device, dataset=cfg.dataset, data_dir=data_dir,
                                    test=False)
        ev = torch.arange(min(cfg.eval_examples, problem.n_train), device=problem.device)
        tests = standard_tests(problem, -1 if cfg.coordinate is None else cfg.coordinate, eval_examples=ev)
        source = "MNIST training set" if cfg.dataset == "mnist" else "synthetic MNIST-shaped data (not MNIST)"
    else:
        problem = make_toy_problem(cfg.problem).to(device, getattr(torch, cfg.dtype))
        tests = standard_tests(problem, 0 if cfg.coordinate is None else cfg.coordinate)
        source = "toy problem (exact minibatch enumeration)"
    return problem, {t: tests[t] for t in cfg.tests}, source


def _sde_kwargs(cfg: Config, name: str, substeps: int | None = None) -> dict:
    kw = {"n_batches": cfg.n_batches_value(), "substeps": substeps or cfg.substeps, "diffusion": cfg.diffusion,
          "antithetic": cfg.antithetic}
    if REGISTRY[name].takes_rule:
        kw.update(cfg.family_kwargs())
    if cfg.n_batches != "exact":
        kw["correct_drift_noise"] = cfg.drift_noise_correction
    return kw


def _models(cfg: Config):
    """({label: (dynamics, kwargs)}, {derived label: weights})."""
    if cfg.mode == "substeps":
        ms = sorted(cfg.ablation_substeps)
        models = {f"{n}|m={m}": (n, _sde_kwargs(cfg, n, m)) for n in cfg.models for m in ms}
        derived = {}
        if len(ms) >= 2 and ms[-1] == 2 * ms[-2]:
            derived = {f"{n}@m→∞": {f"{n}|m={ms[-1]}": 2.0, f"{n}|m={ms[-2]}": -1.0} for n in cfg.models}
        return models, derived
    models = {m: (m, _sde_kwargs(cfg, m)) for m in cfg.models}
    derived = {}
    if cfg.extrapolate:
        half = cfg.substeps // 2
        for m in cfg.models:
            models[f"{m}|m={half}"] = (m, _sde_kwargs(cfg, m, half))
            derived[f"{m}@m→∞"] = {m: 2.0, f"{m}|m={half}": -1.0}
    return models, derived


def run(cfg: Config, output, opts) -> dict:
    """Run the requested sweeps; write the outputs (rank 0) and return the summary."""
    t_start = time.perf_counter()
    comm = init_comm(opts.device)
    problem, tests, source = build_problem(cfg, comm.device, opts.data_dir)
    plan, dplan = cfg.plans()
    models, derived = _models(cfg)
    modes = ["eta", "rho", "ablation"] if cfg.mode == "all" else ["eta" if cfg.mode == "substeps" else cfg.mode]
    n_runs = 0
    if "eta" in modes:
        n_runs += len(cfg.etas) * (len(models) * plan.n_chunks + dplan.n_chunks)
    if "rho" in modes:
        n_runs += (len(cfg.rhos) + cfg.rho_zero) * (len(models) * plan.n_chunks + dplan.n_chunks)
    if "ablation" in modes:
        nk = 0 if cfg.n_batches == "exact" else len(cfg.ablation_batches)
        n_runs += len(cfg.models) * (len(cfg.ablation_substeps) + nk) * plan.n_chunks + dplan.n_chunks
    bar = progress_bar(math.ceil(n_runs / comm.world_size), desc="weak error", unit="chunk",
                       enabled=opts.progress and comm.is_main)

    def progress(label):
        bar.set_postfix_str(label)
        bar.update(1)

    common = dict(seed=cfg.seed, tests=tests, plan=plan, discrete_plan=dplan, comm=comm, n_boot=cfg.n_boot,
                  record_every=cfg.record_every, discrete=cfg.discrete_process(), progress=progress,
                  out=str(output.file("settings")))
    results, walls = {}, {}
    try:
        if "eta" in modes:
            t0 = time.perf_counter()
            results["eta"] = sweep_eta(problem, etas=cfg.etas, c=cfg.c, horizon=cfg.horizon, models=models,
                                       derived=derived, **common)
            walls["eta"] = time.perf_counter() - t0
        if "rho" in modes:
            t0 = time.perf_counter()
            results["rho"] = sweep_rho(problem, eta=cfg.rho_eta, rhos=cfg.rhos, horizon=cfg.horizon, models=models,
                                       include_zero=cfg.rho_zero, derived=derived, **common)
            walls["rho"] = time.perf_counter() - t0
        if "ablation" in modes:
            t0 = time.perf_counter()
            nks = () if cfg.n_batches == "exact" else cfg.ablation_batches
            rho = cfg.c * cfg.ablation_eta ** (1 / 3)
            results["ablation"] = sweep_ablation(problem, eta=cfg.ablation_eta, rho=rho, horizon=cfg.horizon,
                                                 model_names=cfg.models, substeps=cfg.ablation_substeps, n_batches=nks,
                                                 base_kwargs=_sde_kwargs(cfg, cfg.models[0]), **common)
            walls["ablation"] = time.perf_counter() - t0
    finally:
        bar.close()
    results["checks"] = claim_checks(results)
    summary = {"command": opts.command_line, "problem": problem.config(),
               "data_source": source, "plans": {"models": plan.config(), "discrete": dplan.config()},
               "models": {k: v[0] for k, v in models.items()}, "derived": derived, "results": results,
               "runtime": {"wall_s_by_mode": walls, "world_size": comm.world_size, "backend": comm.backend}}
    if comm.is_main:
        summary = output.summary(summary, comm.device, t_start, comm.world_size)
        write_tables(summary, output)
        plot(summary, output)
        print(format_tables(summary))
    comm.close()
    return summary


# -- checks, tables, files --------------------------------------------------------------
def claim_checks(results: dict) -> dict:
    """What the theory claims, evaluated on the measured numbers, per first-order model
    (SAM-SDE3, the Eigen-SAM SDE; each run and extrapolation): the slope and its interval,
    the ordering of the three SAM models at each η, and the resolution of the error (in
    bootstrap SEs) at each η."""
    checks = {}
    if "eta" in results:
        r = results["eta"]
        first_order = [m for m, p in THEORY_SLOPES["eta"].items() if p == 1.0]
        for model in [m for m in r["fits"] if m.split("|")[0].split("@")[0] in first_order]:
            for t, fit in r["fits"][model].items():
                if fit is None:
                    continue
                ci = fit["ci_bootstrap"] or fit["ci_regression"]
                errs = [e["errors"][model][t] for e in r["settings"]]
                c = {"slope": fit["slope"], "ci95": ci, "ci_width": ci[1] - ci[0],
                     "slope_in_[0.8,1.25]": bool(0.8 <= fit["slope"] <= 1.25),
                     "error_in_se_at_each_eta": [e["error"] / e["se"] if e["se"] > 0 else math.inf for e in errs]}
                if "|" not in model and "@" not in model and all(m in r["fits"] for m in ("sgd_sde", "sam_sde2")):
                    c["order_sde3<sde2<sgd_at_each_eta"] = [
                        bool(e["errors"][model][t]["error"] < e["errors"]["sam_sde2"][t]["error"]
                             < e["errors"]["sgd_sde"][t]["error"]) for e in r["settings"]]
                checks[f"eta/{model}/{t}"] = c
    if "rho" in results:
        r = results["rho"]
        if all(m in r["fits"] for m in ("sam_sde2", "sam_sde3")):
            for t in r["fits"]["sam_sde3"]:
                f2, f3 = r["fits"]["sam_sde2"][t], r["fits"]["sam_sde3"][t]
                if f2 is None or f3 is None:
                    continue
                c = {"sde2_slope_all": f2["slope"], "sde3_slope_all": f3["slope"],
                     "sde3_falls_faster_all": bool(f3["slope"] > f2["slope"])}
                above = r.get("fits_above_floor") or {}
                a2, a3 = (above.get(m, {}).get(t) for m in ("sam_sde2", "sam_sde3"))
                if a2 and a3:
                    c.update({"sde2_slope_above_floor": a2["slope"], "sde3_slope_above_floor": a3["slope"],
                              "sde3_falls_faster_above_floor": bool(a3["slope"] > a2["slope"])})
                checks[f"rho/{t}"] = c
    return checks


ERROR_FIELDS = ("sweep", "setting", "eta", "rho", "model", "test", "error", "se", "boot_mean", "argmax_step",
                "se_at_argmax")
CURVE_FIELDS = ("sweep", "setting", "eta", "rho", "run", "step", "time", "test", "mean", "se")


def _entries(results: dict):
    for sweep in ("eta", "rho", "ablation"):
        r = results.get(sweep)
        if r is None:
            continue
        for i, e in enumerate(r["settings"] if "settings" in r else [r["setting"]]):
            yield sweep, i, e


def write_tables(summary: dict, output) -> None:
    """errors.csv (one row per setting, model and test) and curves.csv (means over time)."""
    errors, curves = [], []
    for sweep, i, e in _entries(summary["results"]):
        for model, per_test in e["errors"].items():
            for t, v in per_test.items():
                errors.append({"sweep": sweep, "setting": i, "eta": e["eta"], "rho": e["rho"], "model": model,
                               "test": t, **{k: v[k] for k in ERROR_FIELDS[6:]}})
        c = e["curves"]
        runs = {"discrete": (c["discrete_mean"], c["discrete_se"]),
                **{m: (c["model_mean"][m], c["model_se"][m]) for m in c["model_mean"]}}
        tests = list(next(iter(e["errors"].values())))
        for run_, (mean, se) in runs.items():
            for r, k in enumerate(c["steps"]):
                for j, t in enumerate(tests):
                    curves.append({"sweep": sweep, "setting": i, "eta": e["eta"], "rho": e["rho"], "run": run_,
                                   "step": k, "time": k * e["eta"], "test": t, "mean": mean[r][j], "se": se[r][j]})
    output.csv("errors.csv", ERROR_FIELDS, errors)
    output.csv("curves.csv", CURVE_FIELDS, curves)


def plot(summary: dict, output) -> None:
    prob = summary["problem"]["problem"]
    res = summary["results"]
    M = summary["plans"]["models"]["trajectories"]
    Md = summary["plans"]["discrete"]["trajectories"]
    if "eta" in res:
        plot_sweep(res["eta"], output.file("weak_error.png"),
                   f"{prob}: weak error vs η, ρ = {res['eta']['c']:g}·η^(1/3), T = {res['eta']['horizon']:g}, "
                   f"M = {M} (SDEs), {Md} (discrete); bars ±1 bootstrap SE")
    if "rho" in res:
        plot_sweep(res["rho"], output.file("weak_error_rho.png"),
                   f"{prob}: weak error vs ρ at η = {res['rho']['eta']:g}, T = {res['rho']['horizon']:g}; "
                   "dotted: ρ = 0 floor")
    if "ablation" in res:
        plot_ablation(res["ablation"], output.file("weak_error_ablation.png"),
                      f"{prob}: ablation at η = {res['ablation']['eta']:g}, ρ = {res['ablation']['rho']:.3g}")


def _pm(d: dict) -> str:
    return f"{d['error']:.3e}±{d['se']:.1e}"


def _fit(f: dict | None) -> str:
    if f is None:
        return "(no fit: an error is 0)"
    ci = f["ci_bootstrap"] or f["ci_regression"]
    return f"{f['slope']:.3f} [{ci[0]:.2f},{ci[1]:.2f}]"


def format_tables(summary: dict) -> str:
    lines = []
    res = summary["results"]
    M, Md = summary["plans"]["models"]["trajectories"], summary["plans"]["discrete"]["trajectories"]
    for sweep in ("eta", "rho"):
        if sweep not in res:
            continue
        r = res[sweep]
        models = list(r["fits"])
        tests = list(next(iter(r["settings"][0]["errors"].values())))
        lines.append(f"\n== weak error vs {sweep} ({summary['problem']['problem']}, M = {M} SDE and {Md} discrete "
                     "trajectories; value ± bootstrap SE) ==")
        for t in tests:
            lines.append(f"[{t}]  {'eta':>8} {'rho':>7} {'N':>5}  " + "  ".join(f"{LABELS.get(m, m):>19}"
                                                                              for m in models))
            for e in r["settings"]:
                lines.append(f"      {e['eta']:8.4g} {e['rho']:7.4g} {e['n_steps']:5d}  "
                             + "  ".join(f"{_pm(e['errors'][m][t]):>19}" for m in models))
            lines.append(f"      {'slope [95% bootstrap CI]':>22}  "
                         + "  ".join(f"{_fit(r['fits'][m][t]):>19}" for m in models))
            if r.get("fits_above_floor"):
                fa = r["fits_above_floor"]
                lines.append(f"      {'slope above 3x floor':>22}  "
                             + "  ".join((_fit(fa[m][t]) if fa[m][t] else "(< 2 points)").rjust(19) for m in models))
        vr = [e["variance_reduction"] for e in r["settings"]]
        if any(v["antithetic"] for v in vr):
            lines.append("variance reduction by antithetic pairs (last step; per η): "
                         + "; ".join(json.dumps({m: {t: round(x, 1) for t, x in d.items()}
                                                 for m, d in v["antithetic"].items()}) for v in vr))
    if "ablation" in res:
        a = res["ablation"]
        errs = a["setting"]["errors"]
        tests = list(next(iter(errs.values())))
        lines.append(f"\n== ablation at eta = {a['eta']:g}, rho = {a['rho']:.4g} ==")
        lines.append(f"{'variant':>18}  " + "  ".join(f"{t:>19}" for t in tests))
        for k, v in errs.items():
            lines.append(f"{k:>18}  " + "  ".join(f"{_pm(v[t]):>19}" for t in tests))
        lines.append("difference to the finest variant (paired bootstrap SE):")
        for k, v in a["delta_vs_finest"].items():
            lines.append(f"{k:>18}  " + "  ".join(f"{v[t]['delta']:+.2e}±{v[t]['se']:.1e}".rjust(19) for t in tests))
    if res.get("checks"):
        lines.append("\n== checks (measured) ==")
        for k, v in res["checks"].items():
            lines.append(f"{k}: {json.dumps(v)}")
    lines.append(f"\nwall time {summary['wall_seconds_this_invocation']:.1f} s; world size "
                 f"{summary['runtime']['world_size']}")
    return "\n".join(lines)


main = command("validation.weak_error", __doc__, Config, run, default_device="cpu",
               choices={"problem": sorted(set(TOY_PROBLEMS) | {"mlp"}), "mode": MODES,
                        "diffusion": ["taylor", "paper"], "dtype": ["float32", "float64"],
                        "dataset": ["mnist", "synthetic"], "method": list(SAM_FAMILY)})


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("validation.weak_error")
