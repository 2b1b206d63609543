"""The one-step moment test: does an SDE's drift and diffusion match the discrete step?

Theorem 4.1 rests on one-step moment matching (paper Lemma B.3): the discrete increment
Δ̄ = −η Φ_γ(x), Φ_γ = Φ(g_γ, ∇f_γ(x + ρε_γ)), must have mean and covariance equal to the
SDE's drift and diffusion over one step, −η E w_γ and η² Cov w_γ, to O(ρ^{k+1}) for the
model of Taylor order k (w_γ = Φ(g_γ, v^k_γ); k = 0 SGD-SDE, 1 SAM-SDE2, 2 SAM-SDE3). At a
point x and for a grid of ρ this module measures

* the drift mismatch  ‖E_γ[Φ_γ − w_γ]‖ — **paired**: both from the same minibatch γ (and
  the same ε_γ), so the per-minibatch difference, itself O(ρ^{k+1}), is what is averaged;
  estimated without the upward bias of ‖mean‖ by the U-statistic
  ‖E d‖² ≈ (‖Σ d_γ‖² − Σ‖d_γ‖²)/(N(N − 1));
* the covariance mismatch ‖Cov Φ_γ − Cov w_γ‖_F through r Gaussian random projections
  Z (d × r; no d × d matrix is formed): the off-diagonal entries of Zᵀ(·)Z estimate the
  squared Frobenius norm without bias, (1/(r(r−1))) Σ_{i≠j} (zᵢᵀ A zⱼ)² ≈ ‖A‖_F², each entry's
  square again by a U-statistic over the paired minibatches;
* both relative to the discrete moments (÷ ‖E Φ_γ‖, ÷ ‖Cov Φ_γ‖_F), and their log-log slopes
  against ρ (theory k + 1).

Standard errors and slope intervals come from the jackknife over G groups of minibatches
(the same minibatches at every ρ, so the slope's interval accounts for that pairing).
With ``n_batches="exact"`` (enumerable toys) every expectation is the exact mean over all
minibatches: no U-statistic correction, standard errors 0, slopes without an interval.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
from scipy.special import stdtrit
from torch import Tensor

from ._checks import check_int, check_positive
from ._streams import STREAM_BATCH, STREAM_RULE, STREAM_SKETCH, seeded_generator
from .discrete import check_micro_batches
from .problem import Problem
from .rules import get_rule
from .updates import get_update

__all__ = ["MomentTest", "moment_test", "TAYLOR_MODELS"]

#: the SDE models as coefficients (c₁, c₂) of their per-minibatch vector v = g + c₁ρh + c₂ρ²t
TAYLOR_MODELS = {"sgd_sde": (0.0, 0.0), "sam_sde2": (1.0, 0.0), "sam_sde3": (1.0, 0.5)}
#: theory: the mismatch of a model of Taylor order k is O(ρ^{k+1})
THEORY_SLOPES = {"sgd_sde": 1.0, "sam_sde2": 2.0, "sam_sde3": 3.0}


@dataclass
class MomentTest:
    """The measured one-step mismatches at one point.

    Attributes:
        rhos: the ρ grid (n_rho,).
        models: model names (n_models,).
        drift, drift_se: ‖E(Φ − w)‖ and its jackknife SE, (n_rho, n_models).
        drift_rel: drift ÷ ‖E Φ‖, (n_rho, n_models).
        cov, cov_se: the sketched ‖Cov Φ − Cov w‖_F and its SE, (n_rho, n_models).
        cov_rel: cov ÷ the sketched ‖Cov Φ‖_F, (n_rho, n_models).
        mean_norm: ‖E Φ‖ per ρ; cov_norm: sketched ‖Cov Φ‖_F per ρ.
        slopes: {model: {"drift": fit, "cov": fit}}, each fit a dict (slope, se, ci95,
            theory); over the ρ whose mismatch is resolved (≥ 2 SE), None if < 2 of them.
        config: the configuration (rule, update, micro-batches, N, r, G, exact).
    """

    rhos: np.ndarray
    models: tuple[str, ...]
    drift: np.ndarray
    drift_se: np.ndarray
    drift_rel: np.ndarray
    cov: np.ndarray
    cov_se: np.ndarray
    cov_rel: np.ndarray
    mean_norm: np.ndarray
    cov_norm: np.ndarray
    slopes: dict
    config: dict
    theory: dict = field(default_factory=dict)

    def rows(self, **extra) -> list[dict]:
        """Tidy rows: one per (ρ, model, quantity)."""
        out = []
        for i, rho in enumerate(self.rhos):
            for j, m in enumerate(self.models):
                for q, val, se, rel in (("drift", self.drift, self.drift_se, self.drift_rel),
                                        ("cov", self.cov, self.cov_se, self.cov_rel)):
                    out.append({**extra, "rho": float(rho), "model": m, "quantity": q, "mismatch": float(val[i, j]),
                                "se": float(se[i, j]), "relative": float(rel[i, j])})
        return out

    def to_dict(self) -> dict:
        return {"rhos": self.rhos.tolist(), "models": list(self.models), "drift": self.drift.tolist(),
                "drift_se": self.drift_se.tolist(), "drift_rel": self.drift_rel.tolist(), "cov": self.cov.tolist(),
                "cov_se": self.cov_se.tolist(), "cov_rel": self.cov_rel.tolist(),
                "mean_norm": self.mean_norm.tolist(), "cov_norm": self.cov_norm.tolist(), "slopes": self.slopes,
                "theory_slopes": self.theory, "config": self.config}


def _jackknife(full: np.ndarray, leave_out: np.ndarray) -> np.ndarray:
    """Jackknife SE from leave-one-group-out replicates (G, ...)."""
    G = leave_out.shape[0]
    return np.sqrt((G - 1) / G * ((leave_out - leave_out.mean(0)) ** 2).sum(0))


def _u_square(total: np.ndarray, sq: np.ndarray, n: np.ndarray, exact: bool) -> np.ndarray:
    """Unbiased estimate of (E q)² from Σq (total) and Σq² (sq) over n samples (or the plain
    square of the mean when the samples are the whole population)."""
    if exact:
        return (total / n) ** 2
    return (total ** 2 - sq) / (n * (n - 1))


def _fit(rhos: np.ndarray, values: np.ndarray, se: np.ndarray, leave_out: np.ndarray, theory: float) -> dict | None:
    """Least-squares slope of log value on log ρ over the resolved points, with a jackknife SE."""
    keep = (values > 0) & (values >= 2 * se) & np.isfinite(values)
    if keep.sum() < 2:
        return None
    lx = np.log(rhos[keep])
    xc = lx - lx.mean()

    def slope(v):
        lv = np.log(np.maximum(v, 1e-300))
        return float(np.dot(lv - lv.mean(), xc) / np.dot(xc, xc))

    s = slope(values[keep])
    out = {"slope": s, "theory": theory, "rhos": rhos[keep].tolist(), "n_points": int(keep.sum())}
    if leave_out is not None and leave_out.shape[0] >= 2 and (leave_out[:, keep] > 0).all():
        reps = np.array([slope(r[keep]) for r in leave_out])
        G = reps.shape[0]
        se_s = float(np.sqrt((G - 1) / G * ((reps - reps.mean()) ** 2).sum()))
        q = float(stdtrit(G - 1, 0.975))
        out.update({"se": se_s, "ci95": [s - q * se_s, s + q * se_s]})
    else:
        out.update({"se": None, "ci95": None})
    return out


def moment_test(problem: Problem, x: Tensor, rhos: Sequence[float], *, rule="sam", update=None,
                micro_batches: int = 1, eigvec: Tensor | None = None,
                models: Mapping[str, tuple[float, float]] | None = None, n_batches: int | str = 1000,
                chunk: int = 32, projections: int | Tensor = 16, groups: int = 10, seed: int = 0) -> MomentTest:
    """Measure the one-step drift and covariance mismatches at x for every ρ and model.

    Args:
        problem: the ``Problem``.
        x: the point (d,) (e.g. a step of a discrete SAM trajectory).
        rhos: the ρ grid (positive, ≥ 2 values for slopes).
        rule, update, micro_batches: the discrete method (``sdesam.discrete.DiscreteSAM``'s).
        eigvec: the fixed v̂ of a rule that needs one (Eigen-SAM with a given v̂), (d,).
        models: {name: (c₁, c₂)} with per-minibatch model vectors w = Φ(g, g + c₁ρh + c₂ρ²t);
            default ``TAYLOR_MODELS`` (SGD-SDE, SAM-SDE2, SAM-SDE3).
        n_batches: N minibatches (i.i.d. uniform, from ``seed``), or ``"exact"`` (all of them).
        chunk: minibatches per batched oracle call (memory ∝ chunk · d).
        projections: r ≥ 2 random Gaussian directions of the covariance sketch (drawn from
            ``seed``), or the directions themselves as a (d, r) matrix Z.
        groups: G ≥ 2 jackknife groups of minibatches.
        seed: keys the minibatches, the projections and a sampling rule's draws.
    """
    rule, update = get_rule(rule), get_update(update)
    m = check_micro_batches(problem, micro_batches)
    if x.shape != (problem.dim,):
        raise ValueError(f"x must be one point of shape (d,) = ({problem.dim},), got {tuple(x.shape)}")
    rhos = np.array([check_positive("rho", r) for r in rhos], dtype=float)
    if rhos.size < 1:
        raise ValueError("rhos must list at least one ρ")
    if rule.needs_eigenvector and eigvec is None:
        raise ValueError(f"rule {rule!r} needs its eigenvector: pass eigvec= (d,)")
    models = dict(TAYLOR_MODELS if models is None else models)
    if not models:
        raise ValueError("models must name at least one model")
    if isinstance(projections, Tensor):
        if projections.dim() != 2 or projections.shape[0] != problem.dim or projections.shape[1] < 2:
            raise ValueError(f"projections must be a (d, r) matrix with d={problem.dim}, r >= 2, "
                             f"got shape {tuple(projections.shape)}")
        r = projections.shape[1]
    else:
        r = check_int("projections", projections, 2)
    G = check_int("groups", groups, 2)
    chunk = check_int("chunk", chunk, 1)
    exact = n_batches == "exact"
    batches = problem.enumerate_batches(ordered=m > 1) if exact else problem.sample_batches(
        check_int("n_batches", n_batches, 2), seeded_generator(seed, STREAM_BATCH, 0, device=problem.device))
    N = batches.shape[0]
    if N < G:
        raise ValueError(f"{N} minibatches cannot form groups={G} jackknife groups")
    micro = problem.with_batch_size(problem.batch_size // m) if m > 1 else problem
    dtype, device, d = problem.dtype, problem.device, problem.dim
    Z = projections if isinstance(projections, Tensor) else torch.randn(
        d, r, generator=seeded_generator(seed, STREAM_SKETCH, 0), dtype=torch.float64)
    Z = Z.to(device, dtype)
    x = x.detach().to(device, dtype)
    names = list(models)
    nR, nM = len(rhos), len(names)
    group_of = np.arange(N) * G // N                       # contiguous groups of minibatches
    # per group: vector sums of d = Φ − w (ρ, model) and of Φ (ρ); scalar sums of ‖d‖², ‖Φ‖²
    S_d = torch.zeros(G, nR, nM, d, dtype=torch.float64 if d * G * nR * nM < 5e7 else dtype, device=device)
    S_p = torch.zeros(G, nR, d, dtype=S_d.dtype, device=device)
    Q_d = np.zeros((G, nR, nM))
    Q_p = np.zeros((G, nR))
    proj_p = np.zeros((N, nR, r))                          # Zᵀ Φ_γ
    proj_w = np.zeros((N, nR, nM, r))                      # Zᵀ w_γ
    gen = seeded_generator(seed, STREAM_RULE, 0, device=device) if rule.needs_generator else None
    for start in range(0, N, chunk):
        b = batches[start:start + chunk]                   # (c, B)
        c = b.shape[0]
        xb = x.expand(c, d)
        if m > 1:
            b = b.reshape(c, m, -1)
            xb = xb[:, None, :]
        ev = None if eigvec is None else eigvec.to(device, dtype)
        tv = (micro if m > 1 else problem).taylor(xb, b, rule, 0.0, 2, eigvec=ev, components=True, generator=gen)
        groups_here = torch.as_tensor(group_of[start:start + c], device=device)
        for i, rho in enumerate(rhos):
            p = (micro if m > 1 else problem).gradient(xb + rho * tv.eps, b)
            phi = p if update.is_identity else update(tv.g, p)
            ws = []
            for name in names:
                c1, c2 = models[name]
                v = tv.g + (c1 * rho) * tv.h + (c2 * rho * rho) * tv.t
                ws.append(v if update.is_identity else update(tv.g, v))
            if m > 1:
                phi = phi.mean(-2)
                ws = [w.mean(-2) for w in ws]
            S_p[:, i].index_add_(0, groups_here, phi.to(S_p.dtype))
            Q_p[:, i] += np.bincount(group_of[start:start + c], (phi.double() ** 2).sum(-1).cpu().numpy(),
                                     minlength=G)
            proj_p[start:start + c, i] = (phi @ Z).double().cpu().numpy()
            for j, w in enumerate(ws):
                diff = phi - w
                S_d[:, i, j].index_add_(0, groups_here, diff.to(S_d.dtype))
                Q_d[:, i, j] += np.bincount(group_of[start:start + c], (diff.double() ** 2).sum(-1).cpu().numpy(),
                                            minlength=G)
                proj_w[start:start + c, i, j] = (w @ Z).double().cpu().numpy()
    n_g = np.bincount(group_of, minlength=G).astype(float)

    def vec_norms(S: Tensor, Q: np.ndarray):
        """(full, leave-one-out) estimates of ‖E q‖ from group vector sums S (G, ..., d)."""
        tot = S.sum(0)
        full_sq = (tot.double() ** 2).sum(-1).cpu().numpy()
        dots = (S.double() * tot.double()).sum(-1).cpu().numpy()              # S_g · S
        own = (S.double() ** 2).sum(-1).cpu().numpy()                          # ‖S_g‖²
        Qt = Q.sum(0)
        shape = (-1,) + (1,) * (Q.ndim - 1)

        def u_norm(sq, q, n):          # ‖E q‖² from ‖Σq‖² and Σ‖q‖² over n samples (U-statistic)
            return sq / n ** 2 if exact else (sq - q) / (n * (n - 1))
        u = u_norm(full_sq, Qt, N)
        loo_sq = full_sq[None] - 2 * dots + own
        u_loo = u_norm(loo_sq, Qt[None] - Q, (N - n_g).reshape(shape))
        return np.sqrt(np.maximum(u, 0)), np.sqrt(np.maximum(u_loo, 0))

    drift, drift_loo = vec_norms(S_d, Q_d)
    mean_norm, mean_loo = vec_norms(S_p, Q_p)

    def cov_frob(a: np.ndarray, w: np.ndarray | None, mask: np.ndarray):
        """Sketched ‖Cov a − Cov w‖_F (w None: ‖Cov a‖_F) over the samples in ``mask``."""
        n = int(mask.sum())
        A = a[mask] - a[mask].mean(0)
        q = A[..., :, None] * A[..., None, :]
        if w is not None:
            W = w[mask] - w[mask].mean(0)
            q = q - W[..., :, None] * W[..., None, :]
        scale = n / (n - 1) if not exact else 1.0             # unbiased sample covariance
        q = q * scale
        u = _u_square(q.sum(0), (q ** 2).sum(0), n, exact)
        off = ~np.eye(r, dtype=bool)
        return math.sqrt(max(float(u[off].mean()), 0.0))

    all_mask = np.ones(N, dtype=bool)
    cov = np.zeros((nR, nM))
    cov_loo = np.zeros((G, nR, nM))
    cov_norm = np.zeros(nR)
    for i in range(nR):
        cov_norm[i] = cov_frob(proj_p[:, i], None, all_mask)
        for j in range(nM):
            cov[i, j] = cov_frob(proj_p[:, i], proj_w[:, i, j], all_mask)
            for g in range(G):
                cov_loo[g, i, j] = cov_frob(proj_p[:, i], proj_w[:, i, j], group_of != g)
    if exact:       # exact expectations: no sampling error, and no jackknife replicates to speak of
        drift_se, cov_se, drift_loo, cov_loo = np.zeros_like(drift), np.zeros_like(cov), None, None
    else:
        drift_se, cov_se = _jackknife(drift, drift_loo), _jackknife(cov, cov_loo)
    slopes = {}
    for j, name in enumerate(names):
        theory = float(THEORY_SLOPES.get(name, np.nan))
        slopes[name] = {"drift": _fit(rhos, drift[:, j], drift_se[:, j],
                                      None if drift_loo is None else drift_loo[:, :, j], theory),
                        "cov": _fit(rhos, cov[:, j], cov_se[:, j], None if cov_loo is None else cov_loo[:, :, j],
                                    theory)}
    tiny = np.finfo(float).tiny
    config = {"rule": rule.config(), "update": update.config(), "micro_batches": m,
              "n_batches": "exact" if exact else N, "projections": r, "groups": G, "chunk": chunk, "seed": seed,
              "models": {k: list(v) for k, v in models.items()},
              "eigvec": eigvec is not None, "problem": problem.config()}
    return MomentTest(rhos, tuple(names), drift, drift_se, drift / np.maximum(mean_norm, tiny)[:, None], cov, cov_se,
                      cov / np.maximum(cov_norm, tiny)[:, None], mean_norm, cov_norm, slopes, config,
                      {k: THEORY_SLOPES.get(k) for k in names})
