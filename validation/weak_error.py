"""Weak-approximation error of the SGD / SAM SDEs against η: a numerical check of
Theorem 4.1 (paper Theorem B.4, DESIGN §3.4).

    python -m validation.weak_error [--mode eta|rho|ablation|all] [--problem logcosh] --out DIR
    torchrun --nproc_per_node=N -m validation.weak_error ...     (same results, sharded)

For each setting, M independent runs of discrete SAM (Eq. 1) and of each SDE —
SGD-SDE, SAM-SDE2 (Eq. 3), SAM-SDE3 (Eq. 4), integrated by Euler–Maruyama with m
sub-steps per η — start at x₀, and

    E(η) = max_{k ≤ N} |E g(x_k) − E g(X_{kη})|,     N = T/η,

is estimated for the test functions g ∈ {loss f(x), ‖x‖², a coordinate x_i}, with
batch-means bootstrap standard errors (``validation.stats``). Theory (ρ = c·η^{1/3}):
SAM-SDE3 error O(η) (slope 1), SAM-SDE2 O(ρ²) = O(η^{2/3}), SGD-SDE O(ρ) = O(η^{1/3}).

Modes:
* ``eta`` (default): the η grid with ρ = c·η^{1/3}; log-log slopes with 95% intervals.
* ``rho``: fixed η (``--rho-eta``), a ρ grid (``--rhos``) and ρ = 0 (the O(η) floor):
  SAM-SDE2 should fall like ρ², SAM-SDE3 like ρ³ above the floor.
* ``ablation``: fixed η, ρ: SAM-SDE2/3 for several Euler sub-steps m (and K for
  Monte Carlo problems) — how fine the SDE must be integrated.
* ``all``: the three in turn.

Outputs in ``--out DIR``: ``results.json`` (configuration, every number, fits, wall
times), ``blocks.npz`` (the per-block sums behind them), ``weak_error.png`` (eta mode),
``weak_error_rho.png``, ``weak_error_ablation.png``, and a printed table. See docs/weak_error.md for the measured results and commands.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdesam._checks import check_choice, check_int, check_positive
from sdesam.cli import prog_name
from sdesam.atomic import atomic_open, atomic_write_text

from sdesam.montecarlo import ChunkPlan, standard_tests
from sdesam.parallel import init_comm
from sdesam.toys import TOY_PROBLEMS, make_toy_problem

from .experiment import SDE_MODELS, check_geometric, num_steps, sweep_ablation, sweep_eta, sweep_rho
from .plotting import LABELS, plot_ablation, plot_sweep

__all__ = ["main", "parse_args", "run", "DEFAULTS"]

#: Defaults of the toy problems (docs/weak_error.md explains how they were chosen).
DEFAULTS = {
    "etas": (0.1, 0.05, 0.025, 0.0125),
    "c": 1.0,
    "horizon": 1.0,
    "substeps": 8,
    "n_chunks": 10,
    "chunk_size": 10_000,
    "blocks_per_chunk": 10,
    "rho_eta": 0.0125,
    "rhos": (0.1, 0.2, 0.4, 0.8),
    "ablation_eta": 0.05,
    "ablation_substeps": (1, 2, 4, 8, 16),
    "ablation_batches": (2, 4, 8, 16),
}
TESTS = ("loss", "sqnorm", "coord")


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog_name("python -m validation.weak_error"), description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", default="eta", help="eta | rho | ablation | all")
    p.add_argument("--problem", default="logcosh", help=f"one of {sorted(TOY_PROBLEMS)} or 'mlp'")
    p.add_argument("--out", default="weak_error_out", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("eta mode")
    g.add_argument("--etas", type=_floats, default=None,
                   help=f"geometric η grid, ≥ 4 values (toy default {','.join(map(str, DEFAULTS['etas']))})")
    g.add_argument("--c", type=float, default=None, help=f"ρ = c·η^(1/3) (toy default {DEFAULTS['c']})")
    g.add_argument("--horizon", type=float, default=None, help=f"T, a multiple of every η (toy default {DEFAULTS['horizon']})")
    g = p.add_argument_group("rho mode")
    g.add_argument("--rho-eta", type=float, default=None, help=f"fixed η (toy default {DEFAULTS['rho_eta']})")
    g.add_argument("--rhos", type=_floats, default=None,
                   help=f"geometric ρ grid, ≥ 3 values (toy default {','.join(map(str, DEFAULTS['rhos']))})")
    g.add_argument("--no-rho-zero", action="store_true", help="skip the ρ = 0 floor run")
    g = p.add_argument_group("ablation mode")
    g.add_argument("--ablation-eta", type=float, default=None, help=f"η (toy default {DEFAULTS['ablation_eta']}); ρ = c·η^(1/3)")
    g.add_argument("--ablation-substeps", type=_ints, default=DEFAULTS["ablation_substeps"],
                   help="Euler sub-steps m to compare")
    g.add_argument("--ablation-batches", type=_ints, default=DEFAULTS["ablation_batches"],
                   help="Monte Carlo K to compare (problems without exact expectations only)")
    g = p.add_argument_group("SDE integration")
    g.add_argument("--substeps", type=int, default=None, help=f"Euler sub-steps m per η (toy default {DEFAULTS['substeps']})")
    g.add_argument("--n-batches", default=None,
                   help="'exact' (enumerate minibatches; toy default) or K ≥ 2 Monte Carlo minibatches")
    g.add_argument("--diffusion", default="taylor", help="taylor (Cov of the Taylor vectors) | paper")
    g.add_argument("--no-drift-noise-correction", action="store_true",
                   help="Monte Carlo only: do not rescale the diffusion by √(1 − Δt/(ηK))")
    g = p.add_argument_group("Monte Carlo")
    g.add_argument("--chunks", type=int, default=None, help=f"chunks of trajectories (toy default {DEFAULTS['n_chunks']})")
    g.add_argument("--chunk-size", type=int, default=None, help=f"trajectories per chunk (toy default {DEFAULTS['chunk_size']})")
    g.add_argument("--blocks-per-chunk", type=int, default=None,
                   help=f"bootstrap blocks per chunk (toy default {DEFAULTS['blocks_per_chunk']})")
    g.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates")
    g.add_argument("--tests", type=_names, default=TESTS, help="test functions: loss, sqnorm, coord")
    g.add_argument("--coordinate", type=int, default=None,
                   help="index i of the coordinate test function x_i (default 0 for toys; -1, an output "
                        "bias, for the MLP)")
    g.add_argument("--record-every", type=int, default=None, help="record every r-th step (toy default 1)")
    g = p.add_argument_group("MNIST MLP (--problem mlp)")
    g.add_argument("--mlp-config", default="quick-cpu", help="quick-cpu | gpu (validation.mlp.MLP_CONFIGS)")
    g.add_argument("--dataset", default="mnist", help="mnist (sdesam.data.load_mnist) | synthetic (random MNIST-shaped tensors, for development)")
    g.add_argument("--data-dir", default=None, help="data directory for sdesam.data.load_mnist")
    g = p.add_argument_group("runtime")
    g.add_argument("--dtype", default=None, help="float64 (toy default) | float32 (MLP default)")
    g.add_argument("--device", default="cpu", help="cpu | cuda")
    g.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (0: torch's default, one per core). 1 is the "
                        "default: the tensors are small, and on a shared machine several OpenMP threads "
                        "per process stall whenever another process holds a core (use torchrun for more "
                        "processes instead)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-plot", action="store_true", help="write results.json only (no figures)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    check_choice("mode", args.mode, {"eta", "rho", "ablation", "all"})
    check_choice("problem", args.problem, set(TOY_PROBLEMS) | {"mlp"})
    check_choice("diffusion", args.diffusion, {"taylor", "paper"})
    check_choice("device", args.device.split(":")[0], {"cpu", "cuda"})
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    if args.dtype is not None:
        check_choice("dtype", args.dtype, {"float32", "float64"})
    check_int("n_boot", args.n_boot, 100)
    check_int("threads", args.threads, 0)
    for t in args.tests:
        check_choice("test function", t, set(TESTS))
    if len(set(args.tests)) != len(args.tests) or not args.tests:
        raise ValueError(f"tests must be distinct and non-empty, got {args.tests}")
    if not args.ablation_batches:
        raise ValueError("ablation_batches must list at least one K, got none")
    if args.problem == "mlp":
        from .mlp import MLP_CONFIGS
        check_choice("mlp_config", args.mlp_config, MLP_CONFIGS)
        check_choice("dataset", args.dataset, {"mnist", "synthetic"})
    return args


def _resolve(args):
    """(problem, tests, settings dict, plan, source description) from the arguments."""
    device = torch.device(args.device)
    if args.problem == "mlp":
        from .mlp import MLP_CONFIGS, mlp_problem, mlp_test_functions, with_overrides
        cfg = MLP_CONFIGS[args.mlp_config]
        cfg = with_overrides(cfg, dtype=args.dtype)
        problem, ex, ey, source = mlp_problem(cfg, args.dataset, data_dir=args.data_dir, device=device)
        coord = -1 if args.coordinate is None else args.coordinate
        tests_all = mlp_test_functions(problem, ex, ey, coord)
        base = {"etas": cfg.etas, "c": cfg.c, "horizon": cfg.horizon, "substeps": cfg.substeps,
                "n_batches": cfg.n_batches, "n_chunks": cfg.n_chunks, "chunk_size": cfg.chunk_size,
                "blocks_per_chunk": cfg.blocks_per_chunk, "record_every": cfg.record_every,
                "rho_eta": cfg.etas[-1], "rhos": (0.05, 0.1, 0.2, 0.4), "ablation_eta": cfg.etas[1],
                "problem_extra": {"mlp_config": args.mlp_config, **cfg.to_dict(), "dataset": args.dataset}}
    else:
        problem = make_toy_problem(args.problem).to(device, getattr(torch, args.dtype or "float64"))
        coord = 0 if args.coordinate is None else args.coordinate
        tests_all = standard_tests(problem, coord)
        source = "toy problem (exact minibatch enumeration available)"
        base = {**DEFAULTS, "n_batches": "exact", "record_every": 1, "problem_extra": {}}
    tests = {t: tests_all[t] for t in args.tests}
    over = {"etas": args.etas, "c": args.c, "horizon": args.horizon, "substeps": args.substeps,
            "n_chunks": args.chunks, "chunk_size": args.chunk_size, "blocks_per_chunk": args.blocks_per_chunk,
            "record_every": args.record_every, "rho_eta": args.rho_eta, "rhos": args.rhos,
            "ablation_eta": args.ablation_eta}
    cfg = {**base, **{k: v for k, v in over.items() if v is not None}, "coordinate": coord}
    if args.n_batches is not None:
        cfg["n_batches"] = "exact" if args.n_batches == "exact" else int(args.n_batches)
    if cfg["n_batches"] != "exact":
        check_int("n_batches (K)", cfg["n_batches"], 2)
    cfg["etas"] = check_geometric("etas", cfg["etas"], 4)
    cfg["rhos"] = check_geometric("rhos", cfg["rhos"], 3)
    check_positive("c", cfg["c"])
    check_positive("horizon", cfg["horizon"])
    check_int("substeps", cfg["substeps"], 1)
    check_int("record_every", cfg["record_every"], 1)
    for eta in cfg["etas"]:
        num_steps(cfg["horizon"], eta)
    for key in ("rho_eta", "ablation_eta"):
        num_steps(cfg["horizon"], check_positive(key, cfg[key]))
    if not args.ablation_substeps:
        raise ValueError("ablation_substeps must list at least one m")
    for m in args.ablation_substeps:
        check_int("ablation substeps m", m, 1)
    for k in args.ablation_batches:
        check_int("ablation K", k, 2)
    plan = ChunkPlan(cfg["n_chunks"], cfg["chunk_size"], cfg["blocks_per_chunk"])
    return problem, tests, cfg, plan, source


def _sde_kwargs(args, cfg) -> dict:
    kw = {"n_batches": cfg["n_batches"], "substeps": cfg["substeps"], "diffusion": args.diffusion}
    if cfg["n_batches"] != "exact":
        kw["correct_drift_noise"] = not args.no_drift_noise_correction
    return kw


def run(args: argparse.Namespace, prepared=None, comm=None) -> dict:
    """Run the requested sweeps; returns the results dict (also written by rank 0).

    ``prepared``: the output of ``_resolve(args)`` when the caller already validated it;
    ``comm``: the process group (``init_comm``), created before the problem so that on
    CUDA each rank builds it on its own device.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    comm = comm if comm is not None else init_comm(args.device)
    problem, tests, cfg, plan, source = prepared if prepared is not None else _resolve(args)
    kw = _sde_kwargs(args, cfg)
    models = {label: (name, kw) for label, name in SDE_MODELS.items()}
    modes = ["eta", "rho", "ablation"] if args.mode == "all" else [args.mode]

    bar = None
    if comm.is_main and not args.no_progress:
        from tqdm.auto import tqdm
        mine = len(comm.my_chunks(plan.n_chunks))
        n_runs = 0
        if "eta" in modes:
            n_runs += len(cfg["etas"]) * (1 + len(models))
        if "rho" in modes:
            n_runs += (len(cfg["rhos"]) + (0 if args.no_rho_zero else 1)) * (1 + len(models))
        if "ablation" in modes:
            nk = 0 if cfg["n_batches"] == "exact" else len(args.ablation_batches)
            n_runs += 1 + 2 * (len(args.ablation_substeps) + nk)
        bar = tqdm(total=n_runs * mine, desc="weak error", unit="chunk", file=sys.stderr)

    def progress(label):
        if bar is not None:
            bar.set_postfix_str(label)
            bar.update(1)

    common = dict(seed=args.seed, tests=tests, plan=plan, comm=comm, n_boot=args.n_boot,
                  record_every=cfg["record_every"], progress=progress)
    results = {}
    walls = {}
    if "eta" in modes:
        t0 = time.perf_counter()
        results["eta"] = sweep_eta(problem, etas=cfg["etas"], c=cfg["c"], horizon=cfg["horizon"],
                                   models=models, **common)
        walls["eta"] = time.perf_counter() - t0
    if "rho" in modes:
        t0 = time.perf_counter()
        results["rho"] = sweep_rho(problem, eta=cfg["rho_eta"], rhos=cfg["rhos"], horizon=cfg["horizon"],
                                   models=models, include_zero=not args.no_rho_zero, **common)
        walls["rho"] = time.perf_counter() - t0
    if "ablation" in modes:
        t0 = time.perf_counter()
        nks = () if cfg["n_batches"] == "exact" else tuple(args.ablation_batches)
        eta = cfg["ablation_eta"]
        results["ablation"] = sweep_ablation(
            problem, eta=eta, rho=cfg["c"] * eta ** (1 / 3), horizon=cfg["horizon"],
            model_names=("sam_sde2", "sam_sde3"), substeps=tuple(args.ablation_substeps), n_batches=nks,
            base_kwargs=kw, **common)
        walls["ablation"] = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    blocks = pop_blocks(results)
    results["checks"] = claim_checks(results)
    out = {
        "config": {
            "command": " ".join(["python -m validation.weak_error", *getattr(args, "argv", [])]),
            "args": {k: v for k, v in vars(args).items() if k != "argv"},
            "resolved": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "problem": problem.config(), "data_source": source,
            "plan": plan.config(), "sde_kwargs": kw, "models": {k: v[0] for k, v in models.items()},
        },
        "results": results,
        "runtime": {"wall_s_total": time.perf_counter() - t_start, "wall_s_by_mode": walls,
                    "world_size": comm.world_size, "backend": comm.backend,
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "python": platform.python_version(), "machine": platform.machine(),
                    "cpu_count": os.cpu_count()},
    }
    if comm.is_main:
        write_outputs(out, Path(args.out), plots=not args.no_plot, blocks=blocks)
        print(format_tables(out))
    comm.close()
    return out


