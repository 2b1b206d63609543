"""SDE drifts and diffusions against closed forms; the Euler–Maruyama loops."""
import math

import pytest
import torch
import torchsde

from sdesam.sde import SAMSDE2, SAMSDE3, SGDSDE, SAMFamilySDE

from .problems import DTYPE, LogCoshReference, logcosh_data, logcosh_problem

RHO, ETA = 0.3, 0.05


def exact_moments(x, rho, n=6, B=2):
    """Independent E and Σ blocks from closed-form derivatives, looping over all minibatches."""
    problem = logcosh_problem(n=n, batch_size=B)
    ref = LogCoshReference(*logcosh_data(n))
    gs, hs, ts = [], [], []
    for idx in problem.enumerate_batches():
        g = ref.grad(x, idx)
        u = g / g.norm()
        gs.append(g)
        hs.append(ref.hess(x, idx) @ u)
        ts.append(ref.third(x, idx, u, u))
    G, Hh, Tt = (torch.stack(a) for a in (gs, hs, ts))

    def cov(a, b):
        return (a - a.mean(0)).T @ (b - b.mean(0)) / a.shape[0]

    S = {(i, j): cov(a, b) for i, a in enumerate((G, Hh, Tt), 1) for j, b in enumerate((G, Hh, Tt), 1)}
    return problem, G.mean(0), Hh.mean(0), Tt.mean(0), S


def test_drifts_are_minus_grad_of_the_modified_losses():
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    problem, Eg, Eh, Et, _ = exact_moments(x, RHO)
    A, y = logcosh_data()
    batches = problem.enumerate_batches()

    # ∇f and ∇E‖∇f_γ‖ by autograd on the loss written out directly (not the oracles)
    def f_tilde2(z):
        full = torch.log(torch.cosh(A @ z - y)).mean()
        norms = torch.stack([torch.autograd.grad(torch.log(torch.cosh(A[i] @ z - y[i])).mean(), z,
                                                 create_graph=True)[0].norm() for i in batches])
        return full + RHO * norms.mean()
    grad2 = torch.autograd.functional.jacobian(f_tilde2, x)

    sgd = SGDSDE(problem, ETA, n_batches="exact")
    sde2 = SAMSDE2(problem, ETA, RHO, n_batches="exact")
    sde3 = SAMSDE3(problem, ETA, RHO, n_batches="exact")
    y0 = x[None]
    assert torch.allclose(sgd.f(0.0, y0)[0], -Eg, rtol=0, atol=1e-12)
    assert torch.allclose(sde2.f(0.0, y0)[0], -grad2, rtol=0, atol=1e-10)
    assert torch.allclose(sde3.f(0.0, y0)[0], -(grad2 + RHO ** 2 / 2 * Et), rtol=0, atol=1e-10)
    assert torch.allclose(Eg + RHO * Eh, grad2, rtol=0, atol=1e-10)   # the reference is consistent


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("r", [RHO, 2.0])      # at ρ = 2 the table's Σ is indefinite for orders 1, 2
def test_diffusions_equal_the_closed_form_sigma(order, r):
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    problem, *_, S = exact_moments(x, r)
    table = [S[1, 1],
             S[1, 1] + r * (S[1, 2] + S[1, 2].T),
             S[1, 1] + r * (S[1, 2] + S[1, 2].T) + r ** 2 * (S[2, 2] + 0.5 * (S[1, 3] + S[1, 3].T))][order]
    higher = [torch.zeros_like(table),
              r ** 2 * S[2, 2],
              r ** 3 / 2 * (S[2, 3] + S[2, 3].T) + r ** 4 / 4 * S[3, 3]][order]
    taylor = SAMFamilySDE(problem, ETA, r, order, n_batches="exact")
    F = taylor.g(0.0, x[None])[0]
    assert torch.allclose(F @ F.T / ETA, table + higher, rtol=0, atol=1e-12)
    paper = SAMFamilySDE(problem, ETA, r, order, n_batches="exact", diffusion="paper")
    F = paper.g(0.0, x[None])[0]
    lam, V = torch.linalg.eigh(table)
    psd = V @ torch.diag(lam.clamp_min(0)) @ V.T       # d = 3 ≤ rank of the samples: the full space
    assert torch.allclose(F @ F.T / ETA, psd, rtol=0, atol=1e-12)
    assert paper.last_dropped_mass == pytest.approx(float(lam.clamp_max(0).abs().sum() / lam.abs().sum()))
    assert (paper.last_dropped_mass > 0) == (r == 2.0 and order > 0)


