"""Figures of the weak-error experiment (matplotlib, Agg backend, written to files)."""
from __future__ import annotations

import numpy as np

__all__ = ["plot_sweep", "plot_ablation"]

COLORS = {"sgd_sde": "tab:gray", "sam_sde2": "tab:blue", "sam_sde3": "tab:red"}
LABELS = {"sgd_sde": "SGD-SDE", "sam_sde2": "SAM-SDE2", "sam_sde3": "SAM-SDE3", "eigen_sam_sde": "Eigen-SAM SDE"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def NullFormatter():
    from matplotlib.ticker import NullFormatter as _NF
    return _NF()


def _save(plt, fig, path, title: str) -> None:
    """Title (if any), tight layout, PNG at 130 dpi, and the figure closed."""
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_sweep(result: dict, path, title: str = "") -> None:
    """Errors against η (or ρ) with ±1 bootstrap-SE bars and fitted power laws, one panel
    per test function. ``result`` is a sweep dict of ``validation.experiment``."""
    plt = _plt()
    xkey = "eta" if result["sweep"] == "eta" else "rho"
    entries = [e for e in result["settings"] if e[xkey] > 0]
    tests = list(next(iter(entries[0]["errors"].values())))
    models = list(result["fits"])
    fig, axes = plt.subplots(1, len(tests), figsize=(4.2 * len(tests), 3.8), squeeze=False)
    xs = np.array([e[xkey] for e in entries])
    for ax, t in zip(axes[0], tests):
        handles = []
        for m in models:
            y = np.array([e["errors"][m][t]["error"] for e in entries])
            se = np.array([e["errors"][m][t]["se"] for e in entries])
            fit = result["fits"][m][t]
            ci = fit["ci_bootstrap"] or fit["ci_regression"]
            lab = f"{LABELS.get(m, m)}: slope {fit['slope']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            col = COLORS.get(m)
            handles.append(ax.errorbar(xs, y, yerr=se, fmt="o", color=col, capsize=3, label=lab, ms=4))
            grid = np.geomspace(xs.min(), xs.max(), 50)
            ax.plot(grid, np.exp(fit["intercept"]) * grid ** fit["slope"], "--", color=col, lw=1)
            if result.get("floor") is not None:
                ax.axhline(result["floor"][m][t]["error"], color=col, ls=":", lw=0.8)
            above = (result.get("fits_above_floor") or {}).get(m, {}).get(t)
            if above:
                g2 = np.geomspace(min(above["rhos"]), max(above["rhos"]), 20)
                ci = above["ci_bootstrap"] or above["ci_regression"]
                handles += ax.plot(g2, np.exp(above["intercept"]) * g2 ** above["slope"], "-", color=col, lw=2,
                                   alpha=0.5,
                                   label=f"  above 3× floor: {above['slope']:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
        ax.set_xlabel("η" if xkey == "eta" else "ρ")
        ax.set_ylabel(f"max_k |E g(x_k) − E g(X_kη)|,  g = {t}")
        ax.set_title(t)
        ax.legend(handles=handles, fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    _save(plt, fig, path, title)


def plot_ablation(result: dict, path, title: str = "") -> None:
    """Errors against the Euler sub-step m (and K) at fixed η, ρ; ±1 bootstrap SE."""
    plt = _plt()
    errs = result["setting"]["errors"]
    tests = list(next(iter(errs.values())))
    kinds = [("m", result["substeps"])] + ([("K", result["n_batches"])] if result["n_batches"] else [])
    fig, axes = plt.subplots(len(kinds), len(tests), figsize=(4.2 * len(tests), 3.4 * len(kinds)),
                             squeeze=False)
    names = sorted({k.split("|")[0] for k in errs})
    for row, (kind, values) in enumerate(kinds):
        for ax, t in zip(axes[row], tests):
            for n in names:
                y = [errs[f"{n}|{kind}={v}"][t]["error"] for v in values]
                se = [errs[f"{n}|{kind}={v}"][t]["se"] for v in values]
                ax.errorbar(values, y, yerr=se, fmt="o-", color=COLORS.get(n), capsize=3,
                            label=LABELS.get(n, n), ms=4)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(values, [str(v) for v in values])
            ax.set_xlabel(kind)
            ax.set_title(t)
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
    _save(plt, fig, path, title)
