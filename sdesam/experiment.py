"""The experiment driver: one command line, one output directory, one summary per experiment.

Every command of sdesam (the figures, the tables, the weak-error and moment studies, the
causal chain) is a dataclass configuration plus a ``run(config, out, options)`` function;
this module gives them the same behaviour, and your own experiment scripts can use it too:

    @dataclass
    class Config:
        eta: float = 0.01
        seeds: int = 3
        def validate(self): ...          # ValueError naming the option
        @classmethod
        def full(cls): ...               # the paper-scale configuration (optional)

    def run(cfg, out: Output, opts: Options) -> dict: ...     # returns the summary

    main = command("figures.mine", __doc__, Config, run)       # main(argv) -> summary

* ``command`` builds the parser: the common flags (``--out``, ``--full``, ``--device``,
  ``--data-dir``, ``--threads``, ``--no-progress``) and one flag per field of the
  configuration (``--field-name``; tuples take several values, dicts a JSON object,
  optional numbers ``none``), validates everything before anything runs (a bad value
  is a ValueError naming it: one line and exit status 2 through ``sdesam.cli``).
* ``Output`` is the output directory of one configuration: ``config.json`` is written
  on the first run; a rerun with the same configuration resumes (whatever the run keeps
  there), another configuration is refused with one line naming the differences.
  It writes tidy CSVs, JSON files and figures atomically.
* ``summary.json`` holds the configuration, the environment (versions, git commit,
  device, threads, command line) and the wall time of the invocation.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from .atomic import atomic_open, atomic_write_text
from .data.paths import check_data_dir
from .parallel import resolve_device

__all__ = ["environment", "Output", "Options", "command", "add_config_arguments", "config_from_args",
           "check_counts", "write_csv", "write_json", "read_json", "keep_freed_memory", "jsonable", "from_jsonable"]


def _git(*args) -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                             check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(device="cpu", world_size: int = 1) -> dict:
    """What produced a result: package versions, git commit of a checkout (None when
    installed elsewhere), machine, device, threads, processes and the command line."""
    versions = {"python": platform.python_version()}
    for pkg in ("sdesam", "torch", "torchsde", "numpy", "scipy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    status = _git("status", "--porcelain", "--untracked-files=no")
    device = torch.device(device)
    info = {"versions": versions, "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": None if status is None else bool(status), "device": str(device),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "world_size": world_size,
            "argv": list(sys.argv)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["gpu_count"] = torch.cuda.device_count()
    return info


def jsonable(obj):
    """``obj`` with tuples as lists, numpy and torch scalars as numbers, non-finite floats as
    strings (``"nan"``, ``"inf"``), paths as strings: what JSON can hold."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    return obj


_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def from_jsonable(obj):
    """The inverse of ``jsonable`` for numbers: the strings ``"nan"``, ``"inf"`` and
    ``"-inf"`` back to floats, in nested dicts and lists (so that a result read back from
    disk aggregates exactly as the one held in memory)."""
    if isinstance(obj, dict):
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    if isinstance(obj, str):
        return _NON_FINITE.get(obj, obj)
    return obj


def read_json(path):
    """A file written by ``write_json``, with its non-finite floats restored."""
    return from_jsonable(json.loads(Path(path).read_text()))


def write_json(path, obj) -> None:
    """JSON (indented) written atomically."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=1) + "\n")


def write_csv(path, fieldnames, rows) -> None:
    """A tidy CSV (one observation per row), written atomically; floats with full precision."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


