"""Cost of one Euler step of the eigenvector-driven SDEs (Eq. 5, Eq. 6, the Eigen-SAM SDE)
next to SAM-SDE3's, in units of one plain gradient.

Run:  python -m benchmarks.causal [--n-batches 8] [--repeats 5] [--eig-tol 1e-3]

Model, data and "one gradient" as in ``benchmarks.oracles`` (the MLP 784-784-10 GeLU,
B = 128, the plain ``autograd.grad`` of the module). An Eq. 5 step at K minibatches
costs SAM-SDE3's K Taylor vectors (with components), plus per minibatch a top
eigenpair of H_γ by batched Lanczos (``sdesam.curvature.batched_lanczos``: the K
recurrences in lockstep, k = 2, residual ≤ eig_tol·‖H_γ‖, warm-started from the previous
step's vector of the same slot, partial reorthogonalisation, in the input-span
coordinates of ``sdesam.input_span``) and one more Taylor call with ε = v₁ for
∇³f[v₁, v₁]. The Lanczos products dominate and depend on the tolerance and the warm
start, so the Hessian-vector products per step and the time of one product (in a block
of K, as Lanczos calls them, in full and in span coordinates) are reported next to the
times, and each step's ratio to SAM-SDE3's. Steps are timed in sequence (each
warm-started from the one before), the three dynamics in turn, one step each per round,
``--repeats`` rounds; medians over the rounds. A last line times one cold eigen-solve
of the K minibatch Hessians at x0 in full and in span coordinates (same start vectors).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from benchmarks.oracles import DEFAULT_EXAMPLES, check_arguments, paper_mlp
from benchmarks.timing import median_seconds
from sdesam.eigenpairs import minibatch_top_eigenpairs
from sdesam.experiment import keep_freed_memory
from sdesam.input_span import InputSpanRows
from sdesam.registry import make_dynamics


def _interleaved_step_times(dynamics: dict, repeats: int, warmup: int) -> dict:
    """{name: (median step seconds, median ratio to the first dynamics' step, products per
    step)}: the dynamics step in turn, one step each per round, so that every ratio compares
    steps timed seconds apart (single-step times on a shared machine drift by up to 2×)."""
    states = {}
    for name, dyn in dynamics.items():
        states[name] = dyn.init_state(seed=0)
        dyn.advance(states[name], warmup)
    times = {name: [] for name in dynamics}
    hvps = {name: [] for name in dynamics}
    for _ in range(repeats):
        for name, dyn in dynamics.items():
            n0 = len(getattr(dyn, "eigen_history", []))
            t0 = time.perf_counter()
            dyn.advance(states[name], 1)
            times[name].append(time.perf_counter() - t0)
            hist = getattr(dyn, "eigen_history", [])[n0:]
            last = getattr(dyn, "last_eigenpairs", None)
            hvps[name].append(sum(r["eig_hvps"] for r in hist) if hist else (last.num_hvps if last is not None else 0))
    first = next(iter(dynamics))
    return {name: (statistics.median(t), statistics.median(a / b for a, b in zip(t, times[first])), hvps[name])
            for name, t in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--n-batches", type=int, default=8, help="K minibatches per SDE step")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--eig-tol", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    device = check_arguments(args, ("batch_size", "repeats"), positive=("eig_tol",))
    if args.n_batches < 2:
        raise ValueError(f"--n-batches must be >= 2 (K, for a covariance), got {args.n_batches}")
    if args.batch_size > DEFAULT_EXAMPLES:
        raise ValueError(f"--batch-size must be <= {DEFAULT_EXAMPLES} (the examples loaded), got {args.batch_size}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        keep_freed_memory()                 # as every experiment command does on CPU
    B, K = args.batch_size, args.n_batches
    _, problem, plain_gradient, (_, _, source) = paper_mlp(B, args.data_dir, device)
    hvp = problem.hvp_at(problem.x0, torch.arange(B, device=device))
    v = torch.randn(problem.dim, generator=torch.Generator().manual_seed(1)).to(device)
    block = torch.arange(K * B, device=device).reshape(K, B) % problem.n_train
    rows = torch.arange(K, device=device)
    hvp_block = problem.hvp_rows(problem.x0.expand(K, -1), block)
    V = v.expand(K, -1).contiguous()

    common = {"eta": 0.01, "rho": 0.2, "n_batches": K}
    eig = {"eig_method": "lanczos", "eig_tol": args.eig_tol}
    g1 = median_seconds(plain_gradient, 30, 5, device)
    t_hvp = median_seconds(lambda: hvp(v), 30, 5, device)
    t_block = median_seconds(lambda: hvp_block(V, rows), 10, 3, device) / K
    span = InputSpanRows(problem, problem.x0.expand(K, -1), block) if InputSpanRows.applies(problem, B) else None
    if span is not None:
        Z = span.reduce(V)
        t_span = median_seconds(lambda: span.matvec(Z, rows), 10, 3, device) / K
    solves = {}                                     # input_span → (seconds, products) of a cold solve
    for in_span in ((True, False) if span is not None else (False,)):
        last = {}

        def solve(in_span=in_span):
            last["eig"] = minibatch_top_eigenpairs(problem, problem.x0, block, method="lanczos", tol=args.eig_tol,
                                                   input_span=in_span, generator=torch.Generator().manual_seed(0))
        solves[in_span] = (median_seconds(solve, 3, 1, device), last["eig"].num_hvps)
    subset = torch.arange(1024, device=device)
    steps = _interleaved_step_times({
        "sam_sde3": make_dynamics("sam_sde3", problem, **common),
        "aligned_sde5": make_dynamics("aligned_sde5", problem, **common, **eig),
        "eigen_sam_sde": make_dynamics("eigen_sam_sde", problem, **common, **eig, hessian_subset=subset)},
        args.repeats, 1)
    g = min(g1, median_seconds(plain_gradient, 30, 5, device))
    print(f"MLP 784-784-10 GeLU, B={B}, K={K}, data: {source}, device: {device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}")
    print(f"plain gradient {g * 1e3:.2f} ms; one minibatch HVP (hvp_at) {t_hvp * 1e3:.2f} ms = "
          f"{t_hvp / g:.2f} gradients; in a block of K={K} (hvp_rows, as Lanczos calls it) "
          f"{t_block * 1e3:.2f} ms = {t_block / g:.2f} gradients per product" +
          ("" if span is None else f"; in input-span coordinates (d̃ = {span.dim:,} of {problem.dim:,}) "
           f"{t_span * 1e3:.2f} ms = {t_span / g:.2f} gradients"))
    print(f"{'one Euler step':<36}{'ms':>10}{'/ gradient':>12}{'/ SAM-SDE3':>12}{'Lanczos HVPs/step':>20}")
    for name, (sec, ratio, hv) in steps.items():
        hv_s = "-" if not any(hv) else f"{statistics.median(hv):.0f} ({min(hv)}-{max(hv)})"
        print(f"{name + f', K={K}':<36}{sec * 1e3:>10.1f}{sec / g:>12.1f}{ratio:>12.1f}{hv_s:>20}")
    print("(/ SAM-SDE3: median over the rounds of the step's time over the SAM-SDE3 step of the same round)")
    print(f"one cold eigen-solve of the K={K} minibatch Hessians at x0 (tol {args.eig_tol}): " +
          "; ".join(f"{'input-span' if k else 'full'} coordinates {sec * 1e3:.0f} ms, {n} products"
                    for k, (sec, n) in solves.items()))
    result = {"benchmark": "causal", "model": "mlp-784-784-10-gelu", "batch_size": B, "n_batches": K,
              "eig_tol": args.eig_tol, "data": source, "device": str(device), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "gradient_ms": g * 1e3, "hvp_over_gradient": t_hvp / g,
              "block_hvp_over_gradient": t_block / g,
              "span_block_hvp_over_gradient": None if span is None else t_span / g,
              **{f"cold_solve_{'span' if k else 'full'}_ms": sec * 1e3 for k, (sec, _) in solves.items()},
              **{f"{n}_step_over_gradient": sec / g for n, (sec, _, _) in steps.items()},
              **{f"{n}_step_over_sam_sde3": ratio for n, (_, ratio, _) in steps.items() if n != "sam_sde3"},
              "aligned_sde5_lanczos_hvps_per_step": steps["aligned_sde5"][2],
              "eigen_sam_sde_hessian_examples": 1024}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.causal")