# -- checks, tables, files --------------------------------------------------------------
def claim_checks(results: dict) -> dict:
    """The issue's acceptance claims, evaluated on the measured numbers (not tuned)."""
    checks = {}
    if "eta" in results:
        r = results["eta"]
        for t, fit in r["fits"]["sam_sde3"].items():
            order_ok, sig_ok = [], []
            for e in r["settings"]:
                err = {m: e["errors"][m][t]["error"] for m in r["fits"]}
                order_ok.append(bool(err["sam_sde3"] < err["sam_sde2"] < err["sgd_sde"]))
                sig_ok.append(bool(e["errors"]["sam_sde3"][t]["error"] >= 3 * e["errors"]["sam_sde3"][t]["se"]))
            checks[f"eta/{t}"] = {
                "sde3_slope": fit["slope"], "sde3_slope_in_[0.8,1.25]": bool(0.8 <= fit["slope"] <= 1.25),
                "order_sde3<sde2<sgd_at_each_eta": order_ok, "sde3_error>=3se_at_each_eta": sig_ok}
    if "rho" in results:
        r = results["rho"]
        for t in r["fits"]["sam_sde3"]:
            s2, s3 = r["fits"]["sam_sde2"][t]["slope"], r["fits"]["sam_sde3"][t]["slope"]
            c = {"sde2_slope_all": s2, "sde3_slope_all": s3, "sde3_falls_faster_all": bool(s3 > s2)}
            above = r.get("fits_above_floor") or {}
            f2, f3 = (above.get(m, {}).get(t) for m in ("sam_sde2", "sam_sde3"))
            if f2 and f3:
                c.update({"sde2_slope_above_floor": f2["slope"], "sde3_slope_above_floor": f3["slope"],
                          "sde3_falls_faster_above_floor": bool(f3["slope"] > f2["slope"])})
            checks[f"rho/{t}"] = c
    return checks


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def pop_blocks(results: dict) -> dict[str, np.ndarray]:
    """Remove the per-block statistics from the sweep results: {"sweep/setting/run/sums": array}."""
    arrays = {}
    for sweep, r in results.items():
        entries = r.get("settings", []) if isinstance(r, dict) else []
        if isinstance(r, dict) and "setting" in r:
            entries = [r["setting"]]
        for i, e in enumerate(entries):
            for run, st in e.pop("_blocks", {}).items():
                arrays[f"{sweep}/{i}/{run}/sums"] = st.sums
                arrays[f"{sweep}/{i}/{run}/sumsq"] = st.sumsq
                arrays[f"{sweep}/{i}/{run}/block_size"] = np.array(st.block_size)
                arrays[f"{sweep}/{i}/{run}/steps"] = np.array(st.steps)
    return arrays


