"""sdesam: one command for every experiment, benchmark and training run.

    sdesam <command> [options]          (the same program as ``python -m <module> [options]``)

Each command is its module's own ``main(argv)`` — the same argument parser, the same
defaults; ``sdesam <command> --help`` shows them. Both ways of running a command report
a user's mistake (a bad option value, a missing data set, ``--device cuda`` without
CUDA) as one line ``<prog>: error: ...`` on stderr with exit status 2, and Ctrl-C as one
line saying what was kept (exit status 130); ``--debug`` (or ``SDESAM_DEBUG=1``) shows
the full traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass

__all__ = ["main", "run_main", "run_module", "prog_name", "key_value", "optional", "COMMANDS",
           "DEBUG_ENV"]

#: environment variable that makes every command show tracebacks (like ``--debug``)
DEBUG_ENV = "SDESAM_DEBUG"


def key_value(text: str) -> tuple[str, object]:
    """argparse type for ``KEY=VALUE``: the value parsed as JSON when it is JSON
    (``width=8`` → 8, ``norm=\"group\"`` or ``norm=group`` → "group")."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def optional(kind):
    """argparse type: ``kind(text)``, or None for the text ``none`` (any case)."""
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = f"{getattr(kind, '__name__', 'value')} or none"
    return parse


@dataclass(frozen=True)
class Command:
    """One ``sdesam`` command.

    Attributes:
        module: the module whose ``main(argv)`` runs it (also ``python -m <module>``).
        summary: one line for ``sdesam --help``.
        quick_time: wall time of its default (quick) configuration measured here (README).
        kept: what an interrupted run leaves behind and how to continue; ``{out}`` is
            replaced by the value of ``out_flag`` (or ``out_default``).
    """

    module: str
    summary: str
    quick_time: str
    kept: str
    out_flag: str = "--out"
    out_default: str = ""


_FIGURE_KEPT = ("finished training runs and the checkpoints of unfinished ones are kept in {out}; "
                "rerunning the same command resumes from them")
_BENCH_KEPT = "a benchmark keeps no partial results; rerun it"


def _figure(name: str, summary: str, quick_time: str) -> Command:
    """A figure command: module ``figures.<name>``, runs kept and resumed in ``runs/<name>``."""
    return Command(f"figures.{name}", summary, quick_time, _FIGURE_KEPT, out_default=f"runs/{name}")


COMMANDS: dict[str, Command] = {
    "figure2": Command("figures.figure2", "Figure 2: discrete SAM vs SAM-SDE2/SDE3 on the MNIST MLP",
                       "303 s", "the records and checkpoints written so far are kept in {out}; rerunning "
                       "the same command resumes exactly", out_default="runs/figure2"),
    "figure1": _figure("figure1", "Figure 1: Align(ε, v₁) and λ₁ during SGD / SAM / Eigen-SAM training", "137 s"),
    "figure3": _figure("figure3", "Figure 3: test accuracy against α; Hessian spectrum (SLQ)", "148 s"),
    "figure5": _figure("figure5", "Figure 5: power-iteration estimate's alignment with v₁ against q", "56 s"),
    "table1": Command("figures.table1", "Table 1: test accuracy of SGD / SAM / Eigen-SAM (--quick: CPU grid)",
                      "238 s --quick", "finished cells and the checkpoints of unfinished ones are kept "
                      "in {out}; rerunning the same command resumes from them",
                      out_flag="--runs-dir", out_default="runs/table1 (runs/table1-quick with --quick)"),
    "table_p": _figure("table_p", "Tables 3-4: Eigen-SAM test accuracy against the refresh interval p", "182 s"),
    "appendix_a": _figure("appendix_a", "Appendix A: SAM, Reverse-SAM and EGR losses", "143 s"),
    "weak-error": Command("validation.weak_error", "weak error of the SDEs against η and ρ (Theorem 4.1)",
                          "382 s", "nothing is kept (results.json is written at the end); rerunning "
                          "the same command starts over", out_default="weak_error_out"),
    "train": Command("sdesam.train", "train an image classifier (SGD / SAM / ASAM / Eigen-SAM …)",
                     "varies", "the run's last checkpoint is kept in {out}; rerun the same "
                     "command with --resume to continue it", out_flag="--out-dir",
                     out_default="its --out-dir"),
    "bench oracles": Command("benchmarks.oracles", "cost of g, v² and one SAM / SDE step in gradients; "
                             "looped vs batched blocks", "53 s", _BENCH_KEPT),
    "bench eigensam": Command("benchmarks.eigensam", "SAM, paper / Lanczos / official Eigen-SAM: cost and alignment, "
                              "ResNet-18", "~9 min", _BENCH_KEPT),
    "bench curvature": Command("benchmarks.curvature", "products for λ₁: Lanczos vs power iteration",
                               "46 s", _BENCH_KEPT),
    "causal-mlp": Command("figures.causal_mlp", "the causal chain on the MNIST MLP: SAM, Eigen-SAM vs Eq. 4/5/6 "
                          "and the Eigen-SAM SDE", "~15 min est.", "finished (method, seed) runs are kept in "
                          "{out}; rerunning the same command resumes from them", out_default="runs/causal_mlp"),
    "alignment-sweep": Command("validation.alignment_sweep", "weak error of Eq. 5 / Eq. 6 against the alignment "
                               "(toy)", "~3 min est.", "finished κ values are kept in {out}; rerunning the "
                               "same command resumes from them", out_default="runs/alignment_sweep"),
    "eigen-weak-error": Command("validation.eigen_weak_error", "weak error of the Eigen-SAM SDE against η "
                                "(ideal Eigen-SAM)", "~18 min est.", "nothing is kept (results.json is written "
                                "at the end); rerunning the same command starts over",
                                out_default="eigen_weak_error_out"),
    "bench causal": Command("benchmarks.causal", "cost of one Eq. 5 / Eigen-SAM SDE Euler step in gradients",
                            "74 s", _BENCH_KEPT),
    "bench gpu": Command("benchmarks.gpu_check", "the GPU check (--device cuda); --device cpu --small: smoke test",
                         "~2 min --small", "report.json and summary.md in {out} hold the parts finished so "
                         "far; rerun to measure again", out_default="gpu_check_out"),
}


def prog_name(default: str) -> str:
    """The program name for usage and error lines: ``sdesam <command>`` when run through
    ``sdesam`` (``run_main`` sets ``sys.argv[0]``), else ``default`` (``python -m …``)."""
    return sys.argv[0] if sys.argv[0].startswith("sdesam ") else default


def _option_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``argv`` (``--flag V`` or ``--flag=V``; the last wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.partition("=")[2]
    return value


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


_CUDA_MESSAGES = ("Torch not compiled with CUDA", "Found no NVIDIA driver", "No CUDA GPUs are available",
                  "CUDA driver", "CUDA is not available")


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for an error a user can fix, None for anything else (a bug:
    its traceback is shown). User errors: bad values (ValueError, which includes the data
    loaders' CorruptDatasetError), files (OSError: a missing data set, an existing run
    directory, no permission) and asking for CUDA where there is none."""
    if isinstance(exc, (ValueError, OSError)):
        return _one_line(exc) or type(exc).__name__
    if isinstance(exc, (RuntimeError, AssertionError)) and any(m in str(exc) for m in _CUDA_MESSAGES):
        return _one_line(exc) + " (use --device cpu)"
    return None


def run_main(main, prog: str, argv=None, command: Command | None = None) -> int:
    """Run ``main(argv)`` as a command line program named ``prog`` and return its exit
    status: 0, or ``main``'s own int; 2 with one line ``prog: error: ...`` on stderr for a
    user error (see ``_user_error``) or a ``SystemExit`` carrying a message; 130 after
    Ctrl-C, with one line saying what ``command`` keeps. ``--debug`` in ``argv`` (removed
    before ``main`` sees it) or ``SDESAM_DEBUG=1`` re-raises instead, with the traceback.

    A ``SystemExit`` with a status (argparse's ``--help`` and syntax errors, a module that
    printed its own ``error:`` line) passes through. Every command module ends with
    ``run_module("<module>")``, which calls this.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    saved_argv0 = sys.argv[0]
    sys.argv[0] = prog                      # argparse's default prog (usage lines, errors)
    try:
        code = main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        kept = "nothing was kept"
        if command is not None:
            kept = command.kept.format(out=_option_value(argv, command.out_flag) or command.out_default)
        print(f"\n{prog}: interrupted (Ctrl-C); {kept}", file=sys.stderr)
        return 130
    except SystemExit as exc:              # a message; argparse's own exits pass through
        if isinstance(exc.code, str) and not debug:
            print(f"{prog}: error: {_one_line(exc.code)}", file=sys.stderr)
            return 2
        raise
    except Exception as exc:               # noqa: BLE001 — classified just below
        message = None if debug else _user_error(exc)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 2
    finally:
        sys.argv[0] = saved_argv0
    return code if isinstance(code, int) else 0


def _help() -> str:
    width = max(len(n) for n in COMMANDS)
    time_width = max(len(c.quick_time) for c in COMMANDS.values())
    lines = [__doc__.split("\n\n")[0], "", "usage: sdesam [--debug] <command> [options]", "",
             "Commands, with the wall time of their quick default measured on a 2-core CPU (README;",
             "est.: estimated from CPU time measured on a shared machine):", ""]
    for name, c in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {c.quick_time:>{time_width}}  {c.summary}")
    lines += ["", "Each is the same program as python -m figures.<command> (figures and tables),",
              "validation.<command> (weak-error, alignment-sweep, eigen-weak-error), sdesam.train or",
              "benchmarks.<name> (bench gpu: benchmarks.gpu_check); sdesam <command> --help lists",
              "its options.", "", "Options for every command:",
              f"  --debug  show the full traceback of an error (or set {DEBUG_ENV}=1)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``sdesam <command> [options]``: dispatch to the command's module ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if a != "--debug"]
    if not words or words[0] in ("-h", "--help"):
        print(_help())
        return 0 if words else 2
    name, rest = words[0], argv[argv.index(words[0]) + 1:]
    if name == "bench":
        if not rest or rest[0] in ("-h", "--help"):
            print("usage: sdesam bench {oracles,eigensam,curvature,causal,gpu} [options]")
            return 0 if rest else 2
        name, rest = f"bench {rest[0]}", rest[1:]
    if name not in COMMANDS:
        print(f"sdesam: error: unknown command {name!r}; one of: {', '.join(COMMANDS)} "
              "(sdesam --help)", file=sys.stderr)
        return 2
    if "--debug" in argv[:argv.index(words[0])]:
        rest = ["--debug", *rest]
    command = COMMANDS[name]
    module = importlib.import_module(command.module)
    return run_main(module.main, f"sdesam {name}", rest, command)


def run_module(module_name: str) -> None:
    """The ``if __name__ == "__main__":`` body of a command module: run its ``main`` as
    ``python -m <module_name>`` with the shared error handling, and exit."""
    module = sys.modules["__main__"]
    command = next((c for c in COMMANDS.values() if c.module == module_name), None)
    sys.exit(run_main(module.main, f"python -m {module_name}", None, command))


if __name__ == "__main__":
    sys.exit(main())
