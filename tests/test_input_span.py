"""Input-span coordinates of minibatch Hessians (``sdesam.input_span``) against dense float64
Hessians: the products, the null space, the eigenpairs, ∇λ₁ by finite differences of dense
eigenvalues, and the cases where the coordinates do not apply."""
import pytest
import torch
from torch import nn

from sdesam import make_dynamics
from sdesam.eigenpairs import minibatch_top_eigenpairs
from sdesam.input_span import InputSpanRows
from sdesam.problem import ModuleProblem

from .problems import DTYPE, flat_batch_loss, tiny_mlp_problem, wide_mlp_problem


def _setup(flatten=False, N=4):
    p = wide_mlp_problem(flatten=flatten)
    g = torch.Generator().manual_seed(5)
    x = p.x0 + 0.3 * torch.randn(p.dim, generator=g, dtype=DTYPE)
    batches = torch.stack([torch.randperm(p.n_train, generator=g)[:p.batch_size] for _ in range(N)])
    return p, x, batches, g


def _hessian(p, x, idx):
    H = torch.autograd.functional.hessian(flat_batch_loss(p, idx), x)
    return 0.5 * (H + H.T)


@pytest.mark.parametrize("flatten", [False, True])
def test_span_products_equal_dense_products_and_the_rest_is_null(flatten):
    p, x, batches, g = _setup(flatten)
    N = batches.shape[0]
    span = InputSpanRows(p, x.expand(N, -1), batches)
    assert span.dim == p.dim - 5 * (7 - 3) and span.null_dim == 5 * (7 - 3)
    H = torch.stack([_hessian(p, x, idx) for idx in batches])
    for rows in (torch.arange(N), torch.tensor([2, 0])):
        for _ in range(2):                                  # the second call reuses the kept primal pass
            V = torch.randn(rows.numel(), p.dim, generator=g, dtype=DTYPE)
            Z = span.reduce(V, rows)
            HV = torch.einsum("nij,nj->ni", H[rows], V)
            assert torch.allclose(span.expand(span.matvec(Z, rows), rows), HV, rtol=0, atol=1e-12)
            rest = V - span.expand(Z, rows)                 # outside the span: in the null space
            assert torch.einsum("nij,nj->ni", H[rows], rest).abs().max() < 1e-12
            assert rest.abs().max() > 0.1
            assert torch.allclose(span.reduce(span.expand(Z, rows), rows), Z, rtol=0, atol=1e-12)
            assert torch.allclose(torch.linalg.vector_norm(Z, dim=-1),
                                  torch.linalg.vector_norm(span.expand(Z, rows), dim=-1), rtol=1e-13)


def test_eigenpairs_in_span_coordinates_equal_dense_eigh_and_the_full_solve(monkeypatch):
    p, x, batches, _ = _setup()
    calls = []
    matvec = InputSpanRows.matvec
    monkeypatch.setattr(InputSpanRows, "matvec", lambda self, Z, rows: calls.append(1) or matvec(self, Z, rows))
    kw = dict(method="lanczos", tol=1e-10, max_iters=p.dim, generator=torch.Generator().manual_seed(1))
    span = minibatch_top_eigenpairs(p, x, batches, **kw)
    assert calls, "the span path was not taken"
    full = minibatch_top_eigenpairs(p, x, batches, input_span=False, **kw)
    for i, idx in enumerate(batches):
        lam, V = torch.linalg.eigh(_hessian(p, x, idx))
        for r in (span, full):
            assert r.value[i] == pytest.approx(float(lam[-1]), rel=1e-9)
            assert r.gap[i] == pytest.approx(float(lam[-1] - lam[-2]), rel=1e-7, abs=1e-12)
            assert abs(float(r.vector[i] @ V[:, -1])) == pytest.approx(1.0, abs=1e-8)
    assert span.num_hvps <= full.num_hvps


def test_value_gradient_in_span_coordinates_is_the_gradient_of_lambda1():
    p, x, batches, _ = _setup(N=2)
    eig = minibatch_top_eigenpairs(p, x, batches, method="lanczos", tol=1e-11, max_iters=p.dim,
                                   derivatives=True, generator=torch.Generator().manual_seed(2))
    ref = minibatch_top_eigenpairs(p, x, batches, method="dense", derivatives=True)
    h = 1e-4
    for i, idx in enumerate(batches):
        lam1 = lambda z: torch.linalg.eigvalsh(_hessian(p, z, idx))[-1]     # noqa: E731
        fd = torch.stack([(lam1(x + h * e) - lam1(x - h * e)) / (2 * h) for e in torch.eye(p.dim, dtype=DTYPE)])
        assert torch.linalg.vector_norm(eig.value_gradient[i] - fd) <= 1e-6 * torch.linalg.vector_norm(fd)
        assert torch.allclose(eig.value_gradient[i], ref.value_gradient[i], rtol=0, atol=1e-9)
        H = _hessian(p, x, idx)
        true = torch.linalg.vector_norm(H @ eig.vector[i] - eig.value[i] * eig.vector[i])
        assert float(eig.residual[i]) == pytest.approx(float(true), rel=1e-6, abs=1e-13)


