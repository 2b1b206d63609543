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
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

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
        kept: what an interrupted run leaves behind and how to continue; ``{out}`` is
            replaced by the value of ``out_flag`` (or ``out_default``).
    """

    module: str
    summary: str
    kept: str
    out_flag: str = "--out"
    out_default: str = ""


_KEPT = "what finished is kept in {out}; rerunning the same command resumes from it"
_BENCH_KEPT = "a benchmark keeps no partial results; rerun it"


def _module(module: str, summary: str, out_default: str | None = None, kept: str = _KEPT) -> Command:
    return Command(module, summary, kept, out_default=out_default or f"runs/{module.rsplit('.', 1)[-1]}")


COMMANDS: dict[str, Command] = {
    "figure2": _module("figures.figure2", "Figure 2: discrete SAM vs SAM-SDE2/SDE3 on the MNIST MLP"),
    "figure1": _module("figures.figure1", "Figure 1: Align(ε, v₁) and λ₁ during SGD / SAM / Eigen-SAM training"),
    "figure3": _module("figures.figure3", "Figure 3: test accuracy against α; Hessian spectrum (SLQ)"),
    "figure5": _module("figures.figure5", "Figure 5: power-iteration estimate's alignment with v₁ against q"),
    "table1": Command("figures.table1", "Table 1: test accuracy of SGD / SAM / Eigen-SAM (--quick: CPU grid)",
                      _KEPT, out_default="runs/table1 (runs/table1-quick with --quick)"),
    "table_p": _module("figures.table_p", "Tables 3-4: Eigen-SAM test accuracy against the refresh interval p"),
    "appendix_a": _module("figures.appendix_a", "Appendix A: SAM, Reverse-SAM and EGR losses"),
    "weak-error": _module("validation.weak_error", "weak error of the SDEs against η and ρ (Theorem 4.1)"),
    "moment-test": _module("validation.moment_test", "one-step moment test: discrete step vs SDE drift and "
                           "diffusion, against ρ (Lemma B.3)"),
    "svag": _module("figures.svag", "the SAM-SVAG test: metrics against effective time for l = 1, 2, 4, 8"),
    "train": Command("sdesam.train", "train an image classifier (SGD / SAM family / Eigen-SAM …)",
                     "the run's last checkpoint is kept in {out}; rerun the same command with --resume "
                     "to continue it", out_flag="--out-dir", out_default="its --out-dir"),
    "causal-mlp": _module("figures.causal_mlp", "the causal chain on the MNIST MLP: SAM, Eigen-SAM vs Eq. 4/5/6 "
                          "and the Eigen-SAM SDE"),
    "alignment-sweep": _module("validation.alignment_sweep", "weak error of Eq. 5 / Eq. 6 against the "
                               "alignment (toy)"),
    "eigen-weak-error": _module("validation.eigen_weak_error", "weak error of the Eigen-SAM SDE against η "
                                "(ideal Eigen-SAM)"),
    "bench oracles": _module("benchmarks.oracles", "cost of g, v² and one SAM / SDE step in gradients; "
                             "looped vs batched blocks", kept=_BENCH_KEPT),
    "bench eigensam": _module("benchmarks.eigensam", "SAM, paper / Lanczos / official Eigen-SAM: cost and "
                              "alignment, ResNet-18", kept=_BENCH_KEPT),
    "bench curvature": _module("benchmarks.curvature", "products for λ₁: Lanczos vs power iteration",
                               kept=_BENCH_KEPT),
    "bench causal": _module("benchmarks.causal", "cost of one Eq. 5 / Eigen-SAM SDE Euler step in gradients",
                            kept=_BENCH_KEPT),
    "bench gpu": Command("benchmarks.gpu_check", "the GPU check (--device cuda); --device cpu --small: smoke test",
                         "report.json and summary.md in {out} hold the parts finished so far; rerun to measure "
                         "again", out_default="gpu_check_out"),
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
    lines = [__doc__.split("\n\n")[0], "", "usage: sdesam [--debug] <command> [options]",
             "       sdesam --version", "", "Commands:", ""]
    for name, c in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {c.summary}  [python -m {c.module}]")
    lines += ["", "Each is the same program as python -m <the module in brackets>; sdesam <command> --help",
              "lists its options. In command names - and _ may be written for each other (table-p).", "",
              "Options for every command:",
              f"  --debug  show the full traceback of an error (or set {DEBUG_ENV}=1)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    """``sdesam <command> [options]``: dispatch to the command's module ``main``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    words = [a for a in argv if a != "--debug"]
    if not words or words[0] in ("-h", "--help"):
        print(_help())
        return 0 if words else 2
    if words[0] == "--version":
        from . import __version__
        print(f"sdesam {__version__}")
        return 0
    name, rest = words[0], argv[argv.index(words[0]) + 1:]
    if name == "bench":
        if not rest or rest[0] in ("-h", "--help"):
            print("usage: sdesam bench {oracles,eigensam,curvature,causal,gpu} [options]")
            return 0 if rest else 2
        name, rest = f"bench {rest[0]}", rest[1:]
    name = _canonical(name)
    if name not in COMMANDS:
        print(f"sdesam: error: unknown command {name!r}; one of: {', '.join(COMMANDS)} "
              "(sdesam --help)", file=sys.stderr)
        return 2
    if "--debug" in argv[:argv.index(words[0])]:
        rest = ["--debug", *rest]
    command = COMMANDS[name]
    try:
        module = _import_command(command.module)
    except ModuleNotFoundError as exc:
        print(f"sdesam {name}: error: {exc}", file=sys.stderr)
        return 2
    return run_main(module.main, f"sdesam {name}", rest, command)


def _canonical(name: str) -> str:
    """The ``COMMANDS`` name that ``name`` spells with ``-`` for ``_`` or the other way round
    (``table-p`` → ``table_p``, ``weak_error`` → ``weak-error``); ``name`` when none does."""
    for spelling in (name, name.replace("-", "_"), name.replace("_", "-")):
        if spelling in COMMANDS:
            return spelling
    return name


def _import_command(module_name: str):
    """The command's module. The experiment packages (figures, validation, benchmarks) live
    in the repository next to ``sdesam``, not in the installed package: with an editable
    install of a checkout they are found there."""
    top = module_name.split(".")[0]
    if top != "sdesam" and importlib.util.find_spec(top) is None:
        root = Path(__file__).resolve().parents[1]
        if (root / top / "__init__.py").is_file():
            sys.path.insert(0, str(root))
        else:
            raise ModuleNotFoundError(f"{module_name} is one of the experiment scripts of the sdesam repository, "
                                      "not part of the installed package: run it from a checkout (pip install -e .)")
    return importlib.import_module(module_name)


def run_module(module_name: str) -> None:
    """The ``if __name__ == "__main__":`` body of a command module: run its ``main`` as
    ``python -m <module_name>`` with the shared error handling, and exit."""
    module = sys.modules["__main__"]
    command = next((c for c in COMMANDS.values() if c.module == module_name), None)
    sys.exit(run_main(module.main, f"python -m {module_name}", None, command))


if __name__ == "__main__":
    sys.exit(main())
