"""Batched (stacked) oracles of ModuleProblem equal the one-pair-at-a-time loop (float64)."""
import pytest
import torch
from torch import nn

from sdesam.problem import ModuleProblem
from sdesam.rules import EigenSAMRule, get_rule

from .problems import DTYPE

TOL = 1e-12
RULES = ["sam", "usam", "reverse_sam", EigenSAMRule(0.3), EigenSAMRule(0.2, renormalize=True)]


def _problem(model, loss, X, Y, B, **kw):
    return ModuleProblem(model, loss, X, Y, B, dtype=DTYPE, **kw)


def mlp_pair(block_memory=None, width=6, wide=False, activation=nn.GELU, seed=0):
    """The same MLP problem twice: batched (blocks of ``block_memory`` bytes) and looped.
    ``wide``: a first layer wide enough for the factored weight tangent at B = 3."""
    torch.manual_seed(seed)
    dims = (5, 40, 3) if wide else (5, width, 3)
    model = nn.Sequential(nn.Linear(dims[0], dims[1]), activation(), nn.Linear(dims[1], dims[2])).to(DTYPE)
    X = torch.randn(12, dims[0], dtype=DTYPE)
    Y = torch.randint(0, dims[2], (12,))
    batched = _problem(model, "cross_entropy", X, Y, 3, block_memory=block_memory)
    looped = _problem(model, "cross_entropy", X, Y, 3, block="loop")
    return batched, looped


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def assert_same(a, b, names):
    for k in names:
        x, y = getattr(a, k), getattr(b, k)
        if y is None:
            assert x is None, k
            continue
        assert x.shape == y.shape, k
        assert rel(x, y) < TOL, (k, rel(x, y))


