"""Curvature benchmark: products needed for λ₁ by Lanczos vs power iteration; HVP cost.

    python -m benchmarks.curvature [--data mnist | synthetic | npz:PATH] [--quick]

On the 784-784-10 GeLU MLP (float32), with the Hessian of the mean cross-entropy over a
fixed subset (default 1024 examples in batches of 128, eval mode):

1. reference λ₁: Lanczos on a float64 copy of the model until the relative Ritz
   residual is ≤ 1e-8;
2. for several random start vectors, the number of Hessian-vector products (operator
   products over the whole subset) after which the float32 Lanczos and power-iteration
   estimates of λ₁ are, and stay, within 1e-3 relative of the reference; and where their
   own stopping rules would stop (Lanczos: relative residual ≤ 1e-3; power iteration:
   relative change ≤ 1e-3 and ≤ 1e-5), with the error there;
3. alignment (paper Sec. 4.3) of the q-th power iterate with the reference top
   eigenvector for q = 1..10 from each cold start (cf. paper Fig. 5);
4. time of one HVP over one batch of 128 divided by the time of one plain gradient
   (``torch.autograd.grad`` of the module's loss on its parameters), for each HVP
   method, and the time of one operator product over the whole subset.

Data: ``--data mnist`` (default) is real MNIST (``sdesam.data.load_dataset("mnist")``,
offline from ``$SDESAM_DATA`` / ``~/.cache/sdesam`` once fetched): a random subset of
the 60k training images (seed ``--seed``), pixels scaled to [0, 1] and standardised with
the training mean/std as in Figure 2. ``--data synthetic`` draws MNIST-shaped inputs
(uniform on {0, 1/256, …, 255/256}, 784 pixels) with labels from a random linear
teacher — a labelled stand-in, not MNIST. ``--data npz:PATH`` reads arrays ``x`` (N ×
784 or N × 1 × 28 × 28, floats) and ``y`` (N labels in 0..9). In every case the MLP is
first trained ``--train-steps`` SGD steps on the data so that the Hessian is not that
of the initialisation.

The last line printed is one JSON object with all the numbers.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time

import torch
from torch import nn

from benchmarks.oracles import check_arguments
from benchmarks.timing import median_seconds
from sdesam.curvature import HessianOperator, alignment, lanczos, power_method

#: what ``--quick`` sets (the other values of these options are refused with it)
QUICK = {"examples": 256, "train_examples": 512, "train_steps": 20, "starts": 1, "lanczos_iters": 40,
         "power_iters": 60, "reps": 3, "ref_tol": 1e-6}


def make_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 784), nn.GELU(), nn.Linear(784, 10))


def load_data(spec: str, n: int, seed: int, data_dir=None):
    if spec == "mnist":
        from sdesam.data import load_dataset
        train, _ = load_dataset("mnist", data_dir)
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(train), generator=g)[:n]
        x = (train.images[idx].reshape(n, 784).float() / 255.0 - train.mean[0]) / train.std[0]
        return x, train.labels[idx], (f"real MNIST: random subset of {n} of the {len(train)} training "
                                      "images, pixel/255 standardised with the training mean/std")
    if spec == "synthetic":
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 256, (n, 784), generator=g).float() / 256
        teacher = torch.randn(784, 10, generator=g)
        y = ((x - 0.5) @ teacher).argmax(1)
        return x, y, "synthetic MNIST-shaped data (uniform pixels, random linear teacher labels)"
    if spec.startswith("npz:"):
        import numpy as np
        path = spec[4:]
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise ValueError(f"{path} lacks the array(s) {', '.join(missing)} (it holds {', '.join(z.files)})")
            x = torch.as_tensor(z["x"], dtype=torch.float32).reshape(-1, 784)
            y = torch.as_tensor(z["y"], dtype=torch.long).reshape(-1)
        if len(x) != len(y):
            raise ValueError(f"{path}: x holds {len(x)} examples, y {len(y)} labels")
        if len(x) < n:
            raise SystemExit(f"{path} holds {len(x)} examples, fewer than the {n} requested")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:n]
        return x[idx], y[idx], f"arrays x, y from {path} (random subset of {n})"
    raise ValueError(f"--data must be 'mnist', 'synthetic' or 'npz:PATH', got {spec!r}")


def median_ms(fn, reps: int, warmup: int = 3, device: str = "cpu") -> float:
    return 1e3 * median_seconds(fn, reps, warmup, device)


def first_stay_within(history: torch.Tensor, ref: float, rel: float) -> int | None:
    """Products after which the estimate is within rel of ref and stays there."""
    ok = (history - ref).abs() <= rel * abs(ref)
    if not bool(ok[-1]):
        return None
    bad = (~ok).nonzero()
    return 1 if len(bad) == 0 else int(bad[-1]) + 2


def power_stop(history: torch.Tensor, tol: float) -> int | None:
    for t in range(1, len(history)):
        if abs(history[t] - history[t - 1]) <= tol * abs(history[t]):
            return t + 1
    return None


def measure_products(args, model, loss_fn, batches, d) -> dict:
    """Steps 2-3: reference λ1, products to reach it, alignment of power iterates."""
    # 2. reference λ1 in float64
    m64 = copy.deepcopy(model).double()
    op64 = HessianOperator.from_module(m64, loss_fn, [(a.double(), b) for a, b in batches])
    t0 = time.perf_counter()
    ref = lanczos(op64, k=2, tol=args.ref_tol, max_iters=300, generator=torch.Generator().manual_seed(99))
    t_ref = time.perf_counter() - t0
    lam1, lam2 = ref.eigenvalues.tolist()
    v1 = ref.eigenvectors[:, 0].float()
    print(f"reference (float64 Lanczos, tol {args.ref_tol:g}): λ1 = {lam1:.8g}, λ2 = {lam2:.8g} "
          f"(gap (λ1-λ2)/λ1 = {(lam1 - lam2) / lam1:.3g}), residual {ref.residuals[0].item():.2e}, "
          f"converged={ref.converged}, {ref.num_matvecs} products, {t_ref:.1f} s")
    del op64, m64

    op = HessianOperator.from_module(model, loss_fn, batches)
    runs = []
    for s in range(args.starts):
        v0 = torch.randn(d, generator=torch.Generator().manual_seed(1000 + s))
        lz = lanczos(op, k=1, tol=1e-12, max_iters=args.lanczos_iters, v0=v0, check_determinism=(s == 0))
        hist = lz.history[:, 0]
        rh = lz.residual_history[:, 0]
        lz_stop = next((j + 1 for j in range(len(rh)) if rh[j] <= args.rel * abs(hist[j])), None)
        aligns = []
        pm = power_method(op, tol=1e-8, max_iters=args.power_iters, v0=v0, check_determinism=False,
                          callback=lambda t, v, th, aligns=aligns: aligns.append(alignment(v, v1).item()))
        run = {
            "start": s,
            "lanczos_hvps_to_rel": first_stay_within(hist, lam1, args.rel),
            "lanczos_rule_stop_hvps": lz_stop,
            "lanczos_rule_stop_rel_err": None if lz_stop is None else abs(hist[lz_stop - 1].item() - lam1) / lam1,
            "lanczos_final_rel_err": abs(hist[-1].item() - lam1) / lam1,
            "power_hvps_to_rel": first_stay_within(pm.history, lam1, args.rel),
            "power_final_rel_err": abs(pm.history[-1].item() - lam1) / lam1,
            "lanczos_final_alignment": alignment(lz.eigenvectors[:, 0], v1).item(),
            "power_alignment_q1_to_10": aligns[:10],
        }
        for tol in (1e-3, 1e-5):
            st = power_stop(pm.history, tol)
            run[f"power_rule_{tol:g}_stop_hvps"] = st
            run[f"power_rule_{tol:g}_stop_rel_err"] = (None if st is None
                                                       else abs(pm.history[st - 1].item() - lam1) / lam1)
        runs.append(run)
        print(f"start {s}: Lanczos within {args.rel:g} after {run['lanczos_hvps_to_rel']} HVPs "
              f"(its residual rule stops at {lz_stop}, error {run['lanczos_rule_stop_rel_err']}); "
              f"power iteration after {run['power_hvps_to_rel']} HVPs (of max {args.power_iters}; "
              f"rel-change rule 1e-3 stops at {run['power_rule_0.001_stop_hvps']} with error "
              f"{run['power_rule_0.001_stop_rel_err']}, 1e-5 at {run['power_rule_1e-05_stop_hvps']} "
              f"with error {run['power_rule_1e-05_stop_rel_err']})")

    # 3. alignment of power iterates with v1 (cold start), cf. paper Fig. 5
    for r in runs:
        print(f"start {r['start']}: alignment of the q-th power iterate with v1, q = 1..10: "
              + ", ".join(f"{a:.3f}" for a in r["power_alignment_q1_to_10"])
              + f"; Lanczos vector at the end: {r['lanczos_final_alignment']:.6f}")


    def med(key):
        vals = [r[key] for r in runs]
        return None if any(v is None for v in vals) else statistics.median(vals)

    return {
        "lambda1_ref": lam1, "lambda2_ref": lam2, "ref_residual": ref.residuals[0].item(),
        "ref_hvps": ref.num_matvecs, "rel_target": args.rel,
        "lanczos_hvps_to_rel_median": med("lanczos_hvps_to_rel"),
        "power_hvps_to_rel_median": med("power_hvps_to_rel"),
        "runs": runs,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="mnist", help="'mnist' (real, default), 'synthetic' "
                    "(MNIST-shaped stand-in) or 'npz:PATH'")
    ap.add_argument("--data-dir", default=None, help="MNIST location (default $SDESAM_DATA or ~/.cache/sdesam)")
    ap.add_argument("--examples", type=int, default=1024, help="fixed subset for the Hessian")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--train-examples", type=int, default=8192)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--starts", type=int, default=5, help="random start vectors")
    ap.add_argument("--rel", type=float, default=1e-3, help="target relative accuracy of λ1")
    ap.add_argument("--ref-tol", type=float, default=1e-8)
    ap.add_argument("--lanczos-iters", type=int, default=80)
    ap.add_argument("--power-iters", type=int, default=300)
    ap.add_argument("--reps", type=int, default=30, help="timing repetitions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    ap.add_argument("--timing-only", action="store_true", help="skip the eigenvalue runs (steps 2-3)")
    args = ap.parse_args(argv)
    check_arguments(args, ("examples", "batch_size", "train_examples", "train_steps", "starts", "lanczos_iters",
                           "power_iters", "reps", "seed"), zero_allowed=("train_steps", "seed"),
                    positive=("lr", "rel", "ref_tol"))
    if not (args.data in ("mnist", "synthetic") or args.data.startswith("npz:")):
        raise ValueError(f"--data must be 'mnist', 'synthetic' or 'npz:PATH', got {args.data!r}")
    if args.data.startswith("npz:") and not os.path.isfile(args.data[4:]):
        raise ValueError(f"--data {args.data}: no such file")
    if args.data_dir is not None and args.data != "mnist":
        raise ValueError(f"--data-dir is read only with --data mnist, not with --data {args.data}")
    if args.quick:
        changed = [f"--{k.replace('_', '-')}" for k in QUICK if getattr(args, k) != ap.get_default(k)]
        if changed:
            raise ValueError(f"--quick sets {', '.join(changed)} itself; drop them or --quick")
        for key, value in QUICK.items():
            setattr(args, key, value)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, device {args.device}, "
          f"{os.cpu_count()} CPUs, 1-min load average {load} (timings are only comparable on an idle machine)")
    n_all = max(args.train_examples, args.examples)
    x, y, source = load_data(args.data, n_all, args.seed, args.data_dir)
    x, y = x.to(args.device), y.to(args.device)
    print(f"data: {source}")
    model = make_mlp(args.seed).to(args.device)
    d = sum(p.numel() for p in model.parameters())
    loss_fn = nn.CrossEntropyLoss()

    # 1. move away from the initialisation
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    g = torch.Generator(device=args.device).manual_seed(args.seed + 1)
    xt, yt = x[:args.train_examples], y[:args.train_examples]
    for _ in range(args.train_steps):
        idx = torch.randint(0, len(xt), (args.batch_size,), generator=g, device=args.device)
        opt.zero_grad()
        loss_fn(model(xt[idx]), yt[idx]).backward()
        opt.step()
    model.eval()
    xs, ys = x[:args.examples], y[:args.examples]
    batches = [(xs[i:i + args.batch_size], ys[i:i + args.batch_size])
               for i in range(0, args.examples, args.batch_size)]
    with torch.no_grad():
        subset_loss = loss_fn(model(xs), ys).item()
    print(f"MLP 784-784-10 GeLU, d = {d}, {args.train_steps} SGD steps (lr {args.lr}); "
          f"Hessian on a fixed subset of {args.examples} examples in {len(batches)} batches "
          f"of {args.batch_size}; subset loss {subset_loss:.4f}")

    products = {} if args.timing_only else measure_products(args, model, loss_fn, batches, d)

    # 4. timing
    xb, yb = batches[0]
    params = [p for p in model.parameters() if p.requires_grad]

    def plain_grad():
        return torch.autograd.grad(loss_fn(model(xb), yb), params)

    vb = torch.randn(d, generator=torch.Generator().manual_seed(3)).to(args.device)
    ops = {
        "double_backward": HessianOperator.from_module(model, loss_fn, [(xb, yb)]),
        "forward_over_reverse": HessianOperator.from_module(model, loss_fn, [(xb, yb)],
                                                            hvp_method="forward_over_reverse"),
        "double_backward_cached_graph": HessianOperator.from_module(model, loss_fn, [(xb, yb)],
                                                                    cache_graph=True),
    }
    t_grad = median_ms(plain_grad, args.reps, device=args.device)
    t_hvp = {k: median_ms(lambda o=o: o @ vb, args.reps, device=args.device) for k, o in ops.items()}
    op = HessianOperator.from_module(model, loss_fn, batches)
    t_full = median_ms(lambda: op @ vb, max(3, args.reps // 5), device=args.device)
    print(f"plain gradient (B={args.batch_size}): {t_grad:.2f} ms; HVP: " +
          ", ".join(f"{k} {t:.2f} ms ({t / t_grad:.2f}x)" for k, t in t_hvp.items()) +
          f"; one operator product over {args.examples} examples: {t_full:.1f} ms")

    out = {
        "benchmark": "curvature", "data": args.data, "data_description": source,
        "synthetic": args.data == "synthetic",
        "model": "mlp-784-784-10-gelu", "d": d, "examples": args.examples,
        "batch_size": args.batch_size, "train_steps": args.train_steps,
        "threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
        "load_average_1min_at_start": load,
        **products,
        "grad_ms": t_grad, "hvp_ms": t_hvp,
        "hvp_over_grad": {k: t / t_grad for k, t in t_hvp.items()},
        "operator_product_ms": t_full,
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.curvature")