def write_outputs(out: dict, directory: Path, plots: bool = True, blocks: dict | None = None) -> None:
    """results.json (atomically), blocks.npz (per-block sums, to recompute any statistic
    without rerunning) and the figures of the sweeps that ran."""
    directory.mkdir(parents=True, exist_ok=True)
    if blocks:
        with atomic_open(directory / "blocks.npz", "wb") as f:
            np.savez_compressed(f, **blocks)
    atomic_write_text(directory / "results.json", json.dumps(_jsonable(out), indent=1))
    if not plots:
        return
    prob = out["config"]["problem"]["problem"]
    res = out["results"]
    if "eta" in res:
        plot_sweep(res["eta"], directory / "weak_error.png",
                   f"{prob}: weak error vs η, ρ = {res['eta']['c']:g}·η^(1/3), T = {res['eta']['horizon']:g}, "
                   f"M = {out['config']['plan']['trajectories']}; bars ±1 bootstrap SE")
    if "rho" in res:
        plot_sweep(res["rho"], directory / "weak_error_rho.png",
                   f"{prob}: weak error vs ρ at η = {res['rho']['eta']:g}, T = {res['rho']['horizon']:g}; "
                   "dotted: ρ = 0 floor")
    if "ablation" in res:
        plot_ablation(res["ablation"], directory / "weak_error_ablation.png",
                      f"{prob}: ablation at η = {res['ablation']['eta']:g}, ρ = {res['ablation']['rho']:.3g}")


