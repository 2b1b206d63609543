"""Lanczos, power method, stochastic Lanczos quadrature and Hutchinson against dense spectra."""
import math

import pytest
import torch
from torch import nn

from sdesam.curvature import HessianOperator, alignment, hutchinson_trace, lanczos, power_method, slq, spectral_density

from .problems import dense_hessian_of_concatenated

DT = torch.float64


def mlp_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3)).to(DT).eval()
    g = torch.Generator().manual_seed(seed + 1)
    batches = [(torch.randn(n, 4, generator=g, dtype=DT) * 2, torch.randint(0, 3, (n,), generator=g))
               for n in (6, 4, 9)]
    return model, nn.CrossEntropyLoss(), batches


@pytest.fixture(scope="module")
def mlp_case():
    model, loss_fn, batches = mlp_problem()
    H = dense_hessian_of_concatenated(model, loss_fn, batches)
    return model, loss_fn, batches, H, torch.linalg.eigh(H)


def matrix_op(A):
    return HessianOperator.from_function(lambda v: A @ v, A.shape[0], A.dtype)


def spd_with_spectrum(evals, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(evals), len(evals), generator=g, dtype=DT))
    return (Q * evals) @ Q.T


def test_lanczos_top_k_matches_eigvalsh(mlp_case):
    model, loss_fn, batches, H, (evals, evecs) = mlp_case
    op = HessianOperator.from_module(model, loss_fn, batches)
    k = 3
    top = evals.flip(0)[:k]
    gaps = (top[:-1] - top[1:]) / top[0]
    assert gaps.min() > 1e-2, "test needs well-separated top eigenvalues"
    res = lanczos(op, k=k, tol=1e-10, generator=torch.Generator().manual_seed(0))
    assert res.converged and res.num_iters < op.dim  # stopped by the rule, not by d
    assert res.num_matvecs == res.num_iters and res.history.shape == (res.num_iters, k)
    assert torch.equal(res.history[-1], res.eigenvalues)
    assert torch.equal(res.residual_history[-1], res.residuals)
    assert torch.allclose(res.eigenvalues, top, rtol=1e-8, atol=0)
    assert (res.residuals <= 1e-10 * res.scale).all()
    Y = res.eigenvectors
    assert Y.shape == (op.dim, k) and Y.dtype == DT
    for i in range(k):
        ref = evecs[:, -1 - i]
        assert alignment(Y[:, i], ref).item() > 1 - 1e-6  # equal up to sign
        # true residual honours the reported one (up to rounding)
        r = H @ Y[:, i] - res.eigenvalues[i] * Y[:, i]
        assert torch.linalg.vector_norm(r) <= res.residuals[i] + 1e-12 * res.scale
    # before convergence the reported residuals equal the true ones ‖H y − θ y‖
    early = lanczos(op, k=2, max_iters=12, tol=1e-14, check_determinism=False,
                    generator=torch.Generator().manual_seed(0))
    assert not early.converged and early.num_iters == 12
    for i in range(2):
        y = early.eigenvectors[:, i]
        r = torch.linalg.vector_norm(H @ y - early.eigenvalues[i] * y).item()
        assert r > 1e-8 * early.scale
        assert r == pytest.approx(early.residuals[i].item(), rel=1e-6)
    # smallest algebraic end, and largest magnitude
    low = lanczos(op, k=1, which="SA", tol=1e-10, check_determinism=False)
    assert low.eigenvalues[0].item() == pytest.approx(evals[0].item(), rel=1e-8)
    lm = lanczos(op, k=1, which="LM", tol=1e-10, check_determinism=False)
    assert abs(lm.eigenvalues[0].item()) == pytest.approx(evals.abs().max().item(), rel=1e-8)


def test_lanczos_which_ends_differ():
    evals = torch.tensor([3.0, 1.0, 0.5, 0.1, -4.0], dtype=DT)
    op = matrix_op(spd_with_spectrum(evals, seed=5))
    la = lanczos(op, k=2, which="LA", tol=1e-12).eigenvalues
    lm = lanczos(op, k=2, which="LM", tol=1e-12).eigenvalues
    sa = lanczos(op, k=2, which="SA", tol=1e-12).eigenvalues
    assert torch.allclose(la, evals[[0, 1]], atol=1e-12)
    assert torch.allclose(lm, evals[[4, 0]], atol=1e-12)
    assert torch.allclose(sa, evals[[4, 3]], atol=1e-12)
    # power iteration follows the largest magnitude, not λ1
    pm = power_method(op, tol=1e-12, max_iters=500)
    assert pm.eigenvalue == pytest.approx(-4.0, rel=1e-8)


