"""One setting of the weak-error experiment, and the three sweeps built from it.

A *setting* fixes (η, ρ, horizon T, SDE options). In it, M_d trajectories of the discrete
process (SAM, Eq. 1) and M trajectories of each SDE model run from the same x₀ for
N = T/η steps of size η; ``validation.stats`` turns their per-block statistics into

    E(η) = max_k |E g(x_k) − E g(X_{kη})|,   k ∈ recorded steps ⊆ {0, …, N},

with bootstrap standard errors. Randomness (``sdesam.estimate``): chunk c of a run is
seeded with derived_seed(seed, sweep, setting, role, c), role 0 for the discrete process
and role 1 for the SDEs — so SAM is independent of the SDEs, and the SDE models of one
setting share their Brownian increments and minibatch draws (common random numbers),
which sharpens the comparison between them without biasing any of them.

Derived models: a linear combination of models run in the same setting, e.g. Richardson's
extrapolation in the Euler step, mean(m → ∞) ≈ 2·mean(m) − mean(m/2) (first-order weak
convergence in Δt = η/m): the model's own error without the solver's. Its block statistics
are the same combination of the runs' block sums, so its bootstrap errors are exact.

Sweeps:
* ``eta``: an η grid with ρ = c·η^{1/3}; log-log slopes of E against η.
* ``rho``: fixed η, a ρ grid (plus ρ = 0, the O(η) floor); slopes of E against ρ.
* ``ablation``: fixed η and ρ, the SDE models for several Euler sub-steps m and, with
  Monte Carlo expectations, several K.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from sdesam.montecarlo import BlockStats, ChunkPlan, estimate
from sdesam.parallel import Comm
from sdesam.problem import Problem
from sdesam.registry import REGISTRY, make_dynamics

from .stats import fit_power_law, weak_errors

__all__ = ["Setting", "SettingResult", "measure_setting", "num_steps", "record_steps", "sweep_eta", "sweep_rho",
           "sweep_ablation", "check_geometric", "build", "THEORY_SLOPES", "SWEEP_IDS"]

SWEEP_IDS = {"eta": 0, "rho": 1, "ablation": 2}
ROLE_DISCRETE, ROLE_SDE = 0, 1
#: theory slopes of E against η (ρ = c·η^{1/3}) and against ρ
THEORY_SLOPES = {"eta": {"sgd_sde": 1 / 3, "sam_sde2": 2 / 3, "sam_sde3": 1.0, "eigen_sam_sde": 1.0},
                 "rho": {"sgd_sde": 1.0, "sam_sde2": 2.0, "sam_sde3": 3.0}}


def num_steps(horizon: float, eta: float) -> int:
    """N = T/η, required to be an integer (to 1e-9 relative)."""
    n = horizon / eta
    N = int(round(n))
    if N < 1 or abs(n - N) > 1e-9 * max(1.0, n):
        raise ValueError(f"the horizon T={horizon} must be a positive integer multiple of eta={eta} "
                         f"(T/eta = {n})")
    return N


def record_steps(n_steps: int, every: int) -> list[int]:
    """0, every, 2·every, …, and n_steps itself."""
    return sorted(set(range(0, n_steps + 1, every)) | {n_steps})


def check_geometric(name: str, values: Sequence[float], minimum: int) -> list[float]:
    """Positive, strictly monotone, with a constant ratio (to 1e-6); at least ``minimum``."""
    values = [float(v) for v in values]
    if len(values) < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {values}")
    if any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"{name} must be positive, got {values}")
    ratios = [b / a for a, b in zip(values, values[1:])]
    if any(abs(r - 1) < 1e-12 for r in ratios) or any(abs(r / ratios[0] - 1) > 1e-6 for r in ratios):
        raise ValueError(f"{name} must be a geometric grid (constant ratio, no repeats), got {values}")
    return values


def build(name: str, problem: Problem, eta: float, rho: float, **kwargs):
    """``make_dynamics`` with ρ passed only to the dynamics that take one (not sgd, sgd_sde)."""
    if "rho" in REGISTRY[name].hyperparameters:
        kwargs["rho"] = rho
    return make_dynamics(name, problem, eta=eta, **kwargs)


def _described(kwargs: Mapping) -> dict:
    """kwargs for a configuration record: rules and update maps by their ``config()``."""
    return {k: v.config() if hasattr(v, "config") else v for k, v in kwargs.items()}


@dataclass
class Setting:
    """What one setting runs. ``models`` maps a label to (dynamics name, kwargs); ``discrete``
    is the discrete process, a name or (name, kwargs); ``derived`` maps a label to
    {model label: weight} (a linear combination of the models' means)."""

    eta: float
    rho: float
    horizon: float
    models: dict[str, tuple[str, dict]]
    discrete: str | tuple[str, dict] = "sam"
    record_every: int = 1
    label: str = ""
    derived: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        return num_steps(self.horizon, self.eta)

    @property
    def discrete_name(self) -> str:
        return self.discrete if isinstance(self.discrete, str) else self.discrete[0]

    @property
    def discrete_kwargs(self) -> dict:
        return {} if isinstance(self.discrete, str) else dict(self.discrete[1])

    def config(self) -> dict:
        return {"label": self.label, "eta": self.eta, "rho": self.rho, "horizon": self.horizon,
                "n_steps": self.n_steps, "record_every": self.record_every,
                "discrete": {"dynamics": self.discrete_name, **_described(self.discrete_kwargs)},
                "models": {k: {"dynamics": n, **_described(kw)} for k, (n, kw) in self.models.items()},
                "derived": self.derived}


@dataclass
class SettingResult:
    setting: Setting
    reference: BlockStats
    models: dict[str, BlockStats]
    wall_s: dict[str, float] = field(default_factory=dict)
    dynamics_config: dict[str, dict] = field(default_factory=dict)


def combine(stats: Mapping[str, BlockStats], weights: Mapping[str, float]) -> BlockStats:
    """The block statistics of Σ wᵢ·(run i): block sums combine linearly; the sums of squares
    of a combination are not those of its parts, so they are NaN (block-based errors only)."""
    parts = [stats[k] for k in weights]
    sums = sum(w * stats[k].sums for k, w in weights.items())
    first = parts[0]
    return BlockStats(sums, np.full_like(sums, np.nan), first.block_size, first.steps, first.tests)


def measure_setting(problem: Problem, setting: Setting, *, tests, plan: ChunkPlan, key: Sequence[int], comm: Comm,
                    discrete_plan: ChunkPlan | None = None, progress: Callable[[str], None] | None = None,
                    out=None) -> SettingResult:
    """Run the discrete process (``discrete_plan``, default ``plan``) and every model of
    ``setting`` (``plan``), this rank's chunks, and gather; ``out``: a directory where both
    keep their chunks, so that a rerun resumes."""
    steps = record_steps(setting.n_steps, setting.record_every)
    dplan = discrete_plan or plan

    def kw(p):
        return dict(record_at=steps, trajectories=p.trajectories, chunk_size=p.chunk_size,
                    blocks_per_chunk=p.blocks_per_chunk, comm=comm)
    disc = build(setting.discrete_name, problem, setting.eta, setting.rho, **setting.discrete_kwargs)
    models = {label: build(name, problem, setting.eta, setting.rho, **k) for label, (name, k) in setting.models.items()}

    def tick(prefix):
        return (lambda label, c: progress(f"{setting.label} {prefix or label}")) if progress else None

    t0 = time.perf_counter()
    ref = estimate({"discrete": disc}, tests, seed=(*key, ROLE_DISCRETE), on_chunk=tick(setting.discrete_name),
                   out=None if out is None else f"{out}/discrete", **kw(dplan))
    walls = {"discrete": time.perf_counter() - t0}
    est = estimate(models, tests, seed=(*key, ROLE_SDE), on_chunk=tick(None),
                   out=None if out is None else f"{out}/models", **kw(plan))
    walls.update(est.wall_s)
    stats = dict(est.stats)
    for label, weights in setting.derived.items():
        stats[label] = combine(est.stats, weights)
    configs = {"discrete": disc.config(), **{label: d.config() for label, d in models.items()}}
    return SettingResult(setting, ref.stats["discrete"], stats, walls, configs)


# -- summaries --------------------------------------------------------------------------
def variance_reduction(result: SettingResult) -> dict:
    """Measured variance-reduction factors at the last recorded step, per test function:
    ``antithetic`` (per model run with antithetic pairs: Var of M independent trajectories ÷
    Var of the mean actually obtained, from the single-trajectory variance and the block
    means) and ``common_random_numbers`` (per pair of models: (SE_a² + SE_b²) ÷ SE(a − b)²,
    the factor by which sharing the random numbers shrinks the variance of their difference)."""
    out = {"antithetic": {}, "common_random_numbers": {}}
    runs = {k: v for k, v in result.models.items() if k in result.dynamics_config}
    tests = result.reference.tests
    for label, st in runs.items():
        if result.dynamics_config[label].get("antithetic"):
            ratio = (st.naive_standard_error()[-1] / st.standard_error()[-1]) ** 2
            out["antithetic"][label] = dict(zip(tests, map(float, ratio)))
    labels = list(runs)
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            d = runs[a].block_means() - runs[b].block_means()
            se_d = d.std(0, ddof=1)[-1] / math.sqrt(d.shape[0])
            with np.errstate(divide="ignore", invalid="ignore"):     # identical runs: inf (or nan at 0/0)
                ratio = (runs[a].standard_error()[-1] ** 2 + runs[b].standard_error()[-1] ** 2) / se_d ** 2
            out["common_random_numbers"][f"{a} - {b}"] = dict(zip(tests, map(float, ratio)))
    return out


def _summarise(result: SettingResult, n_boot: int, rng: np.random.Generator):
    summary, reps = weak_errors(result.reference, result.models, n_boot=n_boot, rng=rng)
    ref = result.reference
    curves = {"steps": list(ref.steps), "discrete_mean": ref.mean().tolist(),
              "discrete_se": ref.standard_error().tolist(),
              "model_mean": {k: v.mean().tolist() for k, v in result.models.items()},
              "model_se": {k: v.standard_error().tolist() for k, v in result.models.items()}}
    entry = {**result.setting.config(), "errors": summary, "wall_s": result.wall_s,
             "dynamics": result.dynamics_config, "curves": curves,
             "trajectories": {"discrete": ref.trajectories,
                              "models": next(iter(result.models.values())).trajectories},
             "variance_reduction": variance_reduction(result)}
    return entry, reps


def _fits(xs, entries, reps_list, models, tests) -> dict:
    fits = {}
    for m in models:
        fits[m] = {}
        for j, t in enumerate(tests):
            y = [e["errors"][m][t]["error"] for e in entries]
            r = np.stack([rep[m][:, j] for rep in reps_list], axis=1)
            if min(y) <= 0:
                fits[m][t] = None
                continue
            fits[m][t] = fit_power_law(xs, y, r).to_dict()
            # slopes between neighbouring grid points: how the rate drifts along the grid
            fits[m][t]["local_slopes"] = [float(np.log(y[i + 1] / y[i]) / np.log(xs[i + 1] / xs[i]))
                                          for i in range(len(xs) - 1)]
    return fits


def _rng(seed: int, sweep: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SWEEP_IDS[sweep], index, 7919])


