"""g, h, t and the Taylor vectors against finite differences and dense references."""
import numpy as np
import pytest
import torch
from torch import nn

from sdesam import rules
from sdesam.problem import ModuleProblem

from .problems import (
    DTYPE,
    LogCoshReference,
    dense_derivatives,
    flat_batch_loss,
    logcosh_data,
    logcosh_problem,
    tiny_mlp_problem,
)

RTOL = 1e-6


def rel(a, b):
    return float((a - b).norm() / b.norm())


def mlp_cases():
    return [tiny_mlp_problem("jet"), tiny_mlp_problem("autograd"),
            tiny_mlp_problem("jet", activation=nn.Tanh), tiny_mlp_problem("jet", activation=nn.SiLU)]


@pytest.mark.parametrize("case", range(4))
def test_mlp_oracles_match_dense_tensors(case):
    problem = mlp_cases()[case]
    idx = torch.tensor([1, 4, 7])
    x = problem.x0 + 0.1
    g_ref, H, T = dense_derivatives(flat_batch_loss(problem, idx), x)
    rho = 0.3
    for rule in [rules.SAMRule(), rules.USAMRule(), rules.ReverseSAMRule()]:
        tv = problem.taylor(x, idx[None], rule, rho, order=2, components=True)
        eps = rule(g_ref)
        assert rel(tv.g[0], g_ref) < 1e-12
        assert rel(tv.eps[0], eps) < 1e-12
        assert rel(tv.h[0], H @ eps) < 1e-10
        assert rel(tv.t[0], torch.einsum("ijk,j,k->i", T, eps, eps)) < 1e-10
        v2 = g_ref + rho * H @ eps + rho ** 2 / 2 * torch.einsum("ijk,j,k->i", T, eps, eps)
        assert rel(tv.v[0], v2) < 1e-10
        # the same v² without components (a single fused reverse pass on the jet path)
        assert rel(problem.taylor(x, idx[None], rule, rho, order=2).v[0], v2) < 1e-10
        assert rel(problem.taylor(x, idx[None], rule, rho, order=1).v[0], g_ref + rho * H @ eps) < 1e-10
    v = torch.randn(problem.dim, dtype=DTYPE)
    assert rel(problem.hvp(x, idx, v), H @ v) < 1e-10


def test_mlp_oracles_match_finite_differences():
    problem = tiny_mlp_problem("jet")
    idx = torch.tensor([0, 2, 5])
    f = flat_batch_loss(problem, idx)
    x = problem.x0.clone()
    tv = problem.taylor(x, idx, "sam", 0.1, components=True)
    eps = tv.eps

    def grad(z):
        return torch.autograd.functional.jacobian(f, z)

    d = 1e-5
    fd_g = torch.stack([(f(x + d * e) - f(x - d * e)) / (2 * d) for e in torch.eye(problem.dim, dtype=DTYPE)])
    assert rel(tv.g, fd_g) < RTOL
    assert rel(tv.h, (grad(x + d * eps) - grad(x - d * eps)) / (2 * d)) < RTOL
    d = 1e-4
    assert rel(tv.t, (grad(x + d * eps) - 2 * grad(x) + grad(x - d * eps)) / d ** 2) < RTOL


def test_function_problem_oracles_match_closed_form():
    problem = logcosh_problem()
    ref = LogCoshReference(*logcosh_data())
    x = torch.tensor([0.3, -0.2, 0.9], dtype=DTYPE)
    batches = problem.enumerate_batches()
    tv = problem.taylor(x, batches, "sam", 0.4, components=True)
    for k, idx in enumerate(batches):
        g = ref.grad(x, idx)
        u = g / g.norm()
        assert rel(tv.g[k], g) < 1e-12
        assert rel(tv.h[k], ref.hess(x, idx) @ u) < 1e-12
        assert rel(tv.t[k], ref.third(x, idx, u, u)) < 1e-12


def test_oracles_broadcast_over_trajectories_and_batches():
    problem = logcosh_problem()
    xs = torch.randn(5, 1, 3, dtype=DTYPE)
    batches = problem.enumerate_batches()
    tv = problem.taylor(xs, batches, "sam", 0.2)
    assert tv.v.shape == (5, batches.shape[0], 3)
    single = problem.taylor(xs[3, 0], batches[7], "sam", 0.2)
    assert torch.allclose(tv.v[3, 7], single.v, rtol=0, atol=1e-14)


