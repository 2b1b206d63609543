"""CUDA agrees with the CPU (skipped where there is no GPU)."""
import pytest
import torch

from sdesam.dynamics import make_dynamics

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