def _run_settings(problem, settings, sweep, *, seed, tests, plan, discrete_plan, comm, n_boot, progress, out):
    entries, reps = [], []
    for i, s in enumerate(settings):
        res = measure_setting(problem, s, tests=tests, plan=plan, discrete_plan=discrete_plan,
                              key=(seed, SWEEP_IDS[sweep], i), comm=comm, progress=progress,
                              out=None if out is None else f"{out}/{sweep}-{i}")
        e, r = _summarise(res, n_boot, _rng(seed, sweep, i))
        entries.append(e)
        reps.append(r)
    return entries, reps


def _all_models(models, derived) -> list[str]:
    return list(models) + list(derived or {})


def sweep_eta(problem, *, etas, c, horizon, models, seed, tests, plan, comm, n_boot=1000, record_every=1,
              discrete="sam", derived=None, discrete_plan=None, progress=None, out=None) -> dict:
    """E against η with ρ = c·η^{1/3}; fitted slopes over the whole grid."""
    settings = [Setting(eta, c * eta ** (1 / 3), horizon, models, discrete, record_every, f"eta={eta:g}",
                        dict(derived or {})) for eta in etas]
    entries, reps = _run_settings(problem, settings, "eta", seed=seed, tests=tests, plan=plan,
                                  discrete_plan=discrete_plan, comm=comm, n_boot=n_boot, progress=progress, out=out)
    return {"sweep": "eta", "c": c, "horizon": horizon, "settings": entries,
            "fits": _fits(etas, entries, reps, _all_models(models, derived), list(tests)),
            "theory_slopes": THEORY_SLOPES["eta"]}


