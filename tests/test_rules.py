"""General perturbation rules: the ASAM rule end to end (rule, discrete method, SDE
Taylor vectors, training optimizer) and the checks on a rule's output."""
import numpy as np
import pytest
import torch
from torch import nn

from sdesam import make_dynamics, rules
from sdesam.discrete import DiscreteSAM, step_batches
from sdesam.optim import SAM as SAMOptimizer
from sdesam.oracles import autograd_taylor
from sdesam.problem import ModuleProblem
from sdesam.rules import ASAMRule, PerturbationRule
from sdesam.sde import SAMSDE3

from .problems import DTYPE, dense_derivatives, flat_batch_loss, logcosh_problem


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_asam_by_hand():
    g = torch.tensor([3.0, 4.0, 0.0, -1.0], dtype=DTYPE)
    x = torch.tensor([1.0, -2.0, 5.0, 0.0], dtype=DTYPE)
    # ξ = 0: T = diag(1, 2, 5, 0), Tg = (3, 8, 0, 0), ‖Tg‖ = √73, T²g = (3, 16, 0, 0)
    expected = torch.tensor([3.0, 16.0, 0.0, 0.0], dtype=DTYPE) / 73 ** 0.5
    assert torch.allclose(ASAMRule()(g, x=x), expected, rtol=1e-15, atol=0)
    # ξ = 0.5: T = diag(1.5, 2.5, 5.5, 0.5), Tg = (4.5, 10, 0, -0.5), T²g = (6.75, 25, 0, -0.25)
    norm = (4.5 ** 2 + 10 ** 2 + 0.5 ** 2) ** 0.5
    expected = torch.tensor([6.75, 25.0, 0.0, -0.25], dtype=DTYPE) / norm
    assert torch.allclose(ASAMRule(xi=0.5)(g, x=x), expected, rtol=1e-15, atol=0)
    # leading dimensions broadcast; Tg = 0 gives ε = 0
    batch = ASAMRule()(torch.stack([g, torch.zeros(4, dtype=DTYPE)]), x=x)
    assert torch.allclose(batch[0], ASAMRule()(g, x=x)) and torch.equal(batch[1], torch.zeros(4, dtype=DTYPE))
    assert not ASAMRule.has_coefficients and ASAMRule.needs_point and rules.get_rule("asam").xi == 0
    with pytest.raises(ValueError, match="ASAMRule.*x="):
        ASAMRule()(g)
    with pytest.raises(ValueError, match="xi"):
        ASAMRule(xi=-1)
    with pytest.raises(TypeError, match="no coefficient form"):
        ASAMRule().coefficients(g)


def _model():
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_asam_optimizer_replays_davda54_sam_adaptive():
    """One step of ``SAM(rule="asam")`` with plain SGD equals davda54/sam's
    ``SAM(adaptive=True)`` step, written out here: grad_norm = ‖(‖|p|·∇p‖)_p‖,
    e_w = p²·∇p·ρ/(grad_norm + 1e-12), gradient at p + e_w, back to p, SGD step."""
    X, Y = torch.randn(8, 4, dtype=DTYPE), torch.randint(3, (8,))
    lr, rho = 0.1, 0.05

    def loss_of(model):
        return nn.functional.cross_entropy(model(X), Y)

    ref = _model()
    params = list(ref.parameters())
    loss_of(ref).backward()
    with torch.no_grad():
        grad_norm = torch.norm(torch.stack([(p.abs() * p.grad).norm(p=2) for p in params]), p=2)
        scale = rho / (grad_norm + 1e-12)
        old = [p.clone() for p in params]
        for p in params:
            p.add_(torch.pow(p, 2) * p.grad * scale)
            p.grad = None
    loss_of(ref).backward()
    with torch.no_grad():
        for p, o in zip(params, old):
            p.copy_(o)
            p.add_(p.grad, alpha=-lr)

    model = _model()
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=rho, rule="asam", lr=lr)
    opt.step(lambda: loss_of(model))
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-12)
    moved = sum(float((p.detach() - o).abs().max()) for p, o in zip(model.parameters(), old))
    assert moved > 1e-3                      # the step is not trivially zero
    assert opt.state_dict()["wrapper"]["rule"] == {"rule": "asam", "xi": 0.0}


