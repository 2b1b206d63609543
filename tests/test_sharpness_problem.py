"""Curvature estimates on a ``Problem`` (``HessianOperator.from_problem``) against dense
linear algebra: the toy log-cosh problem (closed-form Hessian) and a tiny GeLU MLP
(Hessian by ``torch.autograd.functional`` on an independently rebuilt loss)."""
import math

import pytest
import torch

from sdesam.curvature import HessianOperator, alignment, hutchinson_trace, lanczos, power_method, slq
from tests.problems import LogCoshReference, flat_batch_loss, logcosh_data, logcosh_problem, tiny_mlp_problem

DT = torch.float64


def cases():
    """(name, problem, x, batch, dense Hessian of f_γ at x) for both problems."""
    toy = logcosh_problem(n=8, d=5, batch_size=4)
    A, y = logcosh_data(8, 5)
    idx = torch.tensor([0, 3, 5, 6])
    x = toy.x0 + 0.3
    yield "logcosh", toy, x, idx, LogCoshReference(A, y).hess(x, idx)
    mlp = tiny_mlp_problem(n=12, batch_size=5)
    idx = torch.tensor([1, 2, 4, 8, 11])
    f = flat_batch_loss(mlp, idx)
    yield "mlp", mlp, mlp.x0, idx, torch.autograd.functional.hessian(f, mlp.x0)


@pytest.mark.parametrize("case", list(cases()), ids=lambda c: c[0])
def test_estimates_on_a_problem_match_dense(case):
    _, problem, x, idx, H = case
    d = problem.dim
    evals, evecs = torch.linalg.eigh(H)
    op = HessianOperator.from_problem(problem, x, idx)
    assert op.shape == (d, d) and op.dtype == DT
    v = torch.randn(d, generator=torch.Generator().manual_seed(0), dtype=DT)
    assert torch.allclose(op @ v, H @ v, rtol=0, atol=1e-12 * H.abs().max().item())

    top = lanczos(op, k=1, tol=1e-10, generator=torch.Generator().manual_seed(1))
    assert top.eigenvalues[0].item() == pytest.approx(evals[-1].item(), rel=1e-9)
    assert alignment(top.eigenvectors[:, 0], evecs[:, -1]).item() == pytest.approx(1.0, abs=1e-6)
    assert top.num_matvecs <= d + 1

    pm = power_method(op, tol=1e-12, max_iters=2000, generator=torch.Generator().manual_seed(2))
    lam_lm = evals[evals.abs().argmax()].item()          # power iteration finds the largest |λ|
    assert pm.eigenvalue == pytest.approx(lam_lm, rel=1e-6)

    spec = slq(op, num_probes=2, num_steps=d, generator=torch.Generator().manual_seed(3))
    # d Lanczos steps make each probe's quadrature exact: moments are probe averages of
    # zᵀH^p z / d, whose mean over probes is close to tr(H^p)/d (exact for p = 0)
    assert spec.moment(0) == pytest.approx(1.0, abs=1e-12)
    lo, hi = spec.support()
    assert lo >= evals[0].item() - 1e-9 and hi <= evals[-1].item() + 1e-9

    est = hutchinson_trace(op, num_probes=100, generator=torch.Generator().manual_seed(4))
    assert abs(est.trace - torch.trace(H).item()) <= 4 * est.stderr + 1e-12


def test_from_problem_copies_x_and_checks_arguments():
    problem = logcosh_problem(n=8, d=5, batch_size=4)
    idx = torch.tensor([0, 1, 2, 3])
    x = problem.x0.clone()
    op = HessianOperator.from_problem(problem, x, idx)
    v = torch.ones(5, dtype=DT)
    before = op @ v
    x.add_(10.0)                        # the operator keeps its own copy of the point
    assert torch.equal(op @ v, before)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        HessianOperator.from_problem(problem, x[:4], idx)
    with pytest.raises(ValueError, match="one minibatch"):
        HessianOperator.from_problem(problem, x, idx[None])
    with pytest.raises(ValueError, match="one minibatch"):
        HessianOperator.from_problem(problem, x, idx.float())
    assert math.isfinite(lanczos(op, k=1).eigenvalues[0].item())