def test_lanczos_full_dimension_and_restart():
    # repeated eigenvalue 2 (x3) forces an invariant subspace before d: restarts find all
    evals = torch.tensor([5.0, 2.0, 2.0, 2.0, 1.0, -1.0], dtype=DT)
    A = spd_with_spectrum(evals, seed=3)
    res = lanczos(matrix_op(A), k=6, tol=1e-12, generator=torch.Generator().manual_seed(1))
    assert res.num_restarts >= 1
    assert torch.allclose(res.eigenvalues, evals, atol=1e-12, rtol=0)


def test_lanczos_beats_power_iteration_on_small_gap():
    d = 300
    g = torch.Generator().manual_seed(7)
    rest = torch.rand(d - 2, generator=g, dtype=DT) * 0.9
    evals = torch.cat([torch.tensor([1.0, 0.98], dtype=DT), rest])
    op = matrix_op(spd_with_spectrum(evals, seed=8))
    v0 = torch.randn(d, generator=g, dtype=DT)

    def first_within(history, rel=1e-3):
        ok = ((history - 1.0).abs() <= rel).nonzero()
        return int(ok[0]) + 1 if len(ok) else math.inf

    lz = lanczos(op, k=1, tol=1e-10, v0=v0)
    pm = power_method(op, tol=1e-12, max_iters=2000, v0=v0)
    n_lz, n_pm = first_within(lz.history[:, 0]), first_within(pm.history)
    assert n_lz < n_pm < math.inf
    assert n_lz <= n_pm / 3  # not a near tie: Lanczos is much faster here
    assert lz.eigenvalues[0].item() == pytest.approx(1.0, rel=1e-10)


def test_lanczos_float32_operator_uses_float64_basis(mlp_case):
    model, loss_fn, batches, H, (evals, _) = mlp_case
    m32 = model.float()
    try:
        op = HessianOperator.from_module(m32, loss_fn, [(x.float(), y) for x, y in batches])
        res = lanczos(op, k=1, tol=1e-5)
        assert res.eigenvectors.dtype == torch.float32 and res.eigenvalues.dtype == DT
        assert res.eigenvalues[0].item() == pytest.approx(evals[-1].item(), rel=1e-5)
        default = lanczos(op, k=1, check_determinism=False)  # tol = √eps(float32)
        assert default.converged and default.num_iters <= res.num_iters
        assert (default.residuals <= 3.5e-4 * default.scale).all()
        assert default.eigenvalues[0].item() == pytest.approx(evals[-1].item(), rel=1e-4)
    finally:
        model.double()