@pytest.mark.parametrize("oracle", ["jet", "autograd"])
def test_taylor_remainders_shrink_like_rho_cubed_and_squared(oracle):
    problem = tiny_mlp_problem(oracle)
    idx = torch.tensor([[1, 3, 8]])
    f = flat_batch_loss(problem, idx[0])
    x = problem.x0 + 0.2
    rhos = np.geomspace(0.2, 0.0125, 6)
    err1, err2 = [], []
    for rho in rhos:
        tv2 = problem.taylor(x, idx, "sam", float(rho), order=2)
        tv1 = problem.taylor(x, idx, "sam", float(rho), order=1)
        exact = torch.autograd.functional.jacobian(f, x + float(rho) * tv2.eps[0])
        err2.append(float((exact - tv2.v[0]).norm()))
        err1.append(float((exact - tv1.v[0]).norm()))
    slope2 = np.polyfit(np.log(rhos), np.log(err2), 1)[0]
    slope1 = np.polyfit(np.log(rhos), np.log(err1), 1)[0]
    assert slope2 >= 2.7, (slope2, err2)
    assert 1.7 <= slope1 <= 2.3, (slope1, err1)


def test_conv_and_mse_jet_matches_autograd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.GELU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 4), nn.Softplus(), nn.Linear(4, 2))
    X, Y = torch.randn(10, 2, 8, 8), torch.randn(10, 2)
    jet = ModuleProblem(model, "mse", X, Y, 3, dtype=DTYPE)
    ref = ModuleProblem(model, "mse", X, Y, 3, dtype=DTYPE, oracle="autograd")
    assert jet.oracle == "jet"
    idx = torch.tensor([[0, 4, 9], [2, 3, 5]])
    a = jet.taylor(jet.x0, idx, "sam", 0.3, components=True)
    b = ref.taylor(ref.x0, idx, "sam", 0.3, components=True)
    for name in ["g", "h", "t", "v"]:
        assert rel(getattr(a, name), getattr(b, name)) < 1e-12


def test_factored_weight_tangent_of_wide_linear_layers_matches_autograd():
    """Layer 0 (20 × 30) is wide enough at B = 4 for ``LowRankWeightTangent`` (4·50 < 600):
    the jet's factored path must give what generic reverse³ autograd gives, for the
    a·g rules (factored) and Eigen-SAM's rule (b ≠ 0: the dense path)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.GELU(), nn.Linear(30, 2))
    X, Y = torch.randn(12, 20), torch.randint(2, (12,))
    jet = ModuleProblem(model, "cross_entropy", X, Y, 4, dtype=DTYPE)
    ref = ModuleProblem(model, "cross_entropy", X, Y, 4, dtype=DTYPE, oracle="autograd")
    assert jet.oracle == "jet" and jet._jet.factorable_layers(4) == [0]
    idx = torch.tensor([[0, 4, 9, 11], [2, 3, 5, 7]])
    x = jet.x0 + 0.05
    v_hat = torch.randn(jet.dim, dtype=DTYPE)
    all_rules = [rules.SAMRule(), rules.USAMRule(), rules.ReverseSAMRule(), rules.EigenSAMRule(0.3)]
    for rule in all_rules:
        for order in (1, 2):
            for components in (False, True):
                a = jet.taylor(x, idx, rule, 0.3, order, eigvec=v_hat, components=components)
                b = ref.taylor(x, idx, rule, 0.3, order, eigvec=v_hat, components=components)
                names = ["g", "eps", "v"] + (["h"] if components else []) + (["t"] if components and order == 2 else [])
                for name in names:
                    assert rel(getattr(a, name), getattr(b, name)) < 1e-12, (rule, order, components, name)


def test_unsupported_models_fall_back_to_autograd():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).to(DTYPE)
    X, Y = torch.randn(6, 3, dtype=DTYPE), torch.randint(2, (6,))
    p = ModuleProblem(model, "cross_entropy", X, Y, 2)
    assert p.oracle == "autograd"
    with pytest.raises(ValueError, match="oracle='jet'"):
        ModuleProblem(model, "cross_entropy", X, Y, 2, oracle="jet")


@pytest.mark.parametrize("power", [1, 2])
def test_polynomial_losses_with_vanishing_derivatives(power):
    """Linear (H = 0) and quadratic (∇³f = 0) losses: the vanishing terms are zeros."""
    from sdesam.problem import FunctionProblem
    A = torch.tensor([[1.0, 2.0], [0.5, -1.0], [3.0, 0.0]], dtype=DTYPE)
    p = FunctionProblem(lambda x, a: (a * x[..., None, :]).sum(-1) ** power, (A,), 2,
                        torch.tensor([0.3, -0.7], dtype=DTYPE))
    idx = torch.tensor([0, 2])
    tv = p.taylor(p.x0, idx, "sam", 0.5, order=2, components=True)
    a = A[idx]
    r = a @ p.x0
    g = (power * r[:, None] ** (power - 1) * a).mean(0)
    H = (power * (power - 1) * a[:, :, None] * a[:, None, :]).mean(0)
    assert torch.allclose(tv.g, g) and torch.allclose(tv.h, H @ tv.eps)
    assert torch.equal(tv.t, torch.zeros(2, dtype=DTYPE))
    assert torch.allclose(p.hvp(p.x0, idx, torch.ones(2, dtype=DTYPE)), H @ torch.ones(2, dtype=DTYPE))