def test_asam_integrator_is_eq1_with_the_asam_direction():
    problem = logcosh_problem(n=6, d=3, batch_size=2)
    dyn = make_dynamics("asam", problem, eta=0.1, rho=0.3, xi=0.1)
    assert isinstance(dyn, DiscreteSAM) and dyn.name == "asam" and dyn.config()["xi"] == 0.1
    state = dyn.init_state(seed=4)
    x = state.x.clone()
    dyn.advance(state, 1)
    state0 = dyn.init_state(seed=4)
    batch = step_batches(problem, state0)
    g = problem.gradient(x, batch)
    t = x.abs() + 0.1
    eps = t * t * g / (t * g).norm(dim=-1, keepdim=True)
    expected = x - 0.1 * problem.gradient(x + 0.3 * eps, batch)
    assert torch.allclose(state.x, expected, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="eigenvector"):
        DiscreteSAM(problem, 0.1, 0.3, rule="eigen_sam")


def _wide_problem(oracle):
    """Layer 0 (20 × 30) is factorable at B = 4 on the jet path (see test_oracles)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.GELU(), nn.Linear(30, 2))
    X, Y = torch.randn(12, 20), torch.randint(2, (12,))
    return ModuleProblem(model, "cross_entropy", X, Y, 4, dtype=DTYPE, oracle=oracle)


def test_asam_taylor_vectors_match_reverse3_autograd_and_dense_tensors():
    jet, ref = _wide_problem("jet"), _wide_problem("autograd")
    assert jet._jet.factorable_layers(4) == [0]
    idx = torch.tensor([[0, 4, 9, 11], [2, 3, 5, 7]])
    x = jet.x0 + 0.05
    rule = ASAMRule(xi=0.01)
    for order in (1, 2):
        for components in (False, True):
            a = jet.taylor(x, idx, rule, 0.3, order, components=components)
            b = ref.taylor(x, idx, rule, 0.3, order, components=components)
            for name in ["g", "eps", "v"] + (["h"] if components else []) + \
                    (["t"] if components and order == 2 else []):
                assert rel(getattr(a, name), getattr(b, name)) < 1e-12, (order, components, name)
    # against dense g, H, ∇³f of an independent functional_call loss, ε held constant
    small = ModuleProblem(nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2)), "cross_entropy",
                          torch.randn(6, 3, dtype=DTYPE), torch.randint(2, (6,)), 3, dtype=DTYPE)
    f = flat_batch_loss(small, torch.tensor([0, 2, 5]))
    xs = small.x0 + 0.1
    g, H, T = dense_derivatives(f, xs)
    eps = (xs.abs() + 0.01) ** 2 * g / ((xs.abs() + 0.01) * g).norm()
    tv = small.taylor(xs, torch.tensor([[0, 2, 5]]), rule, 0.3, 2, components=True)
    assert rel(tv.eps[0], eps) < 1e-12
    assert rel(tv.h[0], H @ eps) < 1e-10
    assert rel(tv.t[0], torch.einsum("ijk,j,k->i", T, eps, eps)) < 1e-10
    # autograd_taylor on a plain function passes x to the rule as well
    tv_fn = autograd_taylor(f, xs, rule, 0.3, 2, components=True)
    assert rel(tv_fn.v, tv.v[0]) < 1e-12


def test_asam_taylor_vectors_match_finite_differences():
    """h = ∇²f ε by central differences of ∇f along ε; ∇f(x + ρε) − v² shrinks like ρ³."""
    problem = _wide_problem("jet")
    idx = torch.tensor([[1, 3, 8, 10]])
    f = flat_batch_loss(problem, idx[0])
    x = problem.x0 + 0.2
    grad = lambda z: torch.autograd.functional.jacobian(f, z)  # noqa: E731
    tv = problem.taylor(x, idx, "asam", 0.1, 2, components=True)
    eps, delta = tv.eps[0], 1e-5
    h_fd = (grad(x + delta * eps) - grad(x - delta * eps)) / (2 * delta)
    assert rel(tv.h[0], h_fd) < 1e-7
    t_fd = (grad(x + delta * eps) - 2 * grad(x) + grad(x - delta * eps)) / delta ** 2
    assert rel(tv.t[0], t_fd) < 1e-3
    rhos = np.geomspace(0.4, 0.025, 5)
    errs = []
    for rho in rhos:
        v2 = problem.taylor(x, idx, "asam", float(rho), 2).v[0]
        errs.append(float((grad(x + float(rho) * eps) - v2).norm()))
    assert np.polyfit(np.log(rhos), np.log(errs), 1)[0] >= 2.7, errs


def test_asam_sde_runs_through_the_same_taylor_vectors():
    """SAM-SDE3 with rule="asam": the drift of one exact-expectation Euler step is −E v²
    with ε = ASAMRule(x, g_γ) (x the current point, held constant)."""
    problem = logcosh_problem(n=5, d=3, batch_size=2)
    sde = make_dynamics("sam_sde3", problem, eta=0.05, rho=0.2, rule="asam", n_batches="exact")
    assert isinstance(sde, SAMSDE3) and sde.config()["rule"] == "asam"
    x = problem.x0[None]
    batches = problem.enumerate_batches()
    tv = problem.taylor(x[:, None, :], batches[None], "asam", 0.2, 2)
    drift = sde.f(torch.tensor(0.0), x)
    assert torch.allclose(drift, -tv.v.mean(1), rtol=0, atol=1e-14)
    state = sde.advance(sde.init_state(seed=1), 3)
    assert torch.isfinite(state.x).all()


class _WrongShape(PerturbationRule):
    name = "wrong_shape"

    def perturbation(self, g, eigvec=None, x=None):
        return g[..., :-1]


class _NaN(PerturbationRule):
    name = "nan"

    def perturbation(self, g, eigvec=None, x=None):
        return g / 0.0 * 0.0


class _BadCoefficients(PerturbationRule):
    def coefficients(self, g, eigvec=None):
        return torch.ones(g.shape[-1]), None


def test_a_broken_rule_raises_an_error_naming_it():
    problem = logcosh_problem(n=6, d=3, batch_size=2)
    g = torch.ones(2, 3, dtype=DTYPE)
    assert not _WrongShape.has_coefficients and _BadCoefficients.has_coefficients
    with pytest.raises(ValueError, match=r"_WrongShape\(\) returned ε of shape \(2, 2\)"):
        _WrongShape()(g)
    with pytest.raises(ValueError, match=r"_NaN\(\) returned a non-finite ε"):
        _NaN()(g)
    with pytest.raises(ValueError, match=r"_BadCoefficients\(\) returned \(a, b\) of shape \(3,\)"):
        _BadCoefficients()(g)
    # … wherever it is used: the discrete integrator, the Taylor vectors, the optimizer
    broken = DiscreteSAM(problem, 0.1, 0.1, rule=_NaN())
    with pytest.raises(ValueError, match="_NaN"):
        broken.advance(broken.init_state(), 1)
    with pytest.raises(ValueError, match="_WrongShape"):
        problem.taylor(problem.x0, torch.tensor([0, 1]), _WrongShape(), 0.1)
    model = _model()
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.1, rule=_NaN(), lr=0.1)
    with pytest.raises(ValueError, match="_NaN"):
        opt.step(lambda: model(torch.randn(2, 4, dtype=DTYPE)).sum())
    # a non-finite gradient is not the rule's fault: ε follows it, no error here
    assert torch.isnan(rules.SAMRule()(torch.full((3,), float("nan")))).all()