def _inputs(p, M, K, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = p.x0 + 0.1 * torch.randn(M, 1, p.dim, generator=gen, dtype=DTYPE)
    batches = p.sample_batches(M * K, gen).view(M, K, -1)
    eig = torch.randn(M, K, p.dim, generator=gen, dtype=DTYPE)
    return x, batches, eig / eig.norm(dim=-1, keepdim=True)


def test_the_block_choice_is_automatic_and_reported():
    batched, looped = mlp_pair()
    assert batched.block == "batched" and batched.config()["block"] == "batched"
    assert batched.config()["block_size"] == batched.block_size >= 1
    assert looped.config()["block"] == "loop"
    generic = _problem(looped.model, "cross_entropy", looped.inputs, looped.targets, 3, oracle="autograd")
    assert generic.block == "loop"                       # the fallback for the generic oracle
    with pytest.raises(ValueError, match="block='batched'"):
        _problem(looped.model, "cross_entropy", looped.inputs, looped.targets, 3, oracle="autograd",
                 block="batched")
    with pytest.raises(ValueError, match="block"):
        _problem(looped.model, "cross_entropy", looped.inputs, looped.targets, 3, block="vmap")


def test_a_budget_below_one_pair_raises():
    batched, _ = mlp_pair()
    per = batched.sample_bytes()
    with pytest.raises(ValueError, match=f"block_memory={per - 1} bytes is smaller"):
        mlp_pair(block_memory=per - 1)
    assert mlp_pair(block_memory=per)[0].block_size == 1
    assert mlp_pair(block_memory=3 * per + 1)[0].block_size == 3
    with pytest.raises(ValueError, match="block_memory"):
        mlp_pair(block_memory=0)


def test_pairs_larger_than_the_default_budget_go_one_per_block(monkeypatch):
    import sdesam.problem as problem_module
    per = mlp_pair()[0].sample_bytes()
    monkeypatch.setattr(problem_module, "DEFAULT_BLOCK_MEMORY", per - 1)
    batched, looped = mlp_pair()
    assert batched.block == "batched" and batched.block_size == 1
    # a subproblem keeps the default budget rather than inheriting a computed one
    assert batched.subproblem(torch.arange(6), 6).block_memory == per - 1
    x, batches, _ = _inputs(looped, 2, 2)
    assert_same(batched.taylor(x, batches, "sam", 0.2), looped.taylor(x, batches, "sam", 0.2), ["v", "g", "eps"])


@pytest.mark.parametrize("rule", RULES, ids=lambda r: getattr(r, "name", r) + str(getattr(r, "renormalize", "")))
@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("components", [False, True])
def test_taylor_batched_equals_loop_for_every_rule_order_and_components(rule, order, components):
    # blocks of 3 pairs for M·K = 8: uneven chunking (3, 3, 2)
    batched, looped = mlp_pair()
    batched, _ = mlp_pair(block_memory=3 * batched.sample_bytes())
    assert batched.block_size == 3
    x, batches, eig = _inputs(looped, 4, 2)
    rule = get_rule(rule)
    eigvec = eig if rule.needs_eigenvector else None
    a = batched.taylor(x, batches, rule, 0.3, order, eigvec=eigvec, components=components)
    b = looped.taylor(x, batches, rule, 0.3, order, eigvec=eigvec, components=components)
    assert a.v.shape == (4, 2, looped.dim)
    assert_same(a, b, ["v", "g", "eps", "h", "t"])


@pytest.mark.parametrize("M,K", [(1, 5), (5, 1), (1, 1)])
def test_taylor_batched_equals_loop_when_m_or_k_is_one(M, K):
    batched, looped = mlp_pair(block_memory=2 * mlp_pair()[0].sample_bytes())
    x, batches, _ = _inputs(looped, M, K)
    a = batched.taylor(x, batches, "sam", 0.2, 2, components=True)
    b = looped.taylor(x, batches, "sam", 0.2, 2, components=True)
    assert_same(a, b, ["v", "g", "eps", "h", "t"])
    # one point, K minibatches (no trajectory dimension) and one pair (x (d,), batch (B,))
    a = batched.taylor(x[0, 0], batches[0], "sam", 0.2)
    assert_same(a, looped.taylor(x[0, 0], batches[0], "sam", 0.2), ["v", "g", "eps"])
    a = batched.taylor(x[0, 0], batches[0, 0], "sam", 0.2)
    assert a.v.shape == (looped.dim,)
    assert_same(a, looped.taylor(x[0, 0], batches[0, 0], "sam", 0.2), ["v", "g", "eps"])


@pytest.mark.parametrize("rule", ["sam", "usam", EigenSAMRule(0.3)], ids=str)
@pytest.mark.parametrize("components", [False, True])
def test_factored_weight_tangent_batched_equals_loop(rule, components):
    batched, looped = mlp_pair(wide=True)
    assert batched._jet.factorable_layers(3) == [0]
    x, batches, eig = _inputs(looped, 3, 4)
    rule = get_rule(rule)
    for order in (1, 2):
        a = batched.taylor(x, batches, rule, 0.4, order, eigvec=eig[:, :1], components=components)
        b = looped.taylor(x, batches, rule, 0.4, order, eigvec=eig[:, :1], components=components)
        assert_same(a, b, ["v", "g", "eps", "h", "t"])
        # and the dense weight tangent gives the same (the factored path is only faster)
        c = ModuleProblem(looped.model, "cross_entropy", looped.inputs, looped.targets, 3, oracle="autograd",
                          dtype=DTYPE).taylor(x, batches, rule, 0.4, order, eigvec=eig[:, :1])
        assert rel(a.v, c.v) < 1e-10


def test_shared_eigenvector_and_per_pair_eigenvectors():
    batched, looped = mlp_pair()
    x, batches, eig = _inputs(looped, 3, 2)
    for e in (eig[0, 0], eig, eig[:, :1]):
        a = batched.taylor(x, batches, "eigen_sam", 0.3, 2, eigvec=e, components=True)
        b = looped.taylor(x, batches, "eigen_sam", 0.3, 2, eigvec=e, components=True)
        assert_same(a, b, ["v", "g", "eps", "h", "t"])


def test_loss_gradient_and_hvp_batched_equal_loop():
    batched, looped = mlp_pair(block_memory=2 * mlp_pair()[0].sample_bytes(), activation=nn.Tanh)
    x, batches, eig = _inputs(looped, 3, 3)
    assert rel(batched.loss(x, batches), looped.loss(x, batches)) < TOL
    assert rel(batched.gradient(x, batches), looped.gradient(x, batches)) < TOL
    assert rel(batched.hvp(x, batches, eig), looped.hvp(x, batches, eig)) < TOL
    # M trajectories with one minibatch each (the discrete integrators' call)
    xm, bm = x[:, 0], batches[:, 0]
    assert rel(batched.gradient(xm, bm), looped.gradient(xm, bm)) < TOL
    assert rel(batched.hvp(xm, bm, eig[:, 0]), looped.hvp(xm, bm, eig[:, 0])) < TOL
    assert batched.loss(xm[0], bm[0]).shape == ()


def test_conv_and_mse_batched_equal_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(12, 2)).to(DTYPE)
    X = torch.randn(8, 2, 4, 4, dtype=DTYPE)
    Y = torch.randn(8, 2, dtype=DTYPE)
    batched = _problem(model, "mse", X, Y, 3)
    looped = _problem(model, "mse", X, Y, 3, block="loop")
    assert batched.block == "batched"
    x, batches, _ = _inputs(looped, 3, 2)
    a = batched.taylor(x, batches, "sam", 0.3, 2, components=True)
    b = looped.taylor(x, batches, "sam", 0.3, 2, components=True)
    assert_same(a, b, ["v", "g", "eps", "h", "t"])
    assert rel(batched.loss(x, batches), looped.loss(x, batches)) < TOL


