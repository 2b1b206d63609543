"""SAM-SVAG and the untruncated SAM SDE: l = 1 is SAM bit for bit, one step's moments equal
SVAG's formulas by enumeration of minibatch pairs, and as l grows E g(x_T) moves to the
untruncated SDE's value."""
import itertools
import math

import numpy as np
import pytest
import torch

import sdesam
from sdesam.discrete import SAMSVAG, svag_coefficients
from sdesam.registry import make_dynamics
from sdesam.toys import make_toy_problem

from .problems import DTYPE, LogCoshReference, logcosh_data, logcosh_problem

ETA, RHO = 0.1, 0.3


def test_coefficients():
    for l in (1, 2, 4, 8):
        c1, c2 = svag_coefficients(l)
        assert c1 + c2 == pytest.approx(1) and c1 * c1 + c2 * c2 == pytest.approx(l)
    assert svag_coefficients(1) == (1.0, 0.0)


@pytest.mark.parametrize("rule", ["sam", "asam"])
def test_l1_is_the_discrete_method_bit_for_bit(rule):
    p = logcosh_problem(n=6, batch_size=2)
    a = make_dynamics("sam_svag", p, eta=ETA, rho=RHO, l=1, rule=rule)
    b = make_dynamics("sam", p, eta=ETA, rho=RHO, rule=rule)
    assert a.name == b.name + "_svag"
    sa, sb = a.init_state(p.x0.expand(3, -1), seed=4), b.init_state(p.x0.expand(3, -1), seed=4)
    a.advance(sa, 5)
    b.advance(sb, 5)
    assert torch.equal(sa.x, sb.x)


@pytest.mark.parametrize("l", [2, 4])
def test_one_step_mean_and_covariance_by_enumeration_of_minibatch_pairs(l):
    """Over all N² ordered pairs (γ₁, γ₂): mean −(η/l) E Φ, covariance (η/l)² (c₁² + c₂²) Cov Φ."""
    p = logcosh_problem(n=6, batch_size=2)
    ref = LogCoshReference(*logcosh_data(n=6))
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    dyn = SAMSVAG(p, ETA, RHO, l=l)
    batches = p.enumerate_batches()
    N = batches.shape[0]
    pairs = torch.tensor(list(itertools.product(range(N), repeat=2)))
    inc = dyn.increment(x.expand(N * N, 3), batches[pairs])           # (N², d)
    phi = []
    for idx in batches:
        g = ref.grad(x, idx)
        phi.append(ref.grad(x + RHO * g / g.norm(), idx))
    phi = torch.stack(phi)
    mean, cov = phi.mean(0), (phi - phi.mean(0)).T @ (phi - phi.mean(0)) / N
    h = ETA / l
    assert torch.allclose(inc.mean(0), -h * mean, rtol=0, atol=1e-14)
    c = inc - inc.mean(0)
    assert torch.allclose(c.T @ c / (N * N), h * h * l * cov, rtol=0, atol=1e-14)


def test_untruncated_sde_drift_and_diffusion_by_enumeration():
    p = logcosh_problem(n=6, batch_size=2)
    ref = LogCoshReference(*logcosh_data(n=6))
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    sde = make_dynamics("untruncated_sam_sde", p, eta=ETA, rho=RHO, n_batches="exact")
    assert sde.name == "sam_sde"
    ps = []
    for idx in p.enumerate_batches():
        g = ref.grad(x, idx)
        ps.append(ref.grad(x + RHO * g / g.norm(), idx))
    P = torch.stack(ps)
    drift, factor = sde.drift_and_factor(0.0, x[None])
    assert torch.allclose(drift[0], -P.mean(0), rtol=0, atol=1e-14)
    C = (P - P.mean(0)).T @ (P - P.mean(0)) / P.shape[0]
    assert torch.allclose(factor[0] @ factor[0].T, ETA * C, rtol=0, atol=1e-14)


def test_svag_moves_to_the_untruncated_sde_as_l_grows():
    """E‖x_T‖² on the log-cosh toy (η = 0.2, T = 1): SAM (l = 1) is resolvably away from the
    untruncated SDE (m = 16 sub-steps, exact expectations); l = 8 is within Monte Carlo error
    of it and much closer."""
    p = make_toy_problem("logcosh")
    eta, rho, T = 0.2, 0.5, 1.0
    n = round(T / eta)
    tests = {"sqnorm": lambda x: (x * x).sum(-1)}
    kw = dict(steps=n, record_every=n, trajectories=16384, chunk_size=4096, blocks_per_chunk=32)
    sde = make_dynamics("untruncated_sam_sde", p, eta=eta, rho=rho, n_batches="exact", substeps=16)
    ref = sdesam.estimate(sde, tests, seed=1, **kw)
    gaps = {}
    for l in (1, 8):
        est = sdesam.estimate({"svag": make_dynamics("sam_svag", p, eta=eta, rho=rho, l=l)}, tests, seed=2 + l, **kw)
        gap = est.mean("svag")[-1, 0] - ref.mean("sam_sde")[-1, 0]
        se = math.hypot(est.se("svag")[-1, 0], ref.se("sam_sde")[-1, 0])
        gaps[l] = (abs(gap), se)
    assert gaps[1][0] > 5 * gaps[1][1], gaps                    # SAM itself is not the SDE here
    assert gaps[8][0] < 3 * gaps[8][1], gaps
    assert gaps[8][0] < 0.3 * gaps[1][0], gaps
    assert np.isfinite(list(gaps.values())).all()
