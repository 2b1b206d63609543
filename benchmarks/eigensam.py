"""Cost of Eigen-SAM against SAM and SGD, measured side by side in one run.

    python -m benchmarks.eigensam [--batch-size 16] [--p 100] [--q 5] [--threads N]

Model: the CIFAR ResNet-18 (11.2M parameters, BatchNorm, ``--width 64``) on CIFAR-shaped
batches (3×32×32, 10 classes; random pixels — the cost does not depend on their values),
in training mode, float32, on the CPU (``--device`` to change).

1. Components, each the median of ``--repeats`` timed calls after warm-up:
   - one gradient: the plain PyTorch gradient of the module (forward + ``backward()``),
     DESIGN §3.1's unit;
   - the gradient with ``create_graph=True`` (what an Eigen-SAM refresh step computes
     instead of the plain gradient);
   - one Hessian-vector product on that graph (double backward; BatchNorm running
     statistics frozen, as in ``EigenSAM``; in eval mode with ``--hvp-mode eval``).
2. Steps: three copies of the same network take ``--p`` steps each with SGD, SAM and
   Eigen-SAM (α = 0.2, q, p; default hvp_mode="train"), interleaved step by step (SGD,
   SAM, Eigen-SAM, SGD, …) so that a change of machine load hits all three alike; each
   uses ``optimizer.step(closure)`` exactly as ``sdesam.training`` does. After one
   warm-up step each, the p timed steps (t₁ = 2 … p+1) hold exactly one refresh of v̂
   (Algorithm 2: at t₁ = p+1), so the ratio of the summed step times is Eigen-SAM's
   amortised cost. Throughput = images / summed step time.

The paper's estimate (Sec. 5.3) of the ratio is (2 + 2q/p)/2 = 1 + q/p with an HVP costing
two gradients; from the measured components the prediction is
1 + (q · HVP/grad + create_graph/grad − 1) / (2p) (SAM costs two gradients per step; with
``--hvp-mode eval`` the refresh adds a whole eval-mode gradient, so without the − 1).
Load of the machine (``os.getloadavg``) is printed before and after. The last line is one
JSON object with all the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from torch import nn

from benchmarks.timing import median_seconds
from sdesam.models import build_model
from sdesam.optim import SAM, EigenSAM, eval_mode, frozen_running_stats


def _median_time(fn, repeats: int, warmup: int = 2) -> float:
    return median_seconds(fn, repeats, warmup)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def components(model, x, y, repeats: int, hvp_mode: str) -> dict:
    """Median seconds of a plain gradient, a create_graph gradient and one HVP (in the
    module mode Eigen-SAM's ``hvp_mode`` uses)."""
    params = list(model.parameters())

    def plain():
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()

    def with_graph():
        with (eval_mode(model) if hvp_mode == "eval" else frozen_running_stats(model)):
            return torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params, create_graph=True)

    grads = with_graph()
    v = [torch.randn_like(p) for p in params]
    t_grad = _median_time(plain, repeats)
    t_graph = _median_time(with_graph, repeats)
    t_hvp = _median_time(lambda: torch.autograd.grad(grads, params, v, retain_graph=True), repeats)
    model.zero_grad(set_to_none=True)
    return {"grad_s": t_grad, "grad_create_graph_s": t_graph, "hvp_s": t_hvp}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage width (64 = standard)")
    ap.add_argument("--p", type=int, default=100, help="Eigen-SAM refresh interval = steps timed per method")
    ap.add_argument("--q", type=int, default=5)
    ap.add_argument("--hvp-mode", default="train", choices=["train", "eval"])
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per component")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = _load()
    print(f"load average before: {load_before}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {platform.processor() or platform.machine()}", flush=True)

    g = torch.Generator().manual_seed(args.seed)
    B = args.batch_size
    batches = [(torch.randn(B, 3, 32, 32, generator=g).to(device), torch.randint(10, (B,), generator=g).to(device))
               for _ in range(4)]

    def network():
        torch.manual_seed(args.seed)
        return build_model("resnet18", 10, 3, width=args.width).to(device).train()

    comp = components(network(), *batches[0], args.repeats, args.hvp_mode)
    hvp_ratio = comp["hvp_s"] / comp["grad_s"]
    graph_ratio = comp["grad_create_graph_s"] / comp["grad_s"]
    print(f"one gradient {comp['grad_s'] * 1e3:.1f} ms; create_graph gradient {graph_ratio:.2f}x; "
          f"HVP {hvp_ratio:.2f}x a gradient", flush=True)

    nets = {name: network() for name in ("sgd", "sam", "eigen_sam")}
    base = dict(lr=0.01, momentum=0.9, weight_decay=5e-5)
    opts = {
        "sgd": torch.optim.SGD(nets["sgd"].parameters(), **base),
        "sam": SAM(nets["sam"].parameters(), rho=0.05, model=nets["sam"], **base),
        "eigen_sam": EigenSAM(nets["eigen_sam"].parameters(), rho=0.05, alpha=0.2, p=args.p, q=args.q,
                              hvp_mode=args.hvp_mode, model=nets["eigen_sam"], **base),
    }

    def step(name, x, y):
        net, opt = nets[name], opts[name]

        def closure():
            return nn.functional.cross_entropy(net(x), y)
        if name == "sgd":
            opt.zero_grad(set_to_none=True)
            closure().backward()
            opt.step()
        else:
            opt.step(closure)

    for name in nets:          # warm-up: one step each (Eigen-SAM's refreshes: t₁ = 1)
        step(name, *batches[0])
    totals = {name: 0.0 for name in nets}
    refreshes = 0              # the timed steps t₁ = 2 … p+1 hold exactly one refresh (t₁ = p+1)
    for k in range(args.p):
        x, y = batches[k % len(batches)]
        refreshes += opts["eigen_sam"].refresh_due
        for name in nets:
            t0 = time.perf_counter()
            step(name, x, y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            totals[name] += time.perf_counter() - t0
    ratio = totals["eigen_sam"] / totals["sam"]
    # a train-mode refresh replaces the clean gradient by the create_graph one; an
    # eval-mode refresh adds a whole create_graph gradient
    extra = graph_ratio - 1 if args.hvp_mode == "train" else graph_ratio
    predicted = 1 + (args.q * hvp_ratio + extra) / (2 * args.p)
    throughput = {name: B * args.p / t for name, t in totals.items()}
    load_after = _load()
    print(f"{args.p} steps each, batch {B}: SGD {throughput['sgd']:.1f}, SAM {throughput['sam']:.1f}, "
          f"Eigen-SAM {throughput['eigen_sam']:.1f} images/s")
    print(f"Eigen-SAM / SAM step time at p={args.p}, q={args.q}: {ratio:.4f} (measured), "
          f"{predicted:.4f} (from the components), {1 + args.q / args.p:.4f} (paper's estimate)")
    print(f"load average after: {load_after}")
    print(json.dumps({
        "eigen_sam_over_sam_step_time": round(ratio, 4),
        "predicted_from_components": round(predicted, 4),
        "paper_estimate": 1 + args.q / args.p,
        "hvp_over_grad": round(hvp_ratio, 3),
        "create_graph_grad_over_grad": round(graph_ratio, 3),
        "grad_ms": round(comp["grad_s"] * 1e3, 2),
        "images_per_s": {k: round(v, 2) for k, v in throughput.items()},
        "p": args.p, "q": args.q, "hvp_mode": args.hvp_mode, "refreshes_timed": refreshes,
        "batch_size": B, "model": f"resnet18(width={args.width})", "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_before": load_before, "load_after": load_after,
    }))


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.eigensam")
