"""Cost and eigenvector quality of Eigen-SAM's refresh: SAM, the paper's Eigen-SAM, the
Lanczos refresh and the official algorithm, measured side by side in one run.

    python -m benchmarks.eigensam [--batch-size 16] [--p 100] [--threads N] [--per-layer]

Model: the CIFAR ResNet-18 (11.2M parameters, BatchNorm, ``--width 64``) on CIFAR-shaped
batches (3×32×32, 10 classes, random pixels and labels), training mode, float32, CPU.

1. Components, each the median of ``--repeats`` timed calls: one gradient (forward +
   ``backward()``, the unit), the gradient with ``create_graph=True``, and one
   Hessian-vector product by double backward on that graph and by forward-over-reverse
   (``torch.func.jvp`` of ``torch.func.grad``: its own forward and backward), each with
   BatchNorm in training mode (statistics frozen) and in eval mode. ``--per-layer``
   repeats the product comparison on single-layer-type blocks (convolution, linear,
   BatchNorm in training and eval mode).
2. Steps: four copies of the network take ``--p`` steps each, interleaved step by step
   (so a change of machine load hits all alike):
   - ``sam``: ``sdesam.optim.SAM``;
   - ``paper``: ``EigenSAM(estimator="power", q=5)`` — Algorithm 1 as the paper defines it,
     and ``EigenSAM()``'s default;
   - ``lanczos``: ``EigenSAM(estimator="lanczos")`` (q = 4), the candidate cheaper refresh;
   - ``official``: the official training-loop branch (RitianLuo/EigenSAM) written out
     here: an eval-mode power iteration through ``loss.backward(create_graph=True)`` and
     ``autograd.grad(..., grad_outputs=v)``, the gradient projected in place on flat
     copies, a SAM first step without normalisation, a momentum-0 BatchNorm perturbed pass.
   After one warm-up step each, the p timed steps hold exactly one refresh of each
   Eigen-SAM variant (paper and lanczos at t₁ = p + 1, official at in-epoch k = p).
   ``--timed-steps m`` (< p, for a loaded machine) times m steps with the refresh at the
   m-th instead and extrapolates to p: (Σ m steps + (p − m) · median non-refresh step) ÷
   (the same for SAM); the default m = p needs no extrapolation.
   Reported: summed step time ÷ SAM's, the median non-refresh step ÷ SAM's (the per-step
   overhead) and the refresh step's excess over a non-refresh step next to what the
   components predict (q products + the create_graph surcharge; official: a whole
   eval-mode create_graph gradient + q eval-mode products).
3. Alignment: a ResNet-18 of ``--align-width`` (default 16, so that converged Lanczos
   references stay affordable on a CPU) is trained with SAM for ``--align-pretrain`` steps
   on a fixed pool of 16 random minibatches, then ``--align-refreshes`` times: SAM
   trains ``--align-every`` steps, and on the next minibatch each variant refreshes its
   own warm-started v̂ (a shared Gaussian start the first time); |⟨v̂, v₁⟩| with the
   Lanczos-converged top eigenvector v₁ of that minibatch's Hessian (training mode,
   BatchNorm batch statistics; for the official variant also the eval-mode Hessian it
   iterates on). Medians over the refreshes.

Load of the machine (``os.getloadavg``) is printed before and after. The last line is
one JSON object; ``eigen_sam_over_sam_step_time`` is the ratio of ``EigenSAM()``'s
default refresh (the paper's, q = 5 power iterations).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmarks.oracles import check_arguments
from benchmarks.timing import median_seconds
from sdesam.curvature import HessianOperator, lanczos
from sdesam.models import build_model
from sdesam.optim import SAM, EigenSAM, eval_mode, frozen_running_stats
from sdesam.optim.eigen_sam import DEFAULT_PRODUCTS

VARIANTS = ("sam", "paper", "lanczos", "official")


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def loss_fn(net, x, y):
    return nn.functional.cross_entropy(net(x), y)


# -- 1. components ------------------------------------------------------------------------------
def hvp_timings(model, x, y, repeats: int) -> dict:
    """Median seconds of a gradient, a create_graph gradient (train / eval mode), and one
    HVP by double backward on a live graph and by forward-over-reverse (train / eval)."""
    from torch.func import functional_call, grad, jvp

    params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]
    v = [torch.randn_like(p) for p in params]

    def plain():
        model.zero_grad(set_to_none=True)
        loss_fn(model, x, y).backward()

    out = {"grad_s": median_seconds(plain, repeats, 2)}
    for mode, context in (("train", frozen_running_stats), ("eval", eval_mode)):
        with context(model):
            def with_graph():
                return torch.autograd.grad(loss_fn(model, x, y), params, create_graph=True)

            grads = with_graph()
            out[f"grad_create_graph_{mode}_s"] = median_seconds(with_graph, repeats, 2)
            out[f"hvp_double_backward_{mode}_s"] = median_seconds(
                lambda grads=grads: torch.autograd.grad(grads, params, v, retain_graph=True), repeats, 2)
            del grads

            def f(tensors):
                return loss_fn(lambda inp: functional_call(model, dict(zip(names, tensors)), (inp,)), x, y)

            primals = tuple(p.detach() for p in params)
            out[f"hvp_forward_over_reverse_{mode}_s"] = median_seconds(
                lambda f=f, primals=primals: jvp(grad(f), (primals,), (tuple(v),)), repeats, 2)
    model.zero_grad(set_to_none=True)
    return out


def per_layer(repeats: int) -> dict:
    """HVP ÷ gradient for blocks of one layer type (batch 16): double backward vs
    forward-over-reverse."""
    torch.manual_seed(0)
    blocks = {
        "conv3x3(64->64, 32x32)+relu": (nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
                                                     nn.Conv2d(64, 64, 3, padding=1), nn.Flatten(),
                                                     nn.LazyLinear(10)), (16, 64, 32, 32)),
        "linear(512->512)+relu": (nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512),
                                                nn.ReLU(), nn.Linear(512, 10)), (16, 512)),
        "batchnorm(64, 32x32)+tanh": (nn.Sequential(nn.BatchNorm2d(64), nn.Tanh(), nn.BatchNorm2d(64),
                                                    nn.Flatten(), nn.LazyLinear(10)), (16, 64, 32, 32)),
    }
    rows = {}
    g = torch.Generator().manual_seed(0)
    for name, (block, shape) in blocks.items():
        x = torch.randn(*shape, generator=g)
        y = torch.randint(10, (shape[0],), generator=g)
        block(x)                                      # materialise lazy layers
        modes = ("train", "eval") if "batchnorm" in name else ("train",)
        for mode in modes:
            block.train(mode == "train")
            t = hvp_timings(block, x, y, repeats)
            rows[f"{name} [{mode}]"] = {
                "double_backward": round(t[f"hvp_double_backward_{mode}_s"] / t["grad_s"], 2),
                "forward_over_reverse": round(t[f"hvp_forward_over_reverse_{mode}_s"] / t["grad_s"], 2)}
        block.train()
    return rows


# -- 2. the official training-loop branch, written out -------------------------------------------
class Official:
    """RitianLuo/EigenSAM's Eigen-SAM branch (utils.py + its SAM step), step by step."""

    def __init__(self, net, *, rho, alpha, p, q, v0=None, **sgd):
        self.net, self.rho, self.alpha, self.p, self.q = net, rho, alpha, p, q
        self.params = [t for t in net.parameters() if t.requires_grad]
        self.base = torch.optim.SGD(net.parameters(), **sgd)
        self.v = None if v0 is None else [t.view_as(p).clone() for t, p in
                                          zip(v0.split([p.numel() for p in self.params]), self.params)]
        self.has_estimate = False

    def estimate(self, x, y):
        """estimate_largest_eigenvector: eval mode, create_graph backward, q normalised HVPs."""
        v = self.v if self.v is not None else [torch.randn_like(p) for p in self.params]
        self.net.eval()
        loss_fn(self.net, x, y).backward(create_graph=True)
        grads = [p.grad.clone() for p in self.params]
        for _ in range(self.q):
            hv = torch.autograd.grad(grads, self.params, grad_outputs=v, retain_graph=True)
            norm = torch.sqrt(sum((t ** 2).sum() for t in hv) + 1e-12)
            v = [t / norm for t in hv]
        self.net.zero_grad(set_to_none=True)
        self.net.train()
        self.v, self.has_estimate = [t.detach() for t in v], True

    @torch.no_grad()
    def _project(self):
        """modify_gradient_with_projection: flat copies, projection, copied back into .grad."""
        g = torch.cat([p.grad.view(-1) for p in self.params])
        v = torch.cat([t.reshape(-1) for t in self.v])
        sign = torch.sign(g.dot(v))
        g /= g.norm() + 1e-12
        g += self.alpha * sign * (v - g.dot(v) * g)
        offset = 0
        for p in self.params:
            p.grad.copy_(g[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def step(self, x, y, k):
        if k % self.p == 0 and k > 0:
            self.estimate(x, y)
        loss_fn(self.net, x, y).backward()
        if self.has_estimate:
            self._project()
        with torch.no_grad():                       # SAM first step, normalisation off
            old = [p.clone() for p in self.params]
            for p in self.params:
                p.add_(p.grad * self.rho)
        self.net.zero_grad(set_to_none=True)
        bns = [m for m in self.net.modules() if isinstance(m, _BatchNorm)]
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.momentum = 0
        loss_fn(self.net, x, y).backward()
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        with torch.no_grad():
            for p, x_old in zip(self.params, old):
                p.copy_(x_old)
        self.base.step()
        self.base.zero_grad(set_to_none=True)


def make_variants(nets, *, p, rho=0.05, alpha=0.2, seed=0, sgd):
    return {
        "sam": SAM(nets["sam"].parameters(), rho=rho, model=nets["sam"], **sgd),
        "paper": EigenSAM(nets["paper"].parameters(), rho=rho, alpha=alpha, p=p, q=5, estimator="power",
                          model=nets["paper"], seed=seed, **sgd),
        "lanczos": EigenSAM(nets["lanczos"].parameters(), rho=rho, alpha=alpha, p=p, estimator="lanczos",
                            model=nets["lanczos"], seed=seed, **sgd),
        "official": Official(nets["official"], rho=rho, alpha=alpha, p=p, q=5, **sgd),
    }


def timed_steps(args, network, batches, device) -> dict:
    nets = {name: network(args.width) for name in VARIANTS}
    m = args.timed_steps or args.p
    opts = make_variants(nets, p=m, sgd=dict(lr=0.01, momentum=0.9, weight_decay=5e-5))

    def step(name, x, y, k):
        if name == "official":
            opts[name].step(x, y, k)
        else:
            opts[name].step(lambda: loss_fn(nets[name], x, y))

    for name in VARIANTS:                      # warm-up: paper/lanczos refresh at t₁ = 1; official k = 0
        step(name, *batches[0], 0)
    times = {name: [] for name in VARIANTS}
    refresh_at = {name: [] for name in VARIANTS}
    for k in range(1, m + 1):
        x, y = batches[k % len(batches)]
        for name in VARIANTS:
            if name in ("paper", "lanczos") and opts[name].refresh_due:
                refresh_at[name].append(k - 1)
            if name == "official" and k % m == 0:
                refresh_at[name].append(k - 1)
            t0 = time.perf_counter()
            step(name, x, y, k)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[name].append(time.perf_counter() - t0)
        if k % 10 == 0 or k == m:
            print(f"  {k}/{m} steps: summed seconds " + ", ".join(f"{n} {sum(t):.1f}" for n, t in times.items()),
                  flush=True)
    return {"times": times, "refresh_at": refresh_at}


# -- 3. alignment ----------------------------------------------------------------------------------
def alignment_study(args, network, device) -> dict:
    g = torch.Generator().manual_seed(args.seed + 1)
    pool = [(torch.randn(args.batch_size, 3, 32, 32, generator=g).to(device),
             torch.randint(10, (args.batch_size,), generator=g).to(device)) for _ in range(16)]
    net = network(args.align_width)
    params = [p for p in net.parameters() if p.requires_grad]
    sam = SAM(net.parameters(), rho=0.05, model=net, lr=0.05, momentum=0.9, weight_decay=5e-4)
    counter = [0]

    def train(n):
        for _ in range(n):
            x, y = pool[counter[0] % len(pool)]
            counter[0] += 1
            sam.step(lambda x=x, y=y: loss_fn(net, x, y))

    train(args.align_pretrain)
    estimators = {"paper": EigenSAM(net.parameters(), estimator="power", q=5, model=net, lr=0.0, seed=3),
                  "lanczos": EigenSAM(net.parameters(), estimator="lanczos", model=net, lr=0.0, seed=3)}
    official = Official(net, rho=0.05, alpha=0.2, p=1, q=5, v0=estimators["paper"].eigenvector, lr=0.0)

    def top_eigenvector(x, y, context):
        with context(net):
            grads = torch.autograd.grad(loss_fn(net, x, y), params, create_graph=True)

            def hvp(v):
                pieces = torch.split(v, [p.numel() for p in params])
                out = torch.autograd.grad(grads, params, [t.view_as(p) for t, p in zip(pieces, params)],
                                          retain_graph=True)
                return torch.cat([t.reshape(-1) for t in out])

            op = HessianOperator.from_function(hvp, sum(p.numel() for p in params), device=device)
            res = lanczos(op, 1, tol=args.align_tol, max_iters=args.align_max_iters, check_determinism=False,
                          generator=torch.Generator().manual_seed(counter[0]), basis_dtype=torch.float32)
        return res.eigenvectors[:, 0].double(), float(res.eigenvalues[0]), float(res.residuals[0]) / res.scale

    rows = []
    for r in range(args.align_refreshes):
        train(args.align_every)
        x, y = pool[counter[0] % len(pool)]
        v1, lam1, res1 = top_eigenvector(x, y, frozen_running_stats)
        v1_eval, _, _ = top_eigenvector(x, y, eval_mode)
        row = {"refresh": r, "lambda1": round(lam1, 4), "v1_relative_residual": res1}
        for name, opt in estimators.items():
            opt.update_eigenvector(lambda x=x, y=y: loss_fn(net, x, y))
            row[name] = abs(float(opt.eigenvector.double() @ v1))
        official.estimate(x, y)
        v_off = torch.cat([t.reshape(-1) for t in official.v]).double()
        v_off = v_off / v_off.norm()
        row["official"] = abs(float(v_off @ v1))
        row["official_vs_eval_v1"] = abs(float(v_off @ v1_eval))
        rows.append(row)
        print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()),
              flush=True)
    keys = ("paper", "lanczos", "official", "official_vs_eval_v1")
    return {"median": {k: round(statistics.median(r[k] for r in rows), 4) for k in keys},
            "mean": {k: round(statistics.mean(r[k] for r in rows), 4) for k in keys}, "rows": rows}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 first-stage width (64 = standard)")
    ap.add_argument("--p", type=int, default=100, help="refresh interval = steps timed per variant")
    ap.add_argument("--timed-steps", type=int, default=None,
                    help="time this many steps (< p) and extrapolate to p (default: p, measured)")
    ap.add_argument("--repeats", type=int, default=10, help="timed calls per component")
    ap.add_argument("--per-layer", action="store_true", help="also time HVPs per layer type")
    ap.add_argument("--align-width", type=int, default=16)
    ap.add_argument("--align-pretrain", type=int, default=100)
    ap.add_argument("--align-every", type=int, default=20)
    ap.add_argument("--align-refreshes", type=int, default=8)
    ap.add_argument("--align-tol", type=float, default=1e-4)
    ap.add_argument("--align-max-iters", type=int, default=150)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alignment-only", action="store_true", help="run part 3 only")
    args = ap.parse_args(argv)
    device = check_arguments(args, ("batch_size", "width", "repeats", "align_width", "align_pretrain",
                                    "align_every", "align_refreshes", "align_max_iters", "seed"),
                             zero_allowed=("align_pretrain", "seed"), positive=("align_tol",))
    if args.p < 2:
        raise ValueError(f"--p must be >= 2 (the timed steps need one without a refresh), got {args.p}")
    if args.timed_steps is not None and not 2 <= args.timed_steps <= args.p:
        raise ValueError(f"--timed-steps must be in 2..--p ({args.p}), got {args.timed_steps}")
    if args.alignment_only:
        given = [flag for flag, on in (("--per-layer", args.per_layer), ("--timed-steps", args.timed_steps))
                 if on]
        if given:
            raise ValueError(f"{' and '.join(given)}: no effect with --alignment-only (it skips the step timings)")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = _load()
    print(f"load average before: {load_before}; torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, {platform.processor() or platform.machine()}", flush=True)
    g = torch.Generator().manual_seed(args.seed)
    B = args.batch_size
    batches = [(torch.randn(B, 3, 32, 32, generator=g).to(device), torch.randint(10, (B,), generator=g).to(device))
               for _ in range(4)]

    def network(width):
        torch.manual_seed(args.seed)
        return build_model("resnet18", 10, 3, width=width).to(device).train()

    if args.alignment_only:
        align = alignment_study(args, network, device)
        print(f"  median: {align['median']}; mean: {align['mean']}")
        print(json.dumps({"alignment_median": align["median"], "alignment_mean": align["mean"],
                          "alignment_rows": align["rows"], "align_model": f"resnet18(width={args.align_width})",
                          "load_before": load_before, "load_after": _load(),
                          "wall_s": round(time.perf_counter() - started, 1)}))
        return

    comp = hvp_timings(network(args.width), *batches[0], args.repeats)
    ratio = {k[:-2]: v / comp["grad_s"] for k, v in comp.items() if k != "grad_s"}
    print(f"one gradient {comp['grad_s'] * 1e3:.1f} ms; ÷ gradient: " +
          ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()), flush=True)
    layers = per_layer(args.repeats) if args.per_layer else None
    if layers:
        for name, row in layers.items():
            print(f"  HVP ÷ gradient, {name}: double backward {row['double_backward']}, "
                  f"forward-over-reverse {row['forward_over_reverse']}", flush=True)

    run = timed_steps(args, network, batches, device)
    times = run["times"]
    m = args.timed_steps or args.p
    sam_median = statistics.median(times["sam"])
    sam_total = sum(times["sam"]) + (args.p - m) * sam_median
    q_lanczos = DEFAULT_PRODUCTS["lanczos"]
    predicted_excess = {      # refresh step minus a non-refresh step, in gradients
        "paper": 5 * ratio["hvp_double_backward_train"] + ratio["grad_create_graph_train"] - 1,
        "lanczos": q_lanczos * ratio["hvp_double_backward_train"] + ratio["grad_create_graph_train"] - 1,
        "official": 5 * ratio["hvp_double_backward_eval"] + ratio["grad_create_graph_eval"]}
    summary = {}
    for name in VARIANTS[1:]:
        refresh = run["refresh_at"][name]
        plain = [t for i, t in enumerate(times[name]) if i not in refresh]
        excess = sum(times[name][i] for i in refresh) - len(refresh) * statistics.median(plain)
        total = sum(times[name]) + (args.p - m) * statistics.median(plain)
        summary[name] = {
            "over_sam_step_time": round(total / sam_total, 4),
            "nonrefresh_step_over_sam": round(statistics.median(plain) / sam_median, 4),
            "refreshes_timed": len(refresh),
            "refresh_excess_grads": round(excess / max(len(refresh), 1) / comp["grad_s"], 2),
            "refresh_excess_predicted_grads": round(predicted_excess[name], 2)}
    throughput = {name: B * m / sum(t) for name, t in times.items()}
    print(f"{m} timed steps each (p = {args.p}{'' if m == args.p else ', extrapolated'}), batch {B}: "
          + ", ".join(f"{k} {v:.1f}" for k, v in throughput.items()) + " images/s", flush=True)
    for name, s in summary.items():
        print(f"  {name}: ÷ SAM {s['over_sam_step_time']:.4f}; non-refresh step ÷ SAM's "
              f"{s['nonrefresh_step_over_sam']:.4f}; refresh excess {s['refresh_excess_grads']} gradients "
              f"(components predict {s['refresh_excess_predicted_grads']})", flush=True)
    print(f"alignment |<v, v1>| (ResNet-18 width {args.align_width}, after {args.align_pretrain} SAM steps, "
          f"a refresh every {args.align_every} steps):", flush=True)
    align = alignment_study(args, network, device)
    print(f"  median: {align['median']}; mean: {align['mean']}")
    load_after = _load()
    print(f"load average after: {load_after}; wall {time.perf_counter() - started:.0f} s")
    print(json.dumps({
        "eigen_sam_over_sam_step_time": summary["paper"]["over_sam_step_time"],
        "lanczos_q": q_lanczos,
        "over_sam_step_time": {k: s["over_sam_step_time"] for k, s in summary.items()},
        "steps": summary,
        "alignment_median": align["median"], "alignment_mean": align["mean"],
        "alignment_rows": align["rows"],
        "over_grad": {k: round(v, 3) for k, v in ratio.items()}, "grad_ms": round(comp["grad_s"] * 1e3, 2),
        "per_layer_hvp_over_grad": layers,
        "images_per_s": {k: round(v, 2) for k, v in throughput.items()},
        "p": args.p, "timed_steps": m, "batch_size": B, "model": f"resnet18(width={args.width})",
        "align_model": f"resnet18(width={args.align_width})", "device": str(device),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "load_before": load_before, "load_after": load_after,
        "wall_s": round(time.perf_counter() - started, 1),
    }))


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.eigensam")