@pytest.mark.parametrize("correct", [True, False])
def test_drift_noise_correction_gives_the_intended_covariance(correct):
    """One sub-step from a fixed x over 200k independent trajectories (K = 2, m = 1).

    Intended: Cov(ΔX) = η Δt Σ. The drift estimate adds Δt² Σ/K, i.e. a factor
    1 + 1/(mK) = 1.5 without the correction. Tolerance 3% on the covariance matrix
    (Frobenius), about 6 standard errors of a 200k-sample covariance here.
    """
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    problem, *_, S = exact_moments(x, RHO)
    exact = SAMFamilySDE(problem, ETA, RHO, 2, n_batches="exact")
    F = exact.g(0.0, x[None])[0]
    sigma = F @ F.T / ETA                                 # Cov(v²), exact
    sde = SAMSDE3(problem, ETA, RHO, n_batches=2, substeps=1, correct_drift_noise=correct)
    M = 200_000
    state = sde.init_state(x.expand(M, 3), seed=5)
    sde.advance(state, 1)
    inc = state.x - x
    cov = torch.cov(inc.T)
    target = ETA * sde.dt * sigma
    err = float((cov - target).norm() / target.norm())
    if correct:
        assert sde.noise_correction == pytest.approx(math.sqrt(0.5))
        assert err < 0.03, err
    else:
        assert err > 0.4, err
    assert torch.allclose(inc.mean(0), exact.f(0.0, x[None])[0] * sde.dt, rtol=0, atol=5e-4)


def test_own_euler_loop_equals_torchsde_for_the_same_increments():
    problem = logcosh_problem()
    eta, m, steps = 2.0 ** -4, 2, 8                           # dyadic: exact time grid
    sde = SAMSDE3(problem, eta, RHO, n_batches=3, substeps=m, seed=11)
    x0 = problem.x0.expand(4, 3).clone()
    T = steps * eta
    bm = torchsde.BrownianInterval(t0=0.0, t1=T, size=(4, sde.brownian_size), dtype=DTYPE, entropy=7)
    ts = torch.tensor([0.0, T], dtype=DTYPE)
    ys = torchsde.sdeint(sde, x0, ts, bm=bm, dt=sde.dt, method="euler")
    state = sde.init_state(x0, seed=11)
    for i in range(steps * m):
        sde.euler_substep(state, i, bm(i * sde.dt, (i + 1) * sde.dt))
    assert torch.allclose(ys[-1], state.x, rtol=0, atol=1e-12)
    assert not torch.allclose(state.x, x0)


def test_torchsde_solver_option_runs_and_is_reproducible():
    problem = logcosh_problem()
    a = SAMSDE2(problem, 0.05, RHO, n_batches=3, solver="torchsde")
    s1, s2 = a.init_state(seed=2), a.init_state(seed=2)
    a.advance(s1, 3)
    a.advance(s2, 3)
    assert torch.equal(s1.x, s2.x)


def test_minibatches_of_a_substep_are_shared_by_f_g_and_the_product():
    problem = logcosh_problem()
    sde = SAMSDE3(problem, 0.05, RHO, n_batches=4, seed=3)
    y = problem.x0[None]
    v = torch.randn(1, 4, dtype=DTYPE)
    f, gp = sde.f_and_g_prod(0.1, y, v)
    fresh = SAMSDE3(problem, 0.05, RHO, n_batches=4, seed=3)       # no cache: recomputed
    assert torch.equal(f, fresh.f(0.1, y))
    assert torch.allclose(gp, torch.einsum("mdk,mk->md", fresh.g(0.1, y), v))
    assert not torch.equal(f, sde.f(0.15, y))               # the next sub-step: fresh minibatches
