"""The closed-form toy oracles of sdesam.toys against the generic autograd path."""
import pytest
import torch

from sdesam import rules
from sdesam.sde import SAMSDE3
from sdesam.toys import TOY_PROBLEMS, GLMProblem, make_toy_problem

DTYPE = torch.float64
TOL = 1e-12


pytestmark = pytest.mark.usefixtures("one_thread")


def _max_abs(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


def _points(problem, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return problem.x0 + 0.7 * torch.randn(*shape, problem.dim, generator=g, dtype=DTYPE)


def _layouts(problem):
    """(x, batch) pairs in the three layouts the core uses."""
    allb = problem.enumerate_batches()
    g = torch.Generator().manual_seed(1)
    pick = allb[torch.randint(len(allb), (5,), generator=g)]
    return [(_points(problem, (4, 1)), allb),                 # exact SDE: (M, 1, d) x (N, B)
            (_points(problem, (5,)), pick),                   # discrete: one minibatch per trajectory
            (_points(problem, (3, 1)), pick[None, :2].expand(3, 2, -1)),   # Monte Carlo: (M, K, B)
            (_points(problem, ()), allb[:4])]                 # one point, K minibatches


@pytest.mark.parametrize("name", sorted(TOY_PROBLEMS))
def test_closed_form_oracles_equal_autograd(name):
    problem = make_toy_problem(name)
    ref = problem.as_function_problem()
    orders = (0, 1) if name == "quadratic" else (0, 1, 2)      # autograd cannot build t when ∇³f ≡ 0
    for x, batch in _layouts(problem):
        assert _max_abs(problem.loss(x, batch), ref.loss(x, batch)) < TOL
        assert _max_abs(problem.gradient(x, batch), ref.gradient(x, batch)) < TOL
        v = torch.randn(problem.dim, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
        assert _max_abs(problem.hvp(x, batch, v), ref.hvp(x, batch, v)) < TOL
        for rule in (rules.SAMRule(), rules.USAMRule(), rules.ReverseSAMRule()):
            for order in orders:
                want = ref.taylor(x, batch, rule, 0.4, order, components=True)
                for comp in (False, True):
                    got = problem.taylor(x, batch, rule, 0.4, order, components=comp)
                    assert _max_abs(got.v, want.v) < TOL
                    assert _max_abs(got.g, want.g) < TOL
                    assert _max_abs(got.eps, want.eps) < TOL
                    if comp and order >= 1:
                        assert _max_abs(got.h, want.h) < TOL
                    if comp and order == 2:
                        assert _max_abs(got.t, want.t) < TOL
    x = _points(problem, (6,))
    assert _max_abs(problem.full_loss(x), ref.full_loss(x)) < TOL
    assert _max_abs(problem.full_gradient(x), ref.full_gradient(x)) < TOL


def test_quadratic_third_derivative_is_zero_and_logcosh_is_not():
    q, lc = make_toy_problem("quadratic"), make_toy_problem("logcosh")
    tq = q.taylor(_points(q, (3, 1)), q.enumerate_batches(), "sam", 0.3, 2, components=True).t
    tl = lc.taylor(_points(lc, (3, 1)), lc.enumerate_batches(), "sam", 0.3, 2, components=True).t
    assert float(tq.abs().max()) == 0.0
    assert float(tl.abs().max()) > 1e-3


def test_exact_sde_coefficients_match_between_paths():
    problem = make_toy_problem("logistic")
    x = _points(problem, (7,))
    fast = SAMSDE3(problem, 0.02, 0.3, n_batches="exact")
    slow = SAMSDE3(problem.as_function_problem(), 0.02, 0.3, n_batches="exact")
    b1, F1 = fast.drift_and_factor(0.0, x)
    b2, F2 = slow.drift_and_factor(0.0, x)
    assert _max_abs(b1, b2) < TOL and _max_abs(F1, F2) < TOL


def test_logistic_problem_has_a_clear_top_eigenvector():
    problem = make_toy_problem("logistic")
    lam, vec = torch.linalg.eigh(problem.full_hessian(problem.x0))
    assert lam[-1] > 5 * lam[-2]
    assert abs(float(vec[0, -1])) > 0.99          # ≈ ±e₁


def test_bad_arguments_raise():
    A, y, x0 = torch.randn(4, 2, dtype=DTYPE), torch.randn(4, dtype=DTYPE), torch.zeros(2, dtype=DTYPE)
    with pytest.raises(ValueError, match="link"):
        GLMProblem(A, y, 2, x0, link="cubic")
    with pytest.raises(ValueError, match="columns"):
        GLMProblem(A, y, 2, torch.zeros(3, dtype=DTYPE))
    with pytest.raises(ValueError, match="problem"):
        make_toy_problem("nope")
    p = GLMProblem(A, y, 2, x0)
    with pytest.raises(ValueError, match="last dimension"):
        p.gradient(torch.zeros(3, dtype=DTYPE), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="B=2"):
        p.gradient(x0, torch.tensor([0, 1, 2]))


def test_to_changes_dtype_and_keeps_the_problem():
    p = make_toy_problem("logcosh")
    q = p.to(dtype=torch.float32)
    assert q.x0.dtype == q.A.dtype == q.y.dtype == torch.float32 and p.x0.dtype == DTYPE
    x = _points(p, (4,))
    assert torch.allclose(q.full_loss(x.float()).double(), p.full_loss(x), rtol=1e-5)
    assert q.config() == {**p.config(), "dtype": "float32"}
