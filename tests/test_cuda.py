"""CUDA agrees with the CPU (skipped where there is no GPU)."""
import pytest
import torch

from sdesam.registry import make_dynamics

from .problems import DTYPE, logcosh_problem, tiny_mlp_problem

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("oracle", ["jet", "autograd"])
def test_module_oracles_agree_on_cuda(oracle):
    cpu = tiny_mlp_problem(oracle)
    gpu = tiny_mlp_problem(oracle)
    gpu = type(gpu)(gpu.model, "cross_entropy", gpu.inputs, gpu.targets, gpu.batch_size, oracle=oracle,
                    dtype=DTYPE, device="cuda")
    idx = torch.tensor([[0, 3, 5], [1, 2, 9]])
    a = cpu.taylor(cpu.x0, idx, "sam", 0.3, components=True)
    b = gpu.taylor(gpu.x0, idx.cuda(), "sam", 0.3, components=True)
    for name in ["g", "h", "t", "v"]:
        assert torch.allclose(getattr(a, name), getattr(b, name).cpu(), rtol=1e-10, atol=1e-12), name
    v = torch.randn(cpu.dim, dtype=DTYPE)
    assert torch.allclose(cpu.hvp(cpu.x0, idx[0], v), gpu.hvp(gpu.x0, idx[0].cuda(), v.cuda()).cpu(),
                          rtol=1e-10, atol=1e-12)


def test_sde_step_agrees_on_cuda():
    cpu = logcosh_problem()
    gpu = type(cpu)(cpu.per_example_loss, tuple(t.cuda() for t in cpu.data), cpu.batch_size, cpu.x0.cuda(),
                    name=cpu.name)
    # exact expectations: no sampling, so the noise is the only randomness and it is
    # drawn on each device from its own generator; compare drift and diffusion instead
    a = make_dynamics("sam_sde3", cpu, eta=0.05, rho=0.3, n_batches="exact")
    b = make_dynamics("sam_sde3", gpu, eta=0.05, rho=0.3, n_batches="exact")
    fa, ga = a.drift_and_factor(0.0, cpu.x0[None])
    fb, gb = b.drift_and_factor(0.0, gpu.x0[None])
    assert torch.allclose(fa, fb.cpu(), rtol=1e-10, atol=1e-12)
    assert torch.allclose(ga, gb.cpu(), rtol=1e-10, atol=1e-12)
    sa, sb = a.init_state(seed=1), b.init_state(seed=1)
    a.advance(sa, 1)
    b.advance(sb, 1)
    assert torch.isfinite(sb.x).all() and sb.x.device.type == "cuda"


@pytest.mark.parametrize("rule", ["sam", "usam", "eigen_sam"])
@pytest.mark.parametrize("order", [0, 1, 2])
def test_batched_oracles_on_cuda_equal_the_loop_and_the_cpu(rule, order):
    from .test_batched_oracles import _inputs, assert_same, mlp_pair, rel
    batched, looped = mlp_pair(wide=True)
    per = batched.sample_bytes()
    cuda = [type(p)(p.model, "cross_entropy", p.inputs, p.targets, 3, dtype=DTYPE, device="cuda", block=block,
                    block_memory=3 * per) for p, block in ((batched, "auto"), (looped, "loop"))]
    assert cuda[0].block == "batched" and cuda[0].block_size == 3 and cuda[1].block == "loop"
    # the CUDA default budget is a quarter of the device's memory
    assert type(batched)(batched.model, "cross_entropy", batched.inputs, batched.targets, 3, dtype=DTYPE,
                         device="cuda").block_memory == torch.cuda.get_device_properties(0).total_memory // 4
    x, batches, eig = _inputs(looped, 4, 2)
    eigvec = eig if rule == "eigen_sam" else None
    ref = looped.taylor(x, batches, rule, 0.3, order, eigvec=eigvec, components=True)
    outs = [p.taylor(x.cuda(), batches.cuda(), rule, 0.3, order, eigvec=None if eigvec is None else eigvec.cuda(),
                     components=True) for p in cuda]
    assert_same(outs[0], outs[1], ["v", "g", "eps", "h", "t"])
    for k in ["v", "g", "eps"]:
        assert rel(getattr(outs[0], k).cpu(), getattr(ref, k)) < 1e-10, k
    v = eig[:, 0]
    assert rel(cuda[0].hvp(x[:, 0].cuda(), batches[:, 0].cuda(), v.cuda()).cpu(),
               looped.hvp(x[:, 0], batches[:, 0], v)) < 1e-10


@pytest.mark.parametrize("reorthogonalize", ["partial", "full"])
def test_batched_lanczos_on_cuda_equals_the_cpu(reorthogonalize):
    from sdesam.eigenpairs import minibatch_top_eigenpairs
    cpu = tiny_mlp_problem()
    gpu = type(cpu)(cpu.model, "cross_entropy", cpu.inputs, cpu.targets, cpu.batch_size, dtype=DTYPE, device="cuda")
    batches = torch.tensor([[0, 3, 5], [1, 2, 9], [4, 6, 7]])
    start = torch.randn(3, cpu.dim, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    kw = dict(method="lanczos", tol=1e-8, max_iters=cpu.dim, reorthogonalize=reorthogonalize)
    a = minibatch_top_eigenpairs(cpu, cpu.x0, batches, v0=start, **kw)
    b = minibatch_top_eigenpairs(gpu, gpu.x0, batches.cuda(), v0=start.cuda(), **kw)
    assert b.vector.device.type == "cuda"
    assert torch.allclose(a.value, b.value.cpu(), rtol=1e-7, atol=1e-10)
    assert torch.allclose(a.gap, b.gap.cpu(), rtol=1e-5, atol=1e-8)
    cos = torch.einsum("nd,nd->n", a.vector, b.vector.cpu()).abs()
    assert bool((cos > 1 - 1e-6).all())


def test_input_span_eigenpairs_on_cuda_equal_the_cpu():
    from sdesam.eigenpairs import minibatch_top_eigenpairs
    from sdesam.input_span import InputSpanRows

    from .problems import wide_mlp_problem
    cpu = wide_mlp_problem()
    gpu = wide_mlp_problem(device="cuda")
    assert InputSpanRows.applies(gpu, gpu.batch_size)
    batches = torch.tensor([[0, 3, 5], [1, 2, 9], [4, 6, 7]])
    start = torch.randn(3, cpu.dim, generator=torch.Generator().manual_seed(0), dtype=DTYPE)
    kw = dict(method="lanczos", tol=1e-9, max_iters=cpu.dim, derivatives=True)
    a = minibatch_top_eigenpairs(cpu, cpu.x0, batches, v0=start, **kw)
    b = minibatch_top_eigenpairs(gpu, gpu.x0, batches.to(gpu.device), v0=start.to(gpu.device), **kw)
    assert b.vector.device == gpu.device and b.value_gradient.device == gpu.device
    assert torch.allclose(a.value, b.value.cpu(), rtol=1e-8, atol=1e-12)
    cos = torch.einsum("nd,nd->n", a.vector, b.vector.cpu()).abs()
    assert bool((cos > 1 - 1e-8).all())
    assert torch.allclose(a.value_gradient, b.value_gradient.cpu(), rtol=0, atol=1e-8)     # even in v₁