#: In the ρ sweep, a point is "above the floor" when its error exceeds this multiple of
#: the ρ = 0 error (the floor then accounts for at most a third of it).
FLOOR_FACTOR = 3.0


def sweep_rho(problem, *, eta, rhos, horizon, models, seed, tests, plan, comm, n_boot=1000, record_every=1,
              discrete="sam", include_zero=True, derived=None, discrete_plan=None, progress=None, out=None) -> dict:
    """E against ρ at fixed η; slopes fitted over ``rhos`` (ρ = 0, if run, is the floor)."""
    grid = ([0.0] if include_zero else []) + list(rhos)
    settings = [Setting(eta, r, horizon, models, discrete, record_every, f"rho={r:g}", dict(derived or {}))
                for r in grid]
    entries, reps = _run_settings(problem, settings, "rho", seed=seed, tests=tests, plan=plan,
                                  discrete_plan=discrete_plan, comm=comm, n_boot=n_boot, progress=progress, out=out)
    k = 1 if include_zero else 0
    names = _all_models(models, derived)
    result = {"sweep": "rho", "eta": eta, "horizon": horizon, "settings": entries,
              "floor": entries[0]["errors"] if include_zero else None,
              "fits": _fits(rhos, entries[k:], reps[k:], names, list(tests)),
              "theory_slopes": THEORY_SLOPES["rho"]}
    if include_zero:
        result["floor_factor"] = FLOOR_FACTOR
        result["fits_above_floor"] = _fits_above_floor(rhos, entries[k:], reps[k:], entries[0]["errors"], names,
                                                       list(tests))
    return result


