"""Weak errors with batch-means bootstrap standard errors, and log-log slope fits.

Weak error of a model process X against the discrete process x (docs/math.md §8):

    E = max_k |E g(x_k) − E g(X_{kη})|,

estimated by plugging in the Monte Carlo means of both. The max over steps makes the
estimator non-linear (and biased upwards by the noise: E max ≥ max E), so its
uncertainty is taken from a bootstrap over the i.i.d. blocks of
``sdesam.montecarlo``: each replicate redraws the blocks of every independent run
with replacement (multinomial block weights) and recomputes the whole statistic,
max over k included. Runs that share random numbers (the SDEs of one setting share
their Gaussian increments) are redrawn with the same block weights, so differences
between them keep their correlation.

Reported per estimate: the point value, the bootstrap standard error (``se``), the
bootstrap mean (its excess over the point value estimates the noise bias of the
max), and the plain standard error of the difference at the maximising step
(``se_at_argmax``).

Determinism: every contraction uses ``np.einsum`` (numpy's own loops), never ``@``:
OpenBLAS splits large matrix products over threads and the last bits of the sums
then depend on the thread count, which differs between a single process and torchrun
workers (measured: a 1000×100 by 100×243 product changed with OPENBLAS_NUM_THREADS).

Slopes: ordinary least squares of log E on log η (or log ρ). Two 95% intervals:
``ci_bootstrap``, the 2.5/97.5 percentiles of the slope over the bootstrap replicates
(Monte Carlo uncertainty only), and ``ci_regression``, the t-interval (n − 2 degrees
of freedom) from the scatter of the points about the line (includes lack of fit of
a single power law).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import stdtrit

from sdesam.montecarlo import BlockStats

__all__ = ["bootstrap_weights", "max_error", "weak_errors", "fit_power_law", "PowerLawFit"]


def bootstrap_weights(n_blocks: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Block weights of ``n_boot`` bootstrap replicates: multinomial counts / n_blocks,
    shape (n_boot, n_blocks); each row sums to 1."""
    return rng.multinomial(n_blocks, np.full(n_blocks, 1.0 / n_blocks), size=n_boot) / n_blocks


def max_error(mean_ref: np.ndarray, mean_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """max_k |mean_ref − mean_model| over the record axis (-2): (..., R, T) → values (..., T)
    and the maximising record index (..., T)."""
    diff = np.abs(mean_ref - mean_model)
    return diff.max(-2), diff.argmax(-2)


def _replicate_means(stats: BlockStats, weights: np.ndarray) -> np.ndarray:
    """Bootstrap replicates of the mean: (n_boot, R, T)."""
    bm = stats.block_means()
    nb, R, T = bm.shape
    return np.einsum("bn,nk->bk", weights, bm.reshape(nb, R * T)).reshape(-1, R, T)


def weak_errors(ref: BlockStats, models: dict[str, BlockStats], *, n_boot: int,
                rng: np.random.Generator) -> tuple[dict, dict[str, np.ndarray]]:
    """Weak errors of each model against ``ref`` with bootstrap uncertainty.

    All models are taken to share random numbers block by block (same block layout);
    ``ref`` is independent of them.

    Returns ``(summary, replicates)``: summary[model][test] is a dict with keys
    ``error``, ``se``, ``boot_mean``, ``argmax_step``, ``se_at_argmax``; replicates[model]
    has shape (n_boot, n_tests).
    """
    if not models:
        raise ValueError("weak_errors needs at least one model run")
    mean_ref, se_ref = ref.mean(), ref.standard_error()
    w_ref = bootstrap_weights(ref.n_blocks, n_boot, rng)
    reps_ref = _replicate_means(ref, w_ref)
    first = next(iter(models.values()))
    w_mod = bootstrap_weights(first.n_blocks, n_boot, rng)
    summary, replicates = {}, {}
    for name, st in models.items():
        if st.steps != ref.steps or st.tests != ref.tests:
            raise ValueError(f"model {name!r} was recorded at other steps or test functions than the reference")
        if st.n_blocks != first.n_blocks:
            raise ValueError("the model runs of one setting must share their block layout")
        err, arg = max_error(mean_ref, st.mean())
        reps, _ = max_error(reps_ref, _replicate_means(st, w_mod))
        se_step = np.sqrt(se_ref ** 2 + st.standard_error() ** 2)
        replicates[name] = reps
        summary[name] = {
            test: {"error": float(err[j]), "se": float(reps[:, j].std(ddof=1)),
                   "boot_mean": float(reps[:, j].mean()), "argmax_step": int(ref.steps[arg[j]]),
                   "se_at_argmax": float(se_step[arg[j], j])}
            for j, test in enumerate(ref.tests)}
    return summary, replicates


@dataclass
class PowerLawFit:
    """log y = intercept + slope · log x by least squares, with 95% intervals."""

    slope: float
    intercept: float
    ci_regression: tuple[float, float]
    ci_bootstrap: tuple[float, float] | None = None
    n_points: int = 0

    def to_dict(self) -> dict:
        return {"slope": self.slope, "intercept": self.intercept, "ci_regression": list(self.ci_regression),
                "ci_bootstrap": None if self.ci_bootstrap is None else list(self.ci_bootstrap),
                "n_points": self.n_points}


def _ols(lx: np.ndarray, ly: np.ndarray):
    """Slopes and intercepts of ly (..., n) on lx (n,)."""
    xc = lx - lx.mean()
    slope = np.einsum("...n,n->...", ly - ly.mean(-1, keepdims=True), xc) / np.einsum("n,n->", xc, xc)
    return slope, ly.mean(-1) - slope * lx.mean()


def fit_power_law(x, y, replicates: np.ndarray | None = None, level: float = 0.95) -> PowerLawFit:
    """Fit y ≈ C x^p on a log-log scale.

    Args:
        x, y: positive values, shape (n,), n ≥ 2 (the regression interval needs n ≥ 3).
        replicates: optional bootstrap replicates of y, shape (n_boot, n) — each row
            one joint redraw of all points — for the percentile interval of p.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or x.size < 2:
        raise ValueError(f"x and y must be 1-d of equal length ≥ 2, got {x.shape} and {y.shape}")
    if (x <= 0).any() or (y <= 0).any():
        raise ValueError("a power-law fit needs positive x and y")
    lx, ly = np.log(x), np.log(y)
    slope, intercept = _ols(lx, ly)
    n = x.size
    if n > 2:
        resid = ly - (intercept + slope * lx)
        s2 = np.einsum("n,n->", resid, resid) / (n - 2)
        xc = lx - lx.mean()
        se = np.sqrt(s2 / np.einsum("n,n->", xc, xc))
        q = stdtrit(n - 2, 0.5 + level / 2)                # Student-t quantile
        ci_reg = (float(slope - q * se), float(slope + q * se))
    else:
        ci_reg = (float("nan"), float("nan"))
    ci_boot = None
    if replicates is not None:
        reps = np.asarray(replicates, dtype=float)
        reps = reps[(reps > 0).all(1)]
        if len(reps):
            s, _ = _ols(lx, np.log(reps))
            lo, hi = np.percentile(s, [50 * (1 - level), 50 * (1 + level)])
            ci_boot = (float(lo), float(hi))
    return PowerLawFit(float(slope), float(intercept), ci_reg, ci_boot, n)