def test_eq5_drift_with_span_lanczos_equals_the_dense_drift():
    p, x, _, _ = _setup()
    drifts = {}
    for method in ("lanczos", "dense"):
        dyn = make_dynamics("aligned_sde5", p, eta=0.1, rho=0.2, n_batches=3, eig_method=method, eig_tol=1e-11,
                            eig_max_iters=p.dim)
        dyn.init_state(seed=0)
        drifts[method] = dyn.drift_and_factor(0.0, x[None])[0]
    assert torch.allclose(drifts["lanczos"], drifts["dense"], rtol=0, atol=1e-9)


def test_a_nonpositive_top_ritz_value_gives_the_zero_eigenvalue_and_a_null_vector():
    p, x, batches, g = _setup(N=2)
    span = InputSpanRows(p, x.expand(2, -1), batches)
    Z = torch.randn(2, span.dim, generator=g, dtype=DTYPE)
    Z = Z / torch.linalg.vector_norm(Z, dim=-1, keepdim=True)
    lam1 = torch.tensor([-0.5, 2.0], dtype=torch.float64)
    lam2 = torch.tensor([-0.7, -1.0], dtype=torch.float64)
    res = torch.tensor([1e-3, 1e-3], dtype=torch.float64)
    l1, v, l2, r, _ = span.top_pairs(Z, lam1, lam2, res, torch.Generator().manual_seed(0))
    assert l1.tolist() == [0.0, 2.0] and l2.tolist() == [0.0, 0.0] and r.tolist() == [0.0, 1e-3]
    assert torch.linalg.vector_norm(v, dim=-1).sub(1).abs().max() < 1e-12
    assert (_hessian(p, x, batches[0]) @ v[0]).abs().max() < 1e-12
    assert torch.allclose(v[1], span.expand(Z[1:], torch.tensor([1]))[0], rtol=0, atol=1e-14)


def test_where_input_span_coordinates_do_not_apply():
    assert InputSpanRows.applies(wide_mlp_problem(), 3)
    assert not InputSpanRows.applies(wide_mlp_problem(), 7)                   # B ≥ inputs: nothing gained
    assert not InputSpanRows.applies(tiny_mlp_problem(batch_size=3), 3)       # 3 inputs
    assert not InputSpanRows.applies(wide_mlp_problem(oracle="autograd"), 3)
    assert not InputSpanRows.applies(wide_mlp_problem(block="loop"), 3)
    model = nn.Sequential(nn.Linear(7, 5), nn.GELU(), nn.Linear(5, 3)).to(DTYPE)
    model[0].weight.requires_grad_(False)              # frozen parameters: the autograd oracle
    X, Y = torch.randn(10, 7, dtype=DTYPE), torch.randint(3, (10,))
    frozen = ModuleProblem(model, "cross_entropy", X, Y, 3, dtype=DTYPE)
    assert frozen.oracle == "autograd" and not InputSpanRows.applies(frozen, 3)
    with pytest.raises(ValueError, match=r"frozen: \['0.weight'\]"):
        ModuleProblem(model, "cross_entropy", X, Y, 3, dtype=DTYPE, oracle="jet")
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).to(DTYPE)
    img = ModuleProblem(conv, "cross_entropy", torch.randn(10, 1, 5, 5, dtype=DTYPE), Y, 3, dtype=DTYPE)
    assert not InputSpanRows.applies(img, 3)
    with pytest.raises(ValueError, match="batch size 7"):
        InputSpanRows(wide_mlp_problem(), wide_mlp_problem().x0.expand(2, -1), torch.zeros(2, 7, dtype=torch.long))
    p, x, batches, _ = _setup(N=2)
    span = InputSpanRows(p, x.expand(2, -1), batches)
    with pytest.raises(ValueError, match="Z must have shape"):
        span.matvec(torch.zeros(2, p.dim, dtype=DTYPE), torch.arange(2))
