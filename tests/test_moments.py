"""The one-step moment test on an enumerable toy: measured mismatches equal the exact values
(closed-form derivatives, explicit loops over all minibatches), Monte Carlo estimates agree
with them within their standard errors, the slopes in ρ are 1 / 2 / 3, and a wrong Taylor
coefficient changes the slope."""
import numpy as np
import pytest
import torch

from sdesam.moments import moment_test
from sdesam.updates import GSAMUpdate

from .problems import DTYPE, LogCoshReference, logcosh_data, logcosh_problem

X = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
RHOS = [0.4, 0.2, 0.1, 0.05]


def _exact(problem, ref, rho, c, update=None):
    """(‖E(Φ − w)‖, the sketch of ‖Cov Φ − Cov w‖_F, ‖E Φ‖) by loops over all minibatches."""
    phis, ws = [], []
    for idx in problem.enumerate_batches():
        g = ref.grad(X, idx)
        u = g / g.norm()
        p = ref.grad(X + rho * u, idx)
        w = g + c[0] * rho * ref.hess(X, idx) @ u + c[1] * rho * rho * ref.third(X, idx, u, u)
        if update is not None:
            p, w = update(g, p), update(g, w)
        phis.append(p)
        ws.append(w)
    P, W = torch.stack(phis), torch.stack(ws)
    return P, W


def _sketch(A, Z):
    M = Z.T @ A @ Z
    off = ~torch.eye(Z.shape[1], dtype=torch.bool)
    return float(M[off].square().mean().sqrt())


def _cov(A):
    c = A - A.mean(0)
    return c.T @ c / A.shape[0]


@pytest.mark.parametrize("update", [None, GSAMUpdate(0.3)])
def test_exact_mode_equals_the_exact_mismatches(update):
    problem = logcosh_problem(n=6, batch_size=2)
    ref = LogCoshReference(*logcosh_data(n=6))
    Z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    res = moment_test(problem, X, RHOS, update=update, n_batches="exact", projections=Z, groups=3)
    for i, rho in enumerate(RHOS):
        for j, (name, c) in enumerate({"sgd_sde": (0, 0), "sam_sde2": (1, 0), "sam_sde3": (1, 0.5)}.items()):
            P, W = _exact(problem, ref, rho, c, update)
            assert res.drift[i, j] == pytest.approx(float((P - W).mean(0).norm()), rel=1e-9), (rho, name)
            assert res.cov[i, j] == pytest.approx(_sketch(_cov(P) - _cov(W), Z), rel=1e-9), (rho, name)
            assert res.mean_norm[i] == pytest.approx(float(P.mean(0).norm()), rel=1e-12)
            assert res.cov_norm[i] == pytest.approx(_sketch(_cov(P), Z), rel=1e-9)
    assert res.models == ("sgd_sde", "sam_sde2", "sam_sde3")


def test_slopes_in_rho_and_a_wrong_coefficient_changes_them():
    problem = logcosh_problem(n=6, batch_size=2)
    rhos = [0.02, 0.01, 0.005, 0.0025]
    res = moment_test(problem, X, rhos, n_batches="exact", groups=3,
                      models={"sgd_sde": (0, 0), "sam_sde2": (1, 0), "sam_sde3": (1, 0.5), "wrong": (1, 1 / 3)})
    drift = {m: res.slopes[m]["drift"]["slope"] for m in res.models}
    assert drift["sgd_sde"] == pytest.approx(1, abs=0.1)
    assert drift["sam_sde2"] == pytest.approx(2, abs=0.1)
    assert drift["sam_sde3"] == pytest.approx(3, abs=0.05)
    assert drift["wrong"] == pytest.approx(2, abs=0.1)
    cov = {m: res.slopes[m]["cov"]["slope"] for m in res.models}
    assert cov["sgd_sde"] == pytest.approx(1, abs=0.15) and cov["sam_sde2"] == pytest.approx(2, abs=0.15)
    assert cov["sam_sde3"] == pytest.approx(3, abs=0.05)


def test_monte_carlo_estimates_agree_with_the_exact_values_within_their_errors():
    problem = logcosh_problem(n=10, batch_size=3)
    Z = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    exact = moment_test(problem, X, [0.3, 0.1], n_batches="exact", projections=Z, groups=4)
    mc = moment_test(problem, X, [0.3, 0.1], n_batches=3000, projections=Z, groups=10, chunk=256, seed=2)
    z_drift = np.abs(mc.drift - exact.drift) / mc.drift_se
    z_cov = np.abs(mc.cov - exact.cov) / mc.cov_se
    assert (z_drift < 4).all(), z_drift
    assert (z_cov < 4).all(), z_cov
    assert (mc.drift_se < 0.3 * mc.drift).all()               # resolved, not just noise
    slope = mc.slopes["sam_sde2"]["drift"]
    assert slope["ci95"][0] < slope["slope"] < slope["ci95"][1]


def test_bad_arguments():
    problem = logcosh_problem(n=6, batch_size=2)
    with pytest.raises(ValueError, match="x must be one point"):
        moment_test(problem, X[None], [0.1])
    with pytest.raises(ValueError, match="rho must be a finite number > 0"):
        moment_test(problem, X, [0.0])
    with pytest.raises(ValueError, match="cannot form groups=10"):
        moment_test(problem, X, [0.1], n_batches=5, groups=10)
    with pytest.raises(ValueError, match="needs its eigenvector"):
        moment_test(problem, X, [0.1], rule="eigen_sam")
