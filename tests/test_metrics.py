"""Figure 2's metrics on a tiny problem against independent computations."""
import pytest
import torch
from torch import nn

from sdesam.metrics import FIGURE2_METRICS, ClassificationMetrics
from sdesam.problem import ModuleProblem

from .problems import DTYPE, tiny_mlp


def make_problem():
    g = torch.Generator().manual_seed(3)
    X, Y = torch.randn(40, 3, generator=g, dtype=DTYPE), torch.randint(2, (40,), generator=g)
    Xt, Yt = torch.randn(15, 3, generator=g, dtype=DTYPE), torch.randint(2, (15,), generator=g)
    return ModuleProblem(tiny_mlp(1), "cross_entropy", X, Y, 4, test=(Xt, Yt), dtype=DTYPE, eval_chunk=7)


def flat_loss(problem, X, Y):
    names = [n for n, _ in problem.model.named_parameters()]
    shapes = [p.shape for _, p in problem.model.named_parameters()]

    def f(x):
        params = {n: t.reshape(s) for n, t, s in zip(names, torch.split(x, [s.numel() for s in shapes]), shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(problem.model, params, (X,)), Y)
    return f


def test_metrics_match_independent_computations():
    p = make_problem()
    m = ClassificationMetrics(p, hessian_examples=24, eig_tol=1e-10, seed=5)
    x = p.x0 + 0.05
    out = m(x)
    assert set(FIGURE2_METRICS) <= set(out)
    f_train = flat_loss(p, p.inputs, p.targets)
    assert out["train_loss"] == pytest.approx(float(f_train(x)), rel=1e-12)
    assert out["grad_norm"] == pytest.approx(float(torch.autograd.functional.jacobian(f_train, x).norm()), rel=1e-10)
    Xt, Yt = p.test
    assert out["test_loss"] == pytest.approx(float(flat_loss(p, Xt, Yt)(x)), rel=1e-12)
    params = p.unflatten(x)
    logits = torch.func.functional_call(p.model, params, (Xt,))
    assert out["test_accuracy"] == pytest.approx(float((logits.argmax(1) == Yt).double().mean()))
    assert out["param_norm"] == pytest.approx(float(x.norm()))
    sub = m.hessian_subset
    H = torch.autograd.functional.hessian(flat_loss(p, p.inputs[sub], p.targets[sub]), x)
    lam = torch.linalg.eigvalsh(H)
    assert out["top_eigenvalue"] == pytest.approx(float(lam[-1]), rel=1e-8)
    assert out["top_eigenvalue_hvps"] >= 2


def test_default_tolerance_gives_the_documented_accuracy():
    p = make_problem()
    m = ClassificationMetrics(p, hessian_examples=24, seed=5)             # eig_tol = 1e-3
    x = p.x0 - 0.1
    sub = m.hessian_subset
    lam = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_loss(p, p.inputs[sub], p.targets[sub]), x))
    assert abs(m.top_eigenvalue(x).eigenvalues[0].item() - lam[-1].item()) <= 1e-3 * lam.abs().max().item()


def test_metrics_need_test_data():
    p = make_problem()
    with pytest.raises(ValueError, match="test data"):
        ClassificationMetrics(ModuleProblem(p.model, "cross_entropy", p.inputs, p.targets, 4))
