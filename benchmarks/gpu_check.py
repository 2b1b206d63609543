"""One command that proves the GPU paths of sdesam and measures them.

    python -m benchmarks.gpu_check --device cuda --out gpu_report      # ≈ 5-8 min on one H200
    python -m benchmarks.gpu_check --device cpu --small --out /tmp/r    # toy sizes, < 1 min (CI)
    python -m benchmarks.gpu_check --parts env,training --limit training=300 ...

Each *part* runs in its own process (``python -m benchmarks.gpu_check --_part ...``) and
process group, with its own time limit: a hang, a CUDA error or a crash of one part is
reported as ``"failed: <reason>"`` (with the tail of its log) and the check goes on.
Within a part, every *item* (one measurement or comparison) fails soft as well. A part
saves its results as it produces them, so a part that runs out of time still reports
what it measured. Parts (``PARTS``, in ``benchmarks.gpu.parts``; docs/gpu.md explains
every number):

- ``env``: GPU model and memory, torch / CUDA / cuDNN / NCCL versions, TF32 flags.
- ``cuda_tests``: ``pytest tests/test_cuda.py`` (they skip without CUDA, which fails
  the part on ``--device cuda``).
- ``compare``: CUDA against the CPU on the MNIST MLP (784-784-10 GeLU, B = 128), in
  float64 and float32: the oracles g, Hu, ∇³f(u,u), v² (docs/math.md §2) and one step of
  every dynamics of ``sdesam.DYNAMICS`` from the same state and seed (the library draws
  minibatches, Brownian increments and start vectors on CPU generators, so both steps
  use the same numbers). Max relative error max|a − b| / max|a| of each vector (of the
  step increment x₁ − x₀ for steps).
- ``oracles``: ``benchmarks.oracles`` on the device at B = 128, 4096 and 32768 (v² and
  a step in units of one plain gradient, jet and generic autograd paths).
- ``figure2``: the ``figures.figure2 --full`` configuration for a few steps of each
  dynamics and one evaluation of the six metrics; extrapolated wall time of the run.
- ``weak_error``: one chunk of ``validation.weak_error --problem mlp --full`` (the paper's
  784-784-10 network) per model at η = 0.01; trajectories/s and the extrapolated wall
  time of the ``--full`` η sweep.
- ``training``: ResNet-18 on CIFAR-10-shaped data (synthetic batches in the official
  pickle format unless CIFAR-10 is in the data directory) through
  ``sdesam.training.train`` for SGD, SAM and Eigen-SAM (p = 100, q = 5) in float32 and
  bf16 autocast: images/s, peak memory, the Eigen-SAM/SAM step-time ratio over a
  window of p steps holding one refresh; a plain PyTorch SGD loop as the baseline;
  SGD/SAM steps of ResNet-50 and WRN-28-10; extrapolated Table 1 cell and grid times.
- ``ddp``: ``torchrun`` (NCCL on CUDA with one process per GPU; gloo with two CPU
  processes) running ``sdesam.testing.ddp_equivalence_run``: data-parallel SAM,
  Eigen-SAM and EGR equal one process with the combined batch.

Outputs in ``--out``: ``report.json`` (everything, rewritten after every part),
``summary.md`` (readable) and ``logs.txt`` (every part's output). The parent process
(``benchmarks.gpu.harness``) runs no torch computation, so it survives whatever a part
does.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks.gpu.harness import CheckFailed, PartContext, child_main, run_check, run_part
from benchmarks.gpu.parts import ddp_worker
from benchmarks.gpu.report import format_summary

__all__ = ["PARTS", "DEFAULT_LIMITS", "SMALL_LIMITS", "PartContext", "CheckFailed", "run_check", "run_part",
           "format_summary", "parse_args", "main"]

#: part name → "module:function" run in a child process with a ``PartContext``.
PARTS = {
    "env": "benchmarks.gpu.parts:part_env",
    "cuda_tests": "benchmarks.gpu.parts:part_cuda_tests",
    "compare": "benchmarks.gpu.parts:part_compare",
    "oracles": "benchmarks.gpu.parts:part_oracles",
    "figure2": "benchmarks.gpu.parts:part_figure2",
    "weak_error": "benchmarks.gpu.parts:part_weak_error",
    "training": "benchmarks.gpu.parts:part_training",
    "ddp": "benchmarks.gpu.parts:part_ddp",
}
#: seconds per part for the full check; they sum to 470 s (about 8 minutes).
DEFAULT_LIMITS = {"env": 20, "cuda_tests": 40, "compare": 45, "oracles": 60, "figure2": 70,
                  "weak_error": 55, "training": 130, "ddp": 50}
#: seconds per part for ``--small`` (each takes a few seconds on 2 CPU cores).
SMALL_LIMITS = {name: 60 for name in PARTS}


def _limit(text: str) -> tuple[str, float]:
    """``--limit PART=SECONDS`` → (PART, SECONDS)."""
    name, _, value = text.partition("=")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS, got {text!r}") from None
    if name not in PARTS or not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS with NAME in {list(PARTS)} and SECONDS > 0, "
                                         f"got {text!r}")
    return name, seconds


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; ``args.part_names`` lists the parts to run, in order."""
    from sdesam.cli import prog_name
    ap = argparse.ArgumentParser(prog=prog_name("python -m benchmarks.gpu_check"),
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--small", action="store_true", help="toy sizes (the CPU smoke mode of the test suite)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="report directory")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--limit", type=_limit, action="append", default=[], metavar="PART=SECONDS",
                    help="time limit of one part (repeatable); defaults: "
                         + ", ".join(f"{k}={v}" for k, v in DEFAULT_LIMITS.items())
                         + f" (sum {sum(DEFAULT_LIMITS.values())} s); with --small {SMALL_LIMITS['env']} s each")
    ap.add_argument("--data-dir", default=None, help="data directory (default $SDESAM_DATA)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    args = ap.parse_args(argv)
    if args.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", args.device):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {str(args.out)!r} is a file, not a directory")
    names = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        ap.error(f"--parts must name parts of {list(PARTS)}, got {args.parts!r}")
    args.part_names = names
    return args


def main(argv=None) -> int:
    """Run the check and print the summary: exit code 0 when every part is ok, 1 when one
    failed, 130 when interrupted. Two hidden entries run inside the check's own child
    processes: ``--_part SPEC CONTEXT`` (one part) and ``--_ddp-worker PREFIX cuda|cpu``
    (one torchrun process of the ``ddp`` part)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--_part"]:
        return child_main(argv[1], argv[2])
    if argv[:1] == ["--_ddp-worker"]:
        ddp_worker(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    limits = dict(SMALL_LIMITS if args.small else DEFAULT_LIMITS)
    limits.update(dict(args.limit))
    try:
        report = run_check({n: PARTS[n] for n in args.part_names}, device=args.device, small=args.small,
                           out=args.out, limits=limits, data_dir=args.data_dir, workdir=args.workdir, argv=argv)
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc}); the report so far is in {args.out}", file=sys.stderr)
        return 130
    print(f"wrote {args.out}/report.json, summary.md, logs.txt ({report.get('total_wall_s', 0):.0f} s)")
    print(format_summary(report))
    return 0 if report.get("ok") else 1


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("benchmarks.gpu_check")