def test_slq_moments_and_extreme_nodes(mlp_case):
    model, loss_fn, batches, H, (evals, _) = mlp_case
    op = HessianOperator.from_module(model, loss_fn, batches)
    d = op.dim
    gen = torch.Generator().manual_seed(11)
    res = slq(op, num_probes=40, num_steps=12, generator=gen)
    assert res.nodes.shape == (40, 12) and res.num_matvecs <= 40 * 12
    # 0th moment: each probe's weights sum to exactly 1
    assert torch.allclose(res.weights.sum(1), torch.ones(40, dtype=DT), atol=1e-12)
    assert res.moment(0) == pytest.approx(1.0, abs=1e-12)
    # 1st and 2nd moments vs the dense spectrum, within 4 standard errors of the probes
    th = torch.nan_to_num(res.nodes)
    for p in (1, 2):
        per_probe = (res.weights * th ** p).sum(1)
        se = per_probe.std().item() / math.sqrt(40)
        exact = (evals ** p).mean().item()
        assert abs(res.moment(p) - exact) <= 4 * se + 1e-12
    assert abs(res.trace() - evals.sum().item()) <= 4 * d * (res.weights * th).sum(1).std().item() / math.sqrt(40)
    # smoothed density: integrates to 1 on the grid; its mean is the first moment
    lo, hi = res.support()
    sigma = 0.02 * (hi - lo)
    grid = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, 2001, dtype=DT)
    dens = spectral_density(res, grid, sigma)
    assert (dens >= 0).all()
    raw = spectral_density(res, grid, sigma, normalize=False)
    assert torch.trapezoid(raw, grid).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.trapezoid(dens, grid).item() == pytest.approx(1.0, abs=1e-12)
    assert torch.trapezoid(grid * dens, grid).item() == pytest.approx(res.moment(1), rel=1e-6, abs=1e-9)
    # m >= d steps: every probe's quadrature is exact, nodes hit the extreme eigenvalues
    full = slq(op, num_probes=3, num_steps=d, generator=gen, probe="gaussian")
    scale = evals.abs().max().item()
    for row in full.nodes:
        row = row[torch.isfinite(row)]
        assert (row - evals[-1]).abs().min() <= 1e-9 * scale
        assert (row - evals[0]).abs().min() <= 1e-9 * scale
    # with exact quadrature the second moment per probe is exactly ‖H v‖² for its probe;
    # the average over probes still estimates tr(H²)/d
    assert full.moment(0) == pytest.approx(1.0, abs=1e-12)


def test_spectral_density_matches_dense_spectrum_shape():
    evals = torch.cat([torch.zeros(60, dtype=DT), torch.linspace(1, 2, 30, dtype=DT),
                       torch.tensor([6.0], dtype=DT)])
    op = matrix_op(spd_with_spectrum(evals, seed=4))
    res = slq(op, num_probes=30, num_steps=40, generator=torch.Generator().manual_seed(2))
    grid = torch.linspace(-1, 7, 1601, dtype=DT)
    sigma = 0.1
    dens = spectral_density(res, grid, sigma)
    z = (grid[:, None] - evals[None, :]) / sigma
    exact = torch.exp(-0.5 * z ** 2).sum(1)
    exact = exact / torch.trapezoid(exact, grid)
    l1 = torch.trapezoid((dens - exact).abs(), grid).item()
    assert l1 < 0.15
    # mass near zero ≈ 60/91
    near0 = grid.abs() < 0.5
    assert torch.trapezoid(dens[near0], grid[near0]).item() == pytest.approx(60 / 91, abs=0.07)


def test_hutchinson_within_error_and_honest_stderr(mlp_case):
    model, loss_fn, batches, H, (evals, _) = mlp_case
    op = HessianOperator.from_module(model, loss_fn, batches)
    est = hutchinson_trace(op, num_probes=100, generator=torch.Generator().manual_seed(3))
    assert est.num_matvecs == 100 and est.samples.shape == (100,)
    exact = torch.trace(H).item()
    assert abs(est.trace - exact) <= 4 * est.stderr
    # the standard error is honest: z-scores over many repeats look standard normal
    # (a dense operator keeps this fast)
    dop = matrix_op(H)
    gen = torch.Generator().manual_seed(4)
    z = torch.tensor([(e.trace - exact) / e.stderr for e in
                      (hutchinson_trace(dop, 30, generator=gen, check_determinism=False)
                       for _ in range(400))])
    assert abs(z.mean().item()) < 0.2
    assert 0.8 < z.std().item() < 1.25
    assert 0.9 < (z.abs() < 2).double().mean().item() < 0.99
    # Gaussian probes are unbiased too
    est_g = hutchinson_trace(dop, 400, probe="gaussian", generator=gen)
    assert abs(est_g.trace - exact) <= 4 * est_g.stderr


def test_bad_arguments():
    op = matrix_op(torch.eye(4, dtype=DT))
    with pytest.raises(ValueError, match="k"):
        lanczos(op, k=5)
    with pytest.raises(ValueError, match="which"):
        lanczos(op, which="BE")
    with pytest.raises(ValueError, match="probe"):
        slq(op, probe="sphere")
    with pytest.raises(ValueError, match="sigma"):
        spectral_density(slq(op, 1, 2), torch.linspace(0, 1, 5), 0.0)
    with pytest.raises(ValueError, match="num_probes"):
        hutchinson_trace(op, 0)