class Output:
    """The output directory of one configuration.

    Args:
        path: the directory (created). A file at that path is refused.
        config: the configuration (a dataclass or a dict); ``config.json`` holds it. If the
            directory already holds another configuration, ValueError names the options that
            differ (saved value, requested value).
    """

    def __init__(self, path, config):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"--out {str(self.path)!r} exists and is not a directory")
        self.config = jsonable(config)
        saved = self.path / "config.json"
        if saved.exists():
            prev = json.loads(saved.read_text())
            if prev != self.config:
                keys = sorted(set(prev) | set(self.config)) if isinstance(prev, dict) else []
                diff = {k: (prev.get(k), self.config.get(k)) for k in keys if prev.get(k) != self.config.get(k)}
                raise ValueError(f"{self.path} holds results of another configuration {diff} (saved, requested); "
                                 "use another --out or delete that directory")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            write_json(saved, self.config)

    def file(self, name: str) -> Path:
        return self.path / name

    def csv(self, name: str, fieldnames, rows) -> Path:
        write_csv(self.path / name, fieldnames, rows)
        return self.path / name

    def json(self, name: str, obj) -> Path:
        write_json(self.path / name, obj)
        return self.path / name

    def figure(self, fig, stem: str) -> list[Path]:
        """``fig`` as PNG (150 dpi) and PDF."""
        paths = [self.path / f"{stem}.png", self.path / f"{stem}.pdf"]
        for p in paths:
            with atomic_open(p, "wb") as f:
                fig.savefig(f, format=p.suffix[1:], dpi=150, bbox_inches="tight")
        return paths

    def summary(self, summary: dict, device, t_start: float, world_size: int = 1) -> dict:
        """``summary`` plus the configuration, the environment and this invocation's wall time
        (since ``t_start``, a ``time.perf_counter()`` value), written to summary.json."""
        summary = {"config": self.config, **summary, "environment": environment(device, world_size),
                   "wall_seconds_this_invocation": time.perf_counter() - t_start}
        self.json("summary.json", summary)
        return summary


@dataclass
class Options:
    """How a command runs (not what it computes): the resolved device, the data directory,
    CPU threads, whether to show progress, the command's module and its argv."""

    device: torch.device
    data_dir: str | None
    threads: int | None
    progress: bool
    argv: list
    module: str = ""

    @property
    def command_line(self) -> str:
        return " ".join([f"python -m {self.module}", *self.argv])


