"""Cost of the toy problems' closed-form oracles against the generic autograd path.

    python -m benchmarks.toys [threads]

Seconds per exact SAM-SDE3 drift + diffusion evaluation on M trajectories of the
``logcosh`` toy, closed form (``sdesam.toys.GLMProblem``) against ``FunctionProblem``'s
autograd, interleaved, best of the repeats; prints one JSON object.
"""
from __future__ import annotations

import argparse
import json

import torch

from sdesam.toys import DTYPE, logcosh_problem


def _benchmark(M: int = 10_000, repeats: int = 5) -> dict:
    """Seconds per exact SAM-SDE3 drift + diffusion evaluation (``drift_and_factor``) on M
    trajectories of the ``logcosh`` problem: closed form against the generic autograd
    path of ``FunctionProblem``, interleaved, best of ``repeats`` (the measurement quoted
    in docs/results/weak_error.md)."""
    import time

    from sdesam.sde import SAMSDE3

    problem = logcosh_problem()
    y = problem.x0 + 0.1 * torch.randn(M, problem.dim, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    sdes = {"closed_form": SAMSDE3(problem, 0.01, 0.2, n_batches="exact"),
            "autograd": SAMSDE3(problem.as_function_problem(), 0.01, 0.2, n_batches="exact")}
    times = {k: [] for k in sdes}
    for i in range(repeats + 1):
        for k, sde in sdes.items():
            sde._cache = None
            t0 = time.perf_counter()
            sde.drift_and_factor(0.0, y)
            if i:                                              # the first round warms up
                times[k].append(time.perf_counter() - t0)
    out = {k: min(v) for k, v in times.items()}
    out["speedup"] = out["autograd"] / out["closed_form"]
    out["M"], out["n_minibatches"] = M, problem.num_minibatches()
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.toys", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("threads", nargs="?", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    result = {"torch_threads": torch.get_num_threads(), **_benchmark()}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.toys")
