"""Markdown tables from a weak-error ``summary.json`` (the tables of docs/results/weak_error.md).

    python -m validation.report DIR [DIR ...]

Prints, for every sweep found: the errors ± bootstrap SE per setting, model and test
function, the fitted slopes with both 95% intervals and the local slopes, the ρ = 0
floor and above-floor fits (ρ sweep), the ablation differences, the acceptance checks
and the wall times. Numbers are printed from the file, never retyped.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .plotting import LABELS

__all__ = ["markdown"]



def _pm(d: dict) -> str:
    return f"{d['error']:.3e} ± {d['se']:.1e}"


def _ci(f: dict) -> str:
    if f is None:
        return "(no fit: an error is 0)"
    b, r = f.get("ci_bootstrap"), f["ci_regression"]
    s = f"**{f['slope']:.3f}**"
    if b:
        s += f" [{b[0]:.2f}, {b[1]:.2f}]"
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in r):
        s += f" (regr. [{r[0]:.2f}, {r[1]:.2f}])"
    else:
        s += f" ({f['n_points']} points: no regression interval)"
    return s


def key_name(key: str) -> str:
    return "eta" if key == "η" else "rho"


def _local(r: dict, m: str, t: str, xs) -> list[float]:
    """Slopes between neighbouring grid points (from the file, or recomputed from the errors)."""
    if r["fits"][m][t] is None:
        return []
    if "local_slopes" in r["fits"][m][t]:
        return r["fits"][m][t]["local_slopes"]
    y = [e["errors"][m][t]["error"] for e in r["settings"] if e[key_name("η" if r["sweep"] == "eta" else "ρ")] > 0]
    return [math.log(y[i + 1] / y[i]) / math.log(xs[i + 1] / xs[i]) for i in range(len(xs) - 1)]


def _sweep(r: dict, key: str) -> list[str]:
    models = list(r["fits"])
    tests = list(next(iter(r["settings"][0]["errors"].values())))
    out = []
    for t in tests:
        out.append(f"\n*g = {t}*\n")
        out.append("| η | ρ | N | " + " | ".join(LABELS.get(m, m) for m in models) + " |")
        out.append("|---|---|---|" + "---|" * len(models))
        for e in r["settings"]:
            out.append(f"| {e['eta']:g} | {e['rho']:.4g} | {e['n_steps']} | "
                       + " | ".join(_pm(e["errors"][m][t]) for m in models) + " |")
        out.append(f"| slope vs {key} [95% bootstrap] (regression) | | | "
                   + " | ".join(_ci(r["fits"][m][t]) for m in models) + " |")
        xs = [e[key_name(key)] for e in r["settings"] if e[key_name(key)] > 0]
        out.append(f"| local slopes, neighbouring {key} (grid order) | | | " + " | ".join(
            ", ".join(f"{v:.2f}" for v in _local(r, m, t, xs)) for m in models) + " |")
        above = r.get("fits_above_floor")
        if above:
            out.append("| slope above 3× floor (ρ used) | | | " + " | ".join(
                (_ci(above[m][t]) + " (ρ ∈ " + ", ".join(f"{v:g}" for v in above[m][t]["rhos"]) + ")")
                if above[m][t] else "< 2 points" for m in models) + " |")
    return out


def markdown(path: Path) -> str:
    data = json.loads((Path(path) / "summary.json").read_text())
    cfg, res, rt, prob = data["config"], data["results"], data["runtime"], data["problem"]
    plans = data["plans"]
    env = data["environment"]
    out = [f"### `{data['command']}`", "",
           f"problem `{prob['problem']}` (d = {prob['dim']}, n = {prob['n_train']}, B = {prob['batch_size']}), "
           f"data: {data['data_source']}; M = {plans['models']['trajectories']} trajectories per SDE "
           f"({plans['models']['n_blocks']} bootstrap blocks), {plans['discrete']['trajectories']} of "
           f"{cfg['discrete']}; SDEs: m = {cfg['substeps']} sub-steps, K = {cfg['n_batches']}, diffusion "
           f"{cfg['diffusion']}, antithetic {cfg['antithetic']}; T = {cfg['horizon']}, c = {cfg['c']}; wall time "
           f"{data['wall_seconds_this_invocation']:.0f} s ({rt['world_size']} process(es), "
           f"{env['torch_threads']} thread(s) each; commit {env['git_commit']})."]
    if "eta" in res:
        out.append("\nErrors E(η) = max_k |E g(x_k) − E g(X_kη)| ± bootstrap SE:")
        out += _sweep(res["eta"], "η")
    if "rho" in res:
        out.append(f"\nErrors against ρ at η = {res['rho']['eta']} (the ρ = 0 row is the floor):")
        out += _sweep(res["rho"], "ρ")
    if "ablation" in res:
        a = res["ablation"]
        errs = a["setting"]["errors"]
        tests = list(next(iter(errs.values())))
        out.append(f"\nAblation at η = {a['eta']}, ρ = {a['rho']:.4g}: error ± SE, and the difference to the "
                   "finest variant ± paired bootstrap SE")
        out.append("\n| variant | " + " | ".join(tests) + " |")
        out.append("|---|" + "---|" * len(tests))
        for k, v in errs.items():
            d = a.get("delta_vs_finest", {}).get(k)
            out.append(f"| {k} | " + " | ".join(
                _pm(v[t]) + (f" (Δ {d[t]['delta']:+.2e} ± {d[t]['se']:.1e})" if d else "") for t in tests) + " |")
    if res.get("checks"):
        out.append("\nAcceptance checks, as computed by the program:\n")
        for k, v in res["checks"].items():
            out.append(f"- `{k}`: {json.dumps(v)}")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m validation.report DIR [DIR ...]")
    print("\n\n".join(markdown(Path(p)) for p in sys.argv[1:]))