class _PointRule:
    """A rule without the coefficient form (the rule contract's general case):
    ε depends on x elementwise, ε = |x|·g / ‖|x|·g‖."""

    name = "point"
    has_coefficients = False
    needs_eigenvector = False
    needs_point = True

    def __call__(self, g, eigvec=None, out=None, x=None, generator=None):
        e = x.abs() * g
        return e / e.norm(dim=-1, keepdim=True)


def test_a_rule_without_coefficients_gets_x_and_matches_the_loop():
    from sdesam.rules import PerturbationRule
    rule = type("PointRule", (_PointRule, PerturbationRule), {})()
    batched, looped = mlp_pair(wide=True)
    x, batches, _ = _inputs(looped, 3, 2)
    a = batched.taylor(x, batches, rule, 0.3, 2, components=True)
    b = looped.taylor(x, batches, rule, 0.3, 2, components=True)
    assert_same(a, b, ["v", "g", "eps", "h", "t"])
    e = x.abs() * a.g
    assert rel(a.eps, e / e.norm(dim=-1, keepdim=True)) < TOL
    generic = ModuleProblem(looped.model, "cross_entropy", looped.inputs, looped.targets, 3, oracle="autograd",
                            dtype=DTYPE)
    c = generic.taylor(x, batches, rule, 0.3, 2, components=True)
    assert_same(a, c, ["eps"])
    assert rel(a.v, c.v) < 1e-10


@pytest.fixture(autouse=True)
def _one_thread():
    # the 2-core machine is shared: two BLAS threads per test process oversubscribe it
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name,kw", [("eigen_sam", {"rho": 0.2, "p": 2, "q": 3, "steps_per_epoch": 2}),
                                     ("sam", {"rho": 0.2}),
                                     ("sam_sde3", {"rho": 0.2, "n_batches": 3})])
def test_dynamics_of_several_trajectories_batched_equal_loop(name, kw):
    """M = 3 trajectories: EigenSAM's power iteration (batched Hessian-vector products),
    the discrete SAM step (batched gradients) and the SDE step (batched Taylor vectors;
    the "taylor" diffusion: the "paper" one takes an eigendecomposition whose eigenvector
    signs round-off may flip, which changes the path but not its law)."""
    from sdesam.registry import make_dynamics
    batched, looped = mlp_pair()
    x0 = looped.x0 + 0.1 * torch.randn(3, looped.dim, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    ends = []
    for p in (batched, looped):
        dyn = make_dynamics(name, p, eta=0.05, **kw)
        state = dyn.init_state(x0, seed=4)
        dyn.advance(state, 3)
        ends.append(state.x)
    assert rel(ends[0], ends[1]) < 1e-11