def _fits_above_floor(xs, entries, reps_list, floor, models, tests) -> dict:
    """Power-law fits over the points whose error exceeds FLOOR_FACTOR × the ρ = 0 error
    (the ρ² / ρ³ laws hold above the O(η) floor); None with < 2 such points."""
    fits = {}
    for m in models:
        fits[m] = {}
        for j, t in enumerate(tests):
            y = np.array([e["errors"][m][t]["error"] for e in entries])
            keep = y > FLOOR_FACTOR * floor[m][t]["error"]
            if keep.sum() < 2:
                fits[m][t] = None
                continue
            r = np.stack([rep[m][:, j] for rep in reps_list], axis=1)[:, keep]
            fit = fit_power_law(np.asarray(xs)[keep], y[keep], r).to_dict()
            fit["rhos"] = [float(v) for v in np.asarray(xs)[keep]]
            fits[m][t] = fit
    return fits


def sweep_ablation(problem, *, eta, rho, horizon, model_names, substeps, n_batches, base_kwargs, seed, tests, plan,
                   comm, n_boot=1000, record_every=1, discrete="sam", discrete_plan=None, progress=None,
                   out=None) -> dict:
    """SDE errors at fixed (η, ρ) against the Euler sub-step m and (Monte Carlo) K.

    All variants (model, m) and (model, K) form one setting: one discrete reference run,
    and SDE runs that share their random numbers (variants with m = 2^j sub-steps follow
    the same Brownian path), compared with jointly redrawn bootstrap blocks.
    """
    models = {}
    for name in model_names:
        for m in substeps:
            models[f"{name}|m={m}"] = (name, {**base_kwargs, "substeps": m})
        for K in n_batches:
            models[f"{name}|K={K}"] = (name, {**base_kwargs, "n_batches": K})
    s = Setting(eta, rho, horizon, models, discrete, record_every, "ablation")
    res = measure_setting(problem, s, tests=tests, plan=plan, discrete_plan=discrete_plan,
                          key=(seed, SWEEP_IDS["ablation"], 0), comm=comm, progress=progress,
                          out=None if out is None else f"{out}/ablation-0")
    e, reps = _summarise(res, n_boot, _rng(seed, "ablation", 0))
    # error(variant) − error(finest variant), with the SE of the paired bootstrap difference
    deltas = {}
    for name in model_names:
        for kind, values in (("m", substeps), ("K", n_batches)):
            if not values:
                continue
            finest = f"{name}|{kind}={max(values)}"
            for v in values:
                lab = f"{name}|{kind}={v}"
                deltas[lab] = {t: {"delta": e["errors"][lab][t]["error"] - e["errors"][finest][t]["error"],
                                   "se": float((reps[lab][:, j] - reps[finest][:, j]).std(ddof=1)),
                                   "relative_to": finest}
                               for j, t in enumerate(tests)}
    return {"sweep": "ablation", "eta": eta, "rho": rho, "horizon": horizon, "substeps": list(substeps),
            "n_batches": list(n_batches), "setting": e, "delta_vs_finest": deltas}
