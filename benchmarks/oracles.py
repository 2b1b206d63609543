"""Cost of the oracles and of one step of each dynamics, in units of one plain gradient.

Run:  python -m benchmarks.oracles [--batch-size 128] [--n-batches 8] [--repeats 30]
      [--examples 4096] [--block-sizes 1,16,64,256] [--block-repeats 5]

"One gradient" is the plain PyTorch gradient of the same ``nn.Module`` on the same
minibatch (``torch.autograd.grad`` of ``loss`` on its parameters); the oracles are those
of docs/math.md §2. Model: the paper's MLP 784-784-10 with GeLU. Data: the first ``--examples``
(default 4,096; at least the batch size) MNIST training images when MNIST is available
locally (``--data-dir``), else random tensors of MNIST's shape (the cost does not
depend on the pixel values; the output says which was used). Every figure is the
median of ``--repeats`` timed calls after warm-up, all measured in one run, and the
last line is a JSON object with the ratios.

Block sizes: the per-sample cost of one v² (``ModuleProblem.taylor``, SAM rule, ρ = 0.2)
when one call holds M·K (trajectory, minibatch) pairs, x of shape (M, 1, d) and K = 4
minibatches per trajectory (M·K = 1: one pair), looped (``block="loop"``) and batched
(``block="auto"``, the default block memory), on the weak-error ``quick-cpu`` MLP
(784-32-10, B = 32) and on the 784-784-10 MLP (B = ``--batch-size``). Each figure is
the median of ``--block-repeats`` calls divided by M·K, as wall time and as this
process's CPU time (the steadier figure on a shared machine).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import time

import torch
from torch import nn

from benchmarks.timing import median_seconds
from sdesam.cli import prog_name
from sdesam.data import DatasetNotFoundError, check_data_dir
from sdesam.parallel import check_device
from sdesam.problem import ModuleProblem
from sdesam.registry import make_dynamics

DEFAULT_EXAMPLES = 4096     #: MNIST-shaped training examples of ``paper_mlp`` (``--examples``)


def check_arguments(args, counts=(), zero_allowed=(), positive=()) -> torch.device:
    """Refuse, before anything is measured, what a benchmark cannot use (ValueError naming the
    flag): an integer option of ``counts`` below 1 (below 0 for ``zero_allowed``), a number of
    ``positive`` that is not finite and > 0, ``--threads`` below 1, a ``--data-dir`` that is
    not a directory, a ``--device`` this machine lacks. Returns the device."""
    for name in counts:
        least = 0 if name in zero_allowed else 1
        if getattr(args, name) < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(args, name)}")
    for name in positive:
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
    if getattr(args, "threads", None) is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_data_dir(getattr(args, "data_dir", None))
    return check_device(args.device)


def _mnist_like(n: int, data_dir, seed: int):
    from sdesam.data import load_mnist
    try:
        ds = load_mnist(data_dir, download=False)
    except DatasetNotFoundError:                        # MNIST absent here: MNIST-shaped noise
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 784, generator=g), torch.randint(10, (n,), generator=g), "synthetic (MNIST shapes)"
    x = ds.train_images[:n].reshape(-1, 784).float() / 255.0
    return x, ds.train_labels[:n], "MNIST"


def _block_sizes(text: str) -> list[int]:
    """``--block-sizes``: M·K values, each 1..4 (K = M·K, M = 1) or a multiple of 4 (K = 4)."""
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--block-sizes must be comma-separated integers, got {text!r}") from None
    for n in sizes:
        if n < 1 or (n > 4 and n % 4):
            raise ValueError(f"--block-sizes: each M·K must be 1..4 or a multiple of 4 (K = 4 minibatches), got {n}")
    return sizes


def paper_mlp(batch_size: int, data_dir, device: torch.device, examples: int = DEFAULT_EXAMPLES):
    """The benchmarks' problem: the paper's MLP 784-784-10 (GeLU) on the first ``examples``
    MNIST training images (MNIST-shaped noise when MNIST is absent), initialised from seed 0.

    Returns (model, problem, plain_gradient, (X, Y, source)): ``plain_gradient()`` takes
    ``torch.autograd.grad`` of the module's loss on the first minibatch (the unit of every
    ratio), ``source`` says which data were used."""
    torch.manual_seed(0)
    X, Y, source = _mnist_like(examples, data_dir, 0)
    model = nn.Sequential(nn.Linear(784, 784), nn.GELU(), nn.Linear(784, 10)).to(device)
    problem = ModuleProblem(model, "cross_entropy", X, Y, batch_size, device=device)
    params = list(model.parameters())
    xb, yb = problem.inputs[:batch_size], problem.targets[:batch_size]

    def plain_gradient():
        torch.autograd.grad(nn.functional.cross_entropy(model(xb), yb), params)

    return model, problem, plain_gradient, (X, Y, source)


def main(argv=None):
    ap = argparse.ArgumentParser(prog=prog_name("python -m benchmarks.oracles"), description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-batches", type=int, default=8, help="K minibatches per SDE step")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES,
                    help=f"MNIST-shaped training examples to load (default {DEFAULT_EXAMPLES}; at least --batch-size)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block-sizes", default="1,16,64,256", help="M·K values for the block lines ('' skips them)")
    ap.add_argument("--block-repeats", type=int, default=5)
    args = ap.parse_args(argv)
    try:
        device = check_arguments(args, ("batch_size", "repeats", "examples", "block_repeats"))
        if args.n_batches < 2:
            raise ValueError(f"--n-batches must be >= 2 (K, for a covariance), got {args.n_batches}")
        if args.examples < args.batch_size:
            raise ValueError(f"--examples must be at least --batch-size ({args.batch_size}), got {args.examples}")
        blocks = _block_sizes(args.block_sizes)
        if blocks and args.examples < 32:
            raise ValueError(f"--examples must be >= 32 for the block lines (the quick-cpu MLP's B = 32), "
                             f"got {args.examples}; --block-sizes '' skips them")
    except ValueError as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    B = args.batch_size
    model, problem, plain_gradient, (X, Y, source) = paper_mlp(B, args.data_dir, device, args.examples)
    generic = ModuleProblem(model, "cross_entropy", X, Y, B, device=device, oracle="autograd")
    batch = torch.arange(B, device=device)[None]
    x = problem.x0

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
        "examples": X.shape[0],
        "data": source, "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "gradient_ms": g * 1e3,
        "v2_over_gradient": t["v2_sample"] / g,
        "v2_generic_autograd_over_gradient": t["v2_sample_generic_autograd"] / g,
        "sam_step_over_gradient": t["sam_step"] / g,
        "sde3_step_over_gradient": t["sde3_step"] / g,
        "sde3_step_over_gradient_per_minibatch": t["sde3_step"] / g / args.n_batches,
    }
    if blocks:
        print(f"\nper-sample v² cost with M·K pairs per call (K = 4 or M·K if smaller), ms; "
              f"block_memory = default ({problem.block_memory / 2**20:.0f} MiB)")
        print(f"{'model':<28}{'M·K':>6}{'looped':>10}{'batched':>10}{'speed-up':>10}{'loop CPU':>11}"
              f"{'batch CPU':>11}{'block':>7}{'faults/pair':>13}")
        result["blocks"] = []
        for label, hidden, bs in [("quick-cpu 784-32-10, B=32", 32, 32),
                                  (f"784-784-10, B={B}", 784, B)]:
            result["blocks"] += block_lines(label, hidden, bs, X, Y, blocks, args.block_repeats, device)
    print(json.dumps(result))
    return result


def block_lines(label, hidden, batch_size, X, Y, sizes, repeats, device) -> list[dict]:
    """Per-sample v² cost, looped and batched, for each M·K in ``sizes`` (printed and returned)."""
    from sdesam.models import MLP
    torch.manual_seed(0)
    model = MLP(784, (hidden,), 10, activation="gelu")
    batched = ModuleProblem(model, "cross_entropy", X, Y, batch_size, device=device)
    looped = ModuleProblem(model, "cross_entropy", X, Y, batch_size, device=device, block="loop")
    gen = torch.Generator(device=device).manual_seed(0)
    rows = []
    for n in sizes:
        K = min(4, n)
        M = n // K
        x = batched.x0.expand(M, 1, -1).clone()
        batches = batched.sample_batches(M * K, gen).view(M, K, batch_size)
        t, cpu, faults = {}, {}, {}
        for name, p in [("looped", looped), ("batched", batched)]:
            t[name], cpu[name], faults[name] = _wall_and_cpu(
                lambda p=p, x=x, batches=batches: p.taylor(x, batches, "sam", 0.2, order=2), repeats, device)
        row = {"model": label, "pairs": M * K, "block_size": batched.block_size,
               **{f"{k}_ms": t[k] / (M * K) * 1e3 for k in t}, **{f"{k}_cpu_ms": cpu[k] / (M * K) * 1e3 for k in cpu},
               **{f"{k}_minor_faults_per_pair": faults[k] / (M * K) for k in faults}}
        print(f"{label:<28}{M * K:>6}{row['looped_ms']:>10.3f}{row['batched_ms']:>10.3f}"
              f"{t['looped'] / t['batched']:>10.2f}{row['looped_cpu_ms']:>11.3f}{row['batched_cpu_ms']:>11.3f}"
              f"{batched.block_size:>7}{row['batched_minor_faults_per_pair']:>13.0f}")
        rows.append(row)
    return rows


def _wall_and_cpu(fn, repeats: int, device) -> tuple[float, float, float]:
    """Medians of the wall time, of this process's CPU time (user + system) and of its
    minor page faults per call, after one warm-up call. On a shared machine the CPU time
    is the steadier figure; the faults count first touches of freshly mapped memory
    (the outputs of a large block: docs/batched_oracles.md)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    fn()
    sync()
    walls, cpus, faults = [], [], []
    for _ in range(repeats):
        f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        w, c = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
    return statistics.median(walls), statistics.median(cpus), statistics.median(faults)


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.oracles")
