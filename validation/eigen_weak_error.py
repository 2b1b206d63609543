"""Weak error of the Eigen-SAM SDE against the ideal Eigen-SAM, as Theorem 4.1 is checked
for SAM-SDE3 (docs/eigen_sam_sde.md).

    python -m validation.eigen_weak_error --out DIR [any option of validation.weak_error's eta mode]

The η sweep of ``validation.weak_error`` (same toy, grid ρ = c·η^{1/3}, horizon, exact
minibatch enumeration, Euler sub-steps, trajectories, bootstrap intervals: its
``sweep_eta`` and outputs), with the discrete process replaced by the ideal Eigen-SAM
(Eq. 1 with ε_γ = u_γ + α·sign⟨g_γ, v⟩·v⊥ and the exact top eigenvector v of the
full-batch Hessian every step; α = 0.2, the classes' default) and two models:

* ``eigen_sam_sde``: the Eigen-SAM SDE (same α, same eigenvector source) — expected
  slope 1 if the derivation holds;
* ``sam_sde3``: SAM's own SDE, a control that ignores the α term — its error against
  the ideal Eigen-SAM should not vanish like η (the α·v⊥ term moves the drift by O(ρα)).

Outputs: ``results.json``, ``blocks.npz``, ``weak_error.png`` and a printed table, as
``validation.weak_error`` writes them.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from sdesam.parallel import init_comm

from . import weak_error
from .experiment import sweep_eta

__all__ = ["main", "MODELS"]

#: label → core dynamics name; the discrete process is ``ideal_eigen_sam``
MODELS = ("sam_sde3", "eigen_sam_sde")


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    from sdesam.cli import prog_name
    ap = argparse.ArgumentParser(prog=prog_name("python -m validation.eigen_weak_error"),
                                 description=__doc__.split("\n\n")[0],
                                 epilog="Every other option is validation.weak_error's (--mode eta): "
                                        "python -m validation.weak_error --help lists them.")
    ap.add_argument("--out", default="eigen_weak_error_out")
    ap.add_argument("--no-progress", action="store_true")
    args, rest = ap.parse_known_args(argv)
    wargs = weak_error.parse_args(["--mode", "eta", "--out", args.out, *rest,
                                   *(["--no-progress"] if args.no_progress else [])])
    wargs.argv = argv
    if wargs.threads:
        torch.set_num_threads(wargs.threads)
    t0 = time.perf_counter()
    comm = init_comm(wargs.device)
    problem, tests, cfg, plan, source = weak_error._resolve(wargs)
    kw = weak_error._sde_kwargs(wargs, cfg)
    models = {"sam_sde3": ("sam_sde3", kw),
              "eigen_sam_sde": ("eigen_sam_sde", kw)}
    bar = None
    if comm.is_main and not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cfg["etas"]) * 3 * len(comm.my_chunks(plan.n_chunks)), desc="eigen weak error",
                   unit="chunk", file=sys.stderr)

    def progress(label):
        if bar is not None:
            bar.set_postfix_str(label)
            bar.update(1)
    discrete = "ideal_eigen_sam"
    res = sweep_eta(problem, etas=cfg["etas"], c=cfg["c"], horizon=cfg["horizon"], models=models, seed=wargs.seed,
                    tests=tests, plan=plan, comm=comm, n_boot=wargs.n_boot, record_every=cfg["record_every"],
                    discrete=discrete, progress=progress)
    if bar is not None:
        bar.close()
    res["theory_slopes"] = {"eigen_sam_sde": 1.0, "sam_sde3": None}
    blocks = weak_error.pop_blocks({"eta": res})
    out = {"config": {"command": " ".join(["python -m validation.eigen_weak_error", *argv]),
                      "discrete": discrete, "alpha": 0.2, "eigvec_source": "full",
                      "resolved": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                      "problem": problem.config(), "data_source": source, "plan": plan.config(), "sde_kwargs": kw,
                      "models": {k: v[0] for k, v in models.items()}},
           "results": {"eta": res},
           "runtime": {"wall_s_total": time.perf_counter() - t0, "wall_s_by_mode": {"eta": time.perf_counter() - t0},
                       "world_size": comm.world_size, "backend": comm.backend,
                       "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "python": platform.python_version(), "machine": platform.machine(),
                       "cpu_count": os.cpu_count()}}
    if comm.is_main:
        weak_error.write_outputs(out, Path(args.out), plots=not wargs.no_plot, blocks=blocks)
        print(weak_error.format_tables(out))
    comm.close()
    return out


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("validation.eigen_weak_error")
