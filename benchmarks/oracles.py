"""Cost of the oracles and of one step of each dynamics, in units of one plain gradient.

Run:  python -m benchmarks.oracles [--batch-size 128] [--n-batches 8] [--repeats 30]

"One gradient" is the plain PyTorch gradient of the same ``nn.Module`` on the same
minibatch (``torch.autograd.grad`` of ``loss`` on its parameters), as DESIGN §3.1
asks. Model: the paper's MLP 784-784-10 with GeLU. Data: MNIST when it is available
locally (``--data-dir``), else random tensors of MNIST's shape (the cost does not
depend on the pixel values; the output says which was used). Every figure is the
median of ``--repeats`` timed calls after warm-up, all measured in one run, and the
last line is a JSON object with the ratios.
"""
from __future__ import annotations

import argparse
import json
import platform

import torch
from torch import nn

from benchmarks.timing import median_seconds
from sdesam.dynamics import make_dynamics
from sdesam.problem import ModuleProblem


def _mnist_like(n: int, data_dir, seed: int):
    try:
        from sdesam.data import load_mnist
        ds = load_mnist(data_dir, download=False)
        x = ds.train_images[:n].reshape(-1, 784).float() / 255.0
        return x, ds.train_labels[:n], "MNIST"
    except Exception:                                   # noqa: BLE001 — any failure: synthetic
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 784, generator=g), torch.randint(10, (n,), generator=g), "synthetic (MNIST shapes)"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-batches", type=int, default=8, help="K minibatches per SDE step")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    X, Y, source = _mnist_like(4096, args.data_dir, 0)
    model = nn.Sequential(nn.Linear(784, 784), nn.GELU(), nn.Linear(784, 10)).to(device)
    B = args.batch_size
    problem = ModuleProblem(model, "cross_entropy", X, Y, B, device=device)
    generic = ModuleProblem(model, "cross_entropy", X, Y, B, device=device, oracle="autograd")
    params = [p for p in model.parameters()]
    xb, yb = problem.inputs[:B], problem.targets[:B]
    batch = torch.arange(B, device=device)[None]
    x = problem.x0

    def plain_gradient():
        loss = nn.functional.cross_entropy(model(xb), yb)
        torch.autograd.grad(loss, params)

    def v2_jet():
        problem.taylor(x, batch, "sam", 0.2, order=2)

    def v2_generic():
        generic.taylor(x, batch, "sam", 0.2, order=2)

    def flat_gradient():
        problem.gradient(x, batch)

    sam = make_dynamics("sam", problem, eta=0.01, rho=0.2)
    sam_state = sam.init_state(seed=0)
    sde3 = make_dynamics("sam_sde3", problem, eta=0.01, rho=0.2, n_batches=args.n_batches)
    sde3_state = sde3.init_state(seed=0)

    def sam_step():
        sam.advance(sam_state, 1)

    def sde3_step():
        sde3.advance(sde3_state, 1)

    t = {}
    t["gradient"] = median_seconds(plain_gradient, args.repeats, 5, device)
    t["flat_gradient"] = median_seconds(flat_gradient, args.repeats, 5, device)
    t["v2_sample"] = median_seconds(v2_jet, args.repeats, 5, device)
    t["v2_sample_generic_autograd"] = median_seconds(v2_generic, args.repeats, 5, device)
    t["sam_step"] = median_seconds(sam_step, args.repeats, 5, device)
    t["sde3_step"] = median_seconds(sde3_step, max(5, args.repeats // 4), 2, device)
    t["gradient_again"] = median_seconds(plain_gradient, args.repeats, 5, device)
    g = min(t["gradient"], t["gradient_again"])   # the faster of two measurements: the stricter ratio

    print(f"MLP 784-784-10 GeLU, B={B}, data: {source}, device: {device}, "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"{'quantity':<44}{'ms':>10}{'/ gradient':>12}")
    rows = [("plain gradient (autograd.grad on the module)", t["gradient"]),
            ("flat-vector gradient (Problem.gradient)", t["flat_gradient"]),
            ("one v² sample (Taylor-mode jet)", t["v2_sample"]),
            ("one v² sample (generic reverse³ autograd)", t["v2_sample_generic_autograd"]),
            ("one discrete SAM step", t["sam_step"]),
            (f"one SAM-SDE3 Euler step, K={args.n_batches}", t["sde3_step"])]
    for name, sec in rows:
        print(f"{name:<44}{sec * 1e3:>10.3f}{sec / g:>12.2f}")
    result = {
        "benchmark": "oracles", "model": "mlp-784-784-10-gelu", "batch_size": B, "n_batches": args.n_batches,
        "data": source, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "gradient_ms": g * 1e3,
        "v2_over_gradient": t["v2_sample"] / g,
        "v2_generic_autograd_over_gradient": t["v2_sample_generic_autograd"] / g,
        "sam_step_over_gradient": t["sam_step"] / g,
        "sde3_step_over_gradient": t["sde3_step"] / g,
        "sde3_step_over_gradient_per_minibatch": t["sde3_step"] / g / args.n_batches,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.oracles")