def _pm(d: dict) -> str:
    return f"{d['error']:.3e}±{d['se']:.1e}"


def _fit(f: dict) -> str:
    ci = f["ci_bootstrap"] or f["ci_regression"]
    return f"{f['slope']:.3f} [{ci[0]:.2f},{ci[1]:.2f}]"


def format_tables(out: dict) -> str:
    lines = []
    res = out["results"]
    for sweep in ("eta", "rho"):
        if sweep not in res:
            continue
        r = res[sweep]
        models = list(r["fits"])
        tests = list(next(iter(r["settings"][0]["errors"].values())))
        head = "eta" if sweep == "eta" else "rho"
        lines.append(f"\n== weak error vs {head} ({out['config']['problem']['problem']}, "
                     f"M = {out['config']['plan']['trajectories']}; value ± bootstrap SE) ==")
        for t in tests:
            lines.append(f"[{t}]  {'eta':>8} {'rho':>7} {'N':>5}  " + "  ".join(f"{LABELS[m]:>19}" for m in models))
            for e in r["settings"]:
                lines.append(f"      {e['eta']:8.4g} {e['rho']:7.4g} {e['n_steps']:5d}  "
                             + "  ".join(f"{_pm(e['errors'][m][t]):>19}" for m in models))
            lines.append(f"      {'slope [95% bootstrap CI]':>22}  "
                         + "  ".join(f"{_fit(r['fits'][m][t]):>19}" for m in models))
            lines.append(f"      {'slope [95% regression CI]':>22}  "
                         + "  ".join(f"{r['fits'][m][t]['slope']:.3f} [{r['fits'][m][t]['ci_regression'][0]:.2f},"
                                     f"{r['fits'][m][t]['ci_regression'][1]:.2f}]".rjust(19) for m in models))
            if r.get("fits_above_floor"):
                fa = r["fits_above_floor"]
                lines.append(f"      {'slope above 3x floor':>22}  "
                             + "  ".join((_fit(fa[m][t]) if fa[m][t] else "(< 2 points)").rjust(19) for m in models))
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
        lines.append("\n== acceptance checks (measured) ==")
        for k, v in res["checks"].items():
            lines.append(f"{k}: {json.dumps(v)}")
    rt = out["runtime"]
    lines.append(f"\nwall time {rt['wall_s_total']:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in rt['wall_s_by_mode'].items())}); "
                 f"world size {rt['world_size']}, {rt['torch_threads']} torch threads per process")
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = parse_args(argv)
        args.argv = argv
    except ValueError as exc:
        print(f"{prog_name('python -m validation.weak_error')}: error: {exc}", file=sys.stderr)
        raise SystemExit(2)
    comm = init_comm(args.device)
    try:
        prepared = _resolve(args)
    except ValueError as exc:
        print(f"{prog_name('python -m validation.weak_error')}: error: {exc}", file=sys.stderr)
        comm.close()
        raise SystemExit(2)
    run(args, prepared, comm)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("validation.weak_error")
