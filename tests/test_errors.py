"""Every documented error path of the core raises a clear error naming the problem."""
import pytest
import torch

from sdesam import NonFiniteStateError
from sdesam.problem import FunctionProblem, ModuleProblem
from sdesam.registry import make_dynamics

from .problems import DTYPE, logcosh_problem, tiny_mlp_problem


@pytest.mark.parametrize("name,kwargs,match", [
    ("sam", {"eta": 0.0, "rho": 0.1}, "eta=0.0"),
    ("sam", {"eta": -1.0, "rho": 0.1}, "eta=-1.0"),
    ("sam", {"eta": float("nan"), "rho": 0.1}, "eta=nan"),
    ("sam", {"eta": 0.1, "rho": -0.5}, "rho=-0.5"),
    ("egr", {"eta": 0.1, "rho": -0.5}, "rho=-0.5"),
    ("sam_sde3", {"eta": 0.1, "rho": 0.1, "n_batches": 1}, "n_batches.*=1"),
    ("sam_sde2", {"eta": 0.1, "rho": 0.1, "substeps": 0}, "substeps=0"),
    ("sam_sde3", {"eta": 0.1, "rho": 0.1, "diffusion": "cholesky"}, "diffusion='cholesky'"),
    ("sam_sde3", {"eta": 0.1, "rho": 0.1, "solver": "rk4"}, "solver='rk4'"),
    ("eigen_sam", {"eta": 0.1, "rho": 0.1, "p": 0}, "p=0"),
    ("eigen_sam", {"eta": 0.1, "rho": 0.1, "q": 0}, "q=0"),
    ("eigen_sam", {"eta": 0.1, "rho": 0.1, "alpha": -1}, "alpha=-1"),
    ("eigen_sam", {"eta": 0.1, "rho": 0.1, "p_counting": "step"}, "p_counting='step'"),
    ("nope", {"eta": 0.1}, "dynamics must be one of"),
])
def test_invalid_hyperparameters(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dynamics(name, logcosh_problem(), **kwargs)


def test_invalid_problems_and_shapes():
    A, y = torch.randn(4, 2, dtype=DTYPE), torch.randn(4, dtype=DTYPE)
    f = lambda x, a, b: ((a * x[..., None, :]).sum(-1) - b) ** 2  # noqa: E731
    with pytest.raises(ValueError, match="batch_size=5 is larger than the number of training examples n_train=4"):
        FunctionProblem(f, (A, y), 5, torch.zeros(2, dtype=DTYPE))
    with pytest.raises(ValueError, match=r"data\[1\] has 3 examples but data\[0\] has 4"):
        FunctionProblem(f, (A, y[:3]), 2, torch.zeros(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="x0 must be a flat vector"):
        FunctionProblem(f, (A, y), 2, torch.zeros(2, 1, dtype=DTYPE))
    p = FunctionProblem(f, (A, y), 2, torch.zeros(2, dtype=DTYPE))
    with pytest.raises(ValueError, match="x has last dimension 3, expected d=2"):
        p.gradient(torch.zeros(3, dtype=DTYPE), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"batch must have shape \(..., B=2\)"):
        p.gradient(torch.zeros(2, dtype=DTYPE), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="order must be 0, 1 or 2"):
        p.taylor(torch.zeros(2, dtype=DTYPE), torch.tensor([0, 1]), "sam", 0.1, order=3)
    with pytest.raises(ValueError, match="rule must be"):
        p.taylor(torch.zeros(2, dtype=DTYPE), torch.tensor([0, 1]), "adam", 0.1)
    with pytest.raises(ValueError, match=r"x0 must have shape \(d,\) or \(M, d\) with d=2, got \(5,\)"):
        make_dynamics("sgd", p, eta=0.1).init_state(torch.zeros(5, dtype=DTYPE))
    with pytest.raises(ValueError, match="cannot enumerate"):
        logcosh_problem(n=40, batch_size=10).enumerate_batches()
    with pytest.raises(ValueError, match="inputs has 4 examples but targets has 3"):
        ModuleProblem(torch.nn.Linear(2, 2), "cross_entropy", torch.zeros(4, 2), torch.zeros(3).long(), 2)
    with pytest.raises(ValueError, match="loss must be"):
        ModuleProblem(torch.nn.Linear(2, 2), "hinge", torch.zeros(4, 2), torch.zeros(4).long(), 2)
    with pytest.raises(ValueError, match="no test data"):
        tiny_mlp_problem().evaluate(tiny_mlp_problem().x0, "test")


def test_non_finite_state_names_the_dynamics_and_the_step():
    # f(x) = x⁴ / 4 per example: gradient descent with a large step blows up.
    A = torch.ones(4, 1, dtype=DTYPE)
    p = FunctionProblem(lambda x, a: (a * x[..., None, :]).sum(-1) ** 4 / 4, (A,), 2,
                        torch.tensor([3.0], dtype=DTYPE))
    for name in ["sgd", "sam", "sam_sde3"]:
        kw = {"n_batches": "exact"} if name.endswith("sde3") else {}
        if name != "sgd":
            kw["rho"] = 0.1
        dyn = make_dynamics(name, p, eta=1.0, **kw)
        state = dyn.init_state()
        with pytest.raises(NonFiniteStateError, match=rf"{name}: .* at step (\d+)") as info:
            dyn.advance(state, 50)
        assert info.value.dynamics == name
        assert 1 <= info.value.step <= 50
        assert info.value.step == state.step
