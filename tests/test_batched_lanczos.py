"""The batched eigen-solver: every minibatch of a block equals dense eigh in float64 (with
partial and with full reorthogonalisation), the batched solve equals the per-minibatch
solve, a warm start never changes the answer beyond the tolerance, and partial
reorthogonalisation keeps converged eigenvalues from reappearing as spurious copies."""
import pytest
import torch

from sdesam._streams import seeded_generator
from sdesam.curvature import batched_lanczos
from sdesam.eigenpairs import minibatch_top_eigenpairs

from .problems import DTYPE, flat_batch_loss, tiny_mlp_problem


def _dense(problem, x, idx):
    f = flat_batch_loss(problem, idx)
    H = torch.autograd.functional.hessian(f, x)
    return torch.linalg.eigh(0.5 * (H + H.T))


def _block():
    p = tiny_mlp_problem(n=12, batch_size=4)
    g = torch.Generator().manual_seed(3)
    x = p.x0 + 0.3 * torch.randn(p.dim, generator=g, dtype=DTYPE)
    batches = torch.stack([torch.randperm(12, generator=g)[:4] for _ in range(5)])      # (5, B)
    return p, x, batches


@pytest.mark.parametrize("reorthogonalize", ["partial", "full"])
def test_every_minibatch_of_a_block_equals_dense_eigh(reorthogonalize):
    p, x, batches = _block()
    eig = minibatch_top_eigenpairs(p, x, batches, method="lanczos", tol=1e-10, max_iters=p.dim,
                                   generator=seeded_generator(0, 1, 2), reorthogonalize=reorthogonalize)
    for i, idx in enumerate(batches):
        lam, V = _dense(p, x, idx)
        assert eig.value[i] == pytest.approx(float(lam[-1]), rel=1e-8, abs=1e-12)
        assert eig.gap[i] == pytest.approx(float(lam[-1] - lam[-2]), rel=1e-6, abs=1e-10)
        assert abs(float(eig.vector[i] @ V[:, -1])) == pytest.approx(1.0, abs=1e-6)
        assert eig.residual[i] <= 1e-10 * eig.scale[i]


def test_batched_equals_the_per_minibatch_solve():
    p, x, batches = _block()
    kw = dict(method="lanczos", tol=1e-6, max_iters=60)
    start = torch.randn(5, p.dim, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    both = minibatch_top_eigenpairs(p, x, batches, v0=start, **kw)
    for i in range(5):
        one = minibatch_top_eigenpairs(p, x, batches[i:i + 1], v0=start[i:i + 1], **kw)
        assert torch.allclose(both.value[i], one.value[0], rtol=1e-12, atol=0)
        assert torch.allclose(both.vector[i], one.vector[0], rtol=0, atol=1e-9)


def test_a_warm_start_never_changes_the_answer_beyond_the_tolerance():
    p, x, batches = _block()
    tol = 1e-4
    cold = minibatch_top_eigenpairs(p, x, batches, method="lanczos", tol=tol, max_iters=p.dim,
                                    generator=seeded_generator(0, 1, 3))
    near = cold.vector + 0.05 * torch.randn(cold.vector.shape, generator=torch.Generator().manual_seed(2),
                                            dtype=DTYPE)
    warm = minibatch_top_eigenpairs(p, x, batches, method="lanczos", tol=tol, max_iters=p.dim, v0=near)
    for i, idx in enumerate(batches):
        lam, _ = _dense(p, x, idx)
        for r in (cold, warm):
            # |θ − λ₁| ≤ residual (a Ritz value lies within its residual of an eigenvalue)
            assert abs(float(r.value[i]) - float(lam[-1])) <= float(r.residual[i]) + 1e-12
            assert r.residual[i] <= tol * r.scale[i]
        assert abs(float(warm.vector[i] @ cold.vector[i])) > 0.99


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_partial_reorthogonalisation_keeps_converged_eigenvalues_from_reappearing(dtype, tol):
    # λ₁ = 10 is isolated and converges within a few steps, after which plain Lanczos (no
    # reorthogonalisation) loses orthogonality and returns a second copy of 10 as θ₂
    # before λ₂ = 1 (relative gap 0.01 to the rest, in [0, 0.9]) has converged
    d = 500
    lam = torch.cat([torch.tensor([10.0, 1.0]), torch.linspace(0, 0.9, d - 2)])
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    A = ((U * lam.double()) @ U.T).to(dtype).expand(2, d, d)
    v0 = torch.randn(2, d, generator=g, dtype=dtype)

    def matvec(V, rows):
        return torch.einsum("nij,nj->ni", A[rows], V)
    runs = {mode: batched_lanczos(matvec, v0, k=2, tol=tol, max_iters=300, reorthogonalize=mode)
            for mode in ("partial", "full")}
    for r in runs.values():
        assert bool(r.converged.all())
        assert torch.allclose(r.eigenvalues, torch.tensor([[10.0, 1.0]] * 2, dtype=torch.float64),
                              rtol=0, atol=20 * tol)
        assert abs(float(torch.einsum("nd,nd->n", r.eigenvectors[:, 0], r.eigenvectors[:, 1]).abs().max())) < 1e-3
    partial, full = runs["partial"].num_reorthogonalizations, runs["full"].num_reorthogonalizations
    assert bool((full == runs["full"].num_iters - 1).all())        # every step after the first
    assert bool((2 * partial <= full).all())                        # partial: at most half of them


def test_stopped_rows_get_no_more_products_and_bad_input_is_refused():
    A = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=DTYPE))
    B = torch.diag(torch.tensor([5.0, 4.99, 1.0, 0.1], dtype=DTYPE))
    ops = torch.stack([A, B])
    seen = []

    def matvec(V, rows):
        seen.append(rows.tolist())
        return torch.einsum("nij,nj->ni", ops[rows], V)
    v0 = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]], dtype=DTYPE)
    r = batched_lanczos(matvec, v0, k=2, tol=1e-12, max_iters=4)
    assert torch.allclose(r.eigenvalues, torch.tensor([[3.0, 2.0], [5.0, 4.99]], dtype=DTYPE), atol=1e-10)
    assert r.num_matvecs == sum(len(s) for s in seen) == int(r.num_iters.sum())
    with pytest.raises(ValueError, match=r"v0 must have shape \(N, d\)"):
        batched_lanczos(matvec, v0[0])
    with pytest.raises(ValueError, match="k=5 exceeds the dimension d=4"):
        batched_lanczos(matvec, v0, k=5)
    with pytest.raises(ValueError, match="reorthogonalize must be one of"):
        batched_lanczos(matvec, v0, reorthogonalize="selective")
    with pytest.raises(ValueError, match=r"matvec returned shape \(2, 3\) for vectors of shape \(2, 4\)"):
        batched_lanczos(lambda V, rows: V[:, :3], v0)


def test_hvp_rows_reuses_the_forward_pass_and_equals_the_loop():
    p, x, batches = _block()
    xs = x.expand(5, -1) + 0.01 * torch.arange(5, dtype=DTYPE)[:, None]
    matvec = p.hvp_rows(xs, batches)
    V = torch.randn(5, p.dim, generator=torch.Generator().manual_seed(4), dtype=DTYPE)
    for rows in (torch.arange(5), torch.arange(5), torch.tensor([1, 3]), torch.tensor([4])):
        got = matvec(V[rows], rows)
        for j, r in enumerate(rows.tolist()):
            assert torch.allclose(got[j], p.hvp(xs[r], batches[r], V[r]), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"hvp_rows takes x \(N, d\) and batch \(N, B\)"):
        p.hvp_rows(x, batches)