def check_counts(config, zero_allowed=()) -> None:
    """Refuse a count of 0 or an empty list in a dataclass configuration: every int field
    must be >= 1 (>= 0 for the names in ``zero_allowed`` and for seeds such as
    ``init_seed``), every tuple non-empty. Raises ValueError naming the option."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple) and not value:
            raise ValueError(f"{flag} must list at least one value, got none")
        if isinstance(value, int) and not isinstance(value, bool):
            least = 0 if f.name in zero_allowed or f.name.endswith("seed") else 1
            if value < least:
                raise ValueError(f"{flag} must be >= {least}, got {value}")


_SCALARS = {"int": int, "float": float, "str": str}


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _optional(kind):
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = f"{getattr(kind, '__name__', 'value')} or none"
    return parse


def _key_value(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_config_arguments(parser: argparse.ArgumentParser, config_cls, defaults, choices: dict | None = None) -> None:
    """One flag per dataclass field (``--field-name``); the help shows the quick default.
    Tuples take several values, dicts a JSON object, optional numbers ``none``, bools
    ``--x/--no-x``; a field named ``overrides`` is ``--set KEY=VALUE`` (repeatable).
    ``choices`` maps field names to their valid values (listed in the help and enforced)."""
    choices = choices or {}
    unset = argparse.SUPPRESS          # an absent flag leaves no attribute (``none`` is a value)
    for f in dataclasses.fields(config_cls):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        extra = {"choices": choices[f.name]} if f.name in choices else {}
        if f.name == "overrides":
            parser.add_argument("--set", dest="overrides", action="append", type=_key_value, default=unset,
                                metavar="KEY=VALUE", help="a further field for every run (repeatable)")
        elif kind.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=unset, help=f"default {default}")
        elif kind.startswith("tuple"):
            elem = type(default[0]) if default else str
            parser.add_argument(flag, nargs="+", type=elem, default=unset,
                                help=f"default {' '.join(map(str, default))}", **extra)
        elif kind.startswith("dict"):
            parser.add_argument(flag, type=_json_dict, default=unset,
                                help=f"JSON object, default {json.dumps(default)}")
        else:
            base = _SCALARS[kind.split("|")[0].strip()]
            parse = _optional(base) if "None" in kind else base
            parser.add_argument(flag, type=parse, default=unset, help=f"default {default}", **extra)


def config_from_args(args: argparse.Namespace, config):
    """``config`` with every flag that was given applied."""
    changes = {}
    for f in dataclasses.fields(config):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.name == "overrides":
            value = {**config.overrides, **dict(value)}
        elif isinstance(getattr(config, f.name), tuple):
            value = tuple(value)
        changes[f.name] = value
    return dataclasses.replace(config, **changes)


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed memory for reuse (large blocks are not returned to
    the system after every use). The batched oracles allocate and free outputs of tens of
    MB per call; without this each call pays their first-touch page faults. A process-wide
    setting of the C library (``mallopt``), a no-op returning False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    big = 2 ** 31 - 1
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    return all(libc.mallopt(opt, value) == 1 for opt, value in
               ((m_mmap_threshold, big), (m_trim_threshold, big), (m_top_pad, 256 * 2 ** 20)))


def command(module: str, doc: str, config_cls, run: Callable, *, choices: dict | None = None,
            add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
            default_device: str = "auto", zero_allowed=()) -> Callable:
    """``main(argv)`` of an experiment module ``module`` (``python -m <module>``).

    The parser has the common flags and one per field of ``config_cls`` (whose defaults
    are the quick configuration; ``config_cls.full()`` with ``--full`` when it exists, or
    ``config_cls.defaults(args)`` when the defaults depend on the flags given);
    ``add_arguments`` may add more (their values reach ``run`` through ``opts.args``).
    ``main`` validates (``config.validate()``, ``check_counts``), opens the ``Output``
    directory and calls ``run(config, output, options)``, which returns the summary.
    """
    from .cli import prog_name

    def build() -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser(prog=prog_name(f"python -m {module}"), description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("--out", type=Path, default=Path("runs") / module.rsplit(".", 1)[-1],
                        help="output directory (a rerun with the same configuration resumes there)")
        if hasattr(config_cls, "full") or hasattr(config_cls, "defaults"):
            ap.add_argument("--full", action="store_true", help="the paper-scale configuration (for a GPU)")
        ap.add_argument("--device", default=default_device,
                        help=f"cpu, cuda, cuda:N or auto (default {default_device})")
        ap.add_argument("--data-dir", default=None, help="data directory (default $SDESAM_DATA or ~/.cache/sdesam)")
        ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
        ap.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_config_arguments(ap, config_cls, config_cls(), choices)
        if add_arguments is not None:
            add_arguments(ap)
        return ap

    def main(argv=None):
        argv = sys.argv[1:] if argv is None else list(argv)
        args = build().parse_args(argv)
        if hasattr(config_cls, "defaults"):          # defaults that depend on the flags (e.g. --problem)
            base = config_cls.defaults(args)
        else:
            base = config_cls.full() if getattr(args, "full", False) else config_cls()
        try:
            config = config_from_args(args, base)
        except TypeError as err:
            raise ValueError(str(err)) from None
        check_counts(config, zero_allowed)
        if hasattr(config, "validate"):
            config.validate()
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        device = resolve_device(args.device)
        check_data_dir(args.data_dir)
        if device.type == "cpu":
            keep_freed_memory()
        opts = Options(device, args.data_dir, args.threads, not args.no_progress, argv, module)
        opts.args = args
        output = Output(args.out, config)
        return run(config, output, opts)

    main.build_parser = build
    return main


@contextlib.contextmanager
def timed(record: dict, key: str):
    """``with timed(walls, "sam"): ...`` adds the block's wall seconds to ``record[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        record[key] = record.get(key, 0.0) + time.perf_counter() - t0
