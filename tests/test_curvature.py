"""HessianOperator, dense reference, determinism check, alignment, power iteration."""
import math

import pytest
import torch
from torch import nn

from sdesam.curvature import (
    HessianOperator,
    NonDeterministicOperatorError,
    alignment,
    check_deterministic,
    check_symmetric,
    dense_hessian,
    flatten_tensors,
    lanczos,
    power_iteration,
    power_method,
    unflatten_vector,
    unit_vector,
)

from .problems import dense_hessian_of_concatenated

DT = torch.float64


def mlp(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 6), nn.GELU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(6, 3))
    return nn.Sequential(*layers).to(DT)


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).to(DT)


def data(shape, sizes, seed=1, classes=3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, *shape, generator=g, dtype=DT),
             torch.randint(0, classes, (n,), generator=g)) for n in sizes]


CASES = {
    "mlp": (mlp, (4,), [5, 3, 8]),
    "cnn": (cnn, (1, 6, 6), [4, 7, 2]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matvec_matches_dense_hessian(name):
    make, shape, sizes = CASES[name]
    model = make().eval()
    batches = data(shape, sizes)
    loss_fn = nn.CrossEntropyLoss()
    H = dense_hessian_of_concatenated(model, loss_fn, batches)
    op = HessianOperator.from_module(model, loss_fn, batches)
    d = sum(p.numel() for p in model.parameters())
    assert op.shape == (d, d) and op.num_examples == sum(sizes) and op.num_batches == 3
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        v = torch.randn(d, generator=g, dtype=DT)
        hv = op @ v
        ref = H @ v
        assert torch.linalg.vector_norm(hv - ref) <= 1e-10 * torch.linalg.vector_norm(ref)
    # (d, k) columns, counting one product per column
    V = torch.randn(d, 4, generator=g, dtype=DT)
    before = op.num_matvecs
    HV = op.matvec(V)
    assert op.num_matvecs - before == 4
    assert torch.allclose(HV, H @ V, rtol=0, atol=1e-10 * H.abs().max().item())
    # torch.func path and graph cache give the same products
    v = torch.randn(d, generator=g, dtype=DT)
    for kw in ({"hvp_method": "forward_over_reverse"}, {"cache_graph": True}):
        op2 = HessianOperator.from_module(model, loss_fn, batches, **kw)
        for _ in range(2):
            assert torch.linalg.vector_norm(op2 @ v - H @ v) <= 1e-10 * torch.linalg.vector_norm(H @ v)
    # library dense reference agrees with the independent one
    assert torch.allclose(dense_hessian(model, loss_fn, batches), H, rtol=0,
                          atol=1e-12 * H.abs().max().item())


def test_unequal_batches_weighted_by_size_and_sum_reduction():
    model = mlp().eval()
    batches = data((4,), [1, 9])
    H = dense_hessian_of_concatenated(model, nn.CrossEntropyLoss(), batches)
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(3), dtype=DT)
    op_sum = HessianOperator.from_module(model, nn.CrossEntropyLoss(reduction="sum"), batches,
                                         reduction="sum")
    assert torch.allclose(op_sum @ v, H @ v, rtol=1e-10, atol=0)
    # a naive per-batch average would be visibly different here
    H_naive = sum(dense_hessian_of_concatenated(model, nn.CrossEntropyLoss(), [b]) for b in batches) / 2
    assert torch.linalg.vector_norm((H_naive - H) @ v) > 1e-3 * torch.linalg.vector_norm(H @ v)


def test_flat_helpers_and_from_function():
    model = mlp()
    params = list(model.parameters())
    flat = flatten_tensors(params)
    back = unflatten_vector(flat, params)
    assert all(torch.equal(a, b) for a, b in zip(back, params))
    with pytest.raises(ValueError, match="flat vector"):
        unflatten_vector(flat[:-1], params)
    op = HessianOperator.from_module(model, nn.CrossEntropyLoss(), data((4,), [3]))
    assert torch.equal(op.parameters_vector(), flat.detach())
    assert [t.shape for t in op.unflatten(flat)] == [p.shape for p in params]

    A = torch.diag(torch.arange(1.0, 6.0, dtype=DT))
    fop = HessianOperator.from_function(lambda v: A @ v, 5, DT)
    assert torch.equal(fop @ torch.ones(5, dtype=DT), torch.arange(1.0, 6.0, dtype=DT))
    assert torch.equal(fop.to_dense(), A)
    assert fop.matvec(torch.ones(5, 0, dtype=DT)).shape == (5, 0)
    assert fop.num_matvecs == 6
    with pytest.raises(ValueError, match="shape"):
        fop @ torch.ones(4, dtype=DT)
    bad = HessianOperator.from_function(lambda v: v[:3], 5, DT)
    with pytest.raises(ValueError, match="returned"):
        bad @ torch.ones(5, dtype=DT)
    with pytest.raises(ValueError, match="symmetric"):
        check_symmetric(HessianOperator.from_function(lambda v: torch.triu(A + 1) @ v, 5, DT))
    assert check_symmetric(fop) < 1e-14


def test_determinism_check_catches_dropout_in_train_mode():
    model = mlp(dropout=0.3)
    batches = data((4,), [6, 6])
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for kw in ({}, {"cache_graph": True}):
        op = HessianOperator.from_module(model, loss_fn, batches, **kw)
        with pytest.raises(NonDeterministicOperatorError, match="dropout"):
            check_deterministic(op)
        with pytest.raises(NonDeterministicOperatorError):
            lanczos(op, k=1, max_iters=5)  # checked by default before every estimate
        lanczos(op, k=1, max_iters=3, check_determinism=False)  # the flag skips it
    model.eval()
    op = HessianOperator.from_module(model, loss_fn, batches)
    assert check_deterministic(op, num_probes=2) <= 1e-13
    lanczos(op, k=1, max_iters=5)
    # a non-finite operator is reported too
    nan_op = HessianOperator.from_function(lambda v: v * math.nan, 3, DT)
    with pytest.raises(NonDeterministicOperatorError, match="non-finite"):
        check_deterministic(nan_op)


def test_alignment_by_hand():
    e1 = torch.tensor([1.0, 0.0, 0.0], dtype=DT)
    e2 = torch.tensor([0.0, 1.0, 0.0], dtype=DT)
    assert alignment(3 * e1, e1).item() == pytest.approx(1.0, abs=1e-15)
    assert alignment(-2 * e1, e1).item() == pytest.approx(1.0, abs=1e-15)   # anti-aligned
    assert alignment(e2, e1).item() == pytest.approx(1 - math.sqrt(2), abs=1e-15)
    # 45 degrees: ‖u − v‖ = √(2 − √2)
    assert alignment(e1 + e2, e1).item() == pytest.approx(1 - math.sqrt(2 - math.sqrt(2)), abs=1e-15)
    # batched over leading dims, v1 broadcast, non-unit v1 normalised
    eps = torch.stack([e1, -e1, e2, e1 + e2]).reshape(2, 2, 3)
    out = alignment(eps, 5 * e1)
    assert out.shape == (2, 2)
    expected = torch.tensor([[1, 1], [1 - math.sqrt(2), 1 - math.sqrt(2 - math.sqrt(2))]], dtype=DT)
    assert torch.allclose(out, expected, atol=1e-15)
    assert torch.isnan(alignment(torch.zeros(3), e1))
    with pytest.raises(ValueError, match="last dimension"):
        alignment(torch.ones(3), torch.ones(4))


def linear_regression(seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(5, 1).to(DT)
    g = torch.Generator().manual_seed(seed + 1)
    scales = torch.tensor([3.0, 1.5, 1.0, 0.7, 0.3], dtype=DT)
    batches = [(torch.randn(n, 5, generator=g, dtype=DT) * scales,
                torch.randn(n, 1, generator=g, dtype=DT)) for n in (7, 5)]
    return model, nn.MSELoss(), batches


def test_power_iteration_converges_to_top_eigenvector_psd():
    model, loss_fn, batches = linear_regression()
    H = dense_hessian_of_concatenated(model, loss_fn, batches)
    evals, evecs = torch.linalg.eigh(H)
    assert evals.min() > 0  # PSD (Gauss–Newton of least squares)
    op = HessianOperator.from_module(model, loss_fn, batches)
    v0 = torch.randn(op.dim, generator=torch.Generator().manual_seed(5), dtype=DT)
    res = power_iteration(op.matvec, v0, 200)
    assert res.num_hvps == 200
    assert res.eigenvalue.item() == pytest.approx(evals[-1].item(), rel=1e-10)
    assert alignment(res.vector, evecs[:, -1]).item() > 1 - 1e-6
    pm = power_method(op, tol=1e-12, max_iters=1000, v0=v0)
    assert pm.converged and pm.num_matvecs < 1000
    assert pm.eigenvalue == pytest.approx(evals[-1].item(), rel=1e-10)
    assert alignment(pm.vector, evecs[:, -1]).item() > 1 - 1e-5
    # Rayleigh quotients of a PSD operator increase monotonically to λ1
    assert (pm.history[1:] >= pm.history[:-1] - 1e-12).all()
    # the callback sees Algorithm 1's estimate after t products (q = t)
    seen = []
    short = power_method(op, tol=1e-3, max_iters=5, v0=v0,
                         callback=lambda t, v, th: seen.append((t, v.clone(), th)))
    assert [s[0] for s in seen] == list(range(1, len(seen) + 1)) and 2 <= len(seen) <= 5
    for t, v, th in seen:
        alg1 = power_iteration(op.matvec, v0, t)
        assert torch.allclose(v, alg1.vector, atol=1e-14)
        assert th == pytest.approx(alg1.eigenvalue.item(), rel=1e-14)
    assert torch.equal(short.vector, seen[-1][1])


def test_unit_vector_is_unit_for_large_float32():
    # torch's CPU float32 vector_norm drifts (pytorch#169237): 2M entries are enough
    v = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    u = unit_vector(v)
    assert u.dtype == torch.float32
    assert abs(u.double().norm().item() - 1.0) < 1e-6
    assert alignment(v, u).item() > 1 - 1e-6
