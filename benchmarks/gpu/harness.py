"""Running the parts of the GPU check, each in a child process, and writing the report.

``run_check`` runs parts one after the other; ``run_part`` starts one part as
``python -m benchmarks.gpu_check --_part SPEC CONTEXT`` in its own process group and
waits at most its time limit: a timeout kills the whole process group, a crash or a
non-zero exit is reported as ``failed: <reason>``, and the check goes on. In the child,
``child_main`` builds the ``PartContext`` and calls the part function; the part saves
its results through the context as it produces them, so a part that is killed still
reports what it measured. After every part ``run_check`` rewrites report.json,
summary.md and logs.txt in the output directory. Every file is written through
``sdesam.atomic``: a reader (or a killed check) never sees a half-written file.
"""
from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from sdesam.atomic import atomic_write_text

from .report import format_summary

__all__ = ["REPO", "CHECK_MODULE", "LOG_TAIL", "PartContext", "CheckFailed", "child_main", "run_part", "run_check"]

REPO = Path(__file__).resolve().parents[2]
CHECK_MODULE = "benchmarks.gpu_check"     #: the command whose ``--_part`` entry runs a part
LOG_TAIL = 3000                           #: characters of a failed part's log kept in the report


class PartContext:
    """What a part function receives, and where it writes its results.

    Attributes:
        name: the part's name.
        device: ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.
        small: toy sizes (the CPU smoke mode).
        workdir: a scratch directory of this part (data, run directories).
        data_dir: the data directory (``$SDESAM_DATA`` when None).
        results: the part's JSON-serialisable results, saved by ``record`` and ``item``.
        failed_items: item name → ``"failed: <reason>"``.
    """

    def __init__(self, name: str, device: str, small: bool, workdir: str, data_dir: str | None,
                 result_path: str):
        self.name, self.device, self.small = name, device, bool(small)
        self.workdir, self.data_dir = Path(workdir), data_dir
        self.result_path = Path(result_path)
        self.results: dict = {}
        self.failed_items: dict[str, str] = {}

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def save(self) -> None:
        """Write the results so far to ``result_path`` (atomically)."""
        atomic_write_text(self.result_path, json.dumps({"results": self.results, "failed_items": self.failed_items},
                                                       default=json_default))

    def record(self, key: str, value) -> None:
        """Set ``results[key] = value`` and save."""
        self.results[key] = value
        self.save()

    @contextlib.contextmanager
    def item(self, name: str):
        """Run one measurement: an exception is recorded as ``failed: <reason>`` for this
        item (the part then fails) and the part continues after the block. The item's
        wall time goes to ``results["item_wall_s"][name]``."""
        t0 = time.perf_counter()
        try:
            yield
        except Exception as exc:                       # noqa: BLE001 — fail soft per item
            traceback.print_exc()
            self.failed_items[name] = f"failed: {type(exc).__name__}: {exc}"[:500]
        finally:
            self.results.setdefault("item_wall_s", {})[name] = round(time.perf_counter() - t0, 3)
            self.save()


class CheckFailed(Exception):
    """A measured value is outside what the check accepts (e.g. an error above tolerance)."""


def json_default(obj):
    """JSON fallback of the reports: tensor and numpy scalars as numbers, paths as strings."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def child_main(spec: str, ctx_file: str) -> int:
    """Entry of a part's process: run ``spec`` ("module:function") with the context
    described in ``ctx_file``; an exception is saved as the item ``<part>`` (exit code 1)."""
    ctx = PartContext(**json.loads(Path(ctx_file).read_text()))
    ctx.save()
    try:
        module, _, func = spec.partition(":")
        getattr(importlib.import_module(module), func)(ctx)
    except Exception as exc:                           # noqa: BLE001 — reported by the parent
        traceback.print_exc()
        ctx.failed_items["<part>"] = f"failed: {type(exc).__name__}: {exc}"[:500]
        ctx.save()
        return 1
    return 0


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the part's process group (the part and every process it started)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(10)


def run_part(name: str, spec: str, *, device: str, small: bool, limit_s: float, workdir: Path,
             data_dir: str | None) -> dict:
    """Run one part in a child process (its own process group) with a time limit; never raises
    (except on SIGTERM / Ctrl-C of the check itself, after killing the part).

    Returns ``{"status": "ok" | "failed: <reason>", "wall_s", "limit_s", "results",
    "failed_items", "log"}``.
    """
    pdir = Path(workdir) / name
    (pdir / "work").mkdir(parents=True, exist_ok=True)
    result_path, log_path, ctx_path = pdir / "result.json", pdir / "log.txt", pdir / "context.json"
    result_path.unlink(missing_ok=True)
    atomic_write_text(ctx_path, json.dumps({"name": name, "device": device, "small": small,
                                            "workdir": str(pdir / "work"), "data_dir": data_dir,
                                            "result_path": str(result_path)}))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if small:     # toy tensors: one thread each is far faster on a small shared machine
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, "-m", CHECK_MODULE, "--_part", spec, str(ctx_path)]
    t0 = time.perf_counter()
    status = None
    with open(log_path, "w") as log:
        try:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        except OSError as exc:
            status = f"failed: could not start the part ({exc})"
        else:
            try:
                rc = proc.wait(limit_s)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                status = f"failed: timed out after {limit_s:g} s (limit); results so far are kept"
            except BaseException:                    # SIGTERM/Ctrl-C of the check: take the part down too
                _kill_group(proc)
                raise
            else:
                _kill_group(proc)                    # leftovers of the part (e.g. torchrun workers)
                if rc < 0:
                    with contextlib.suppress(ValueError):
                        status = f"failed: killed by signal {-rc} ({signal.Signals(-rc).name})"
                    status = status or f"failed: killed by signal {-rc}"
                elif rc != 0:
                    status = f"failed: exit code {rc}"
    wall = time.perf_counter() - t0
    payload = {"results": {}, "failed_items": {}}
    with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
        payload = json.loads(result_path.read_text())
    failed = payload.get("failed_items") or {}
    reasons = "; ".join(f"{k}: {v.removeprefix('failed: ')}" for k, v in failed.items())
    if status is None:                               # exit code 0
        if failed:
            status = "failed: " + reasons
        elif not result_path.exists():
            status = "failed: the part wrote no result"
        else:
            status = "ok"
    elif failed:
        status = ("failed: " + reasons) if status.startswith("failed: exit code") else f"{status}; {reasons}"
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return {"status": status, "wall_s": round(wall, 2), "limit_s": limit_s,
            "results": payload.get("results", {}), "failed_items": failed, "log": log_text}


def git_commit() -> str:
    """HEAD of the checkout (``+uncommitted changes`` when tracked files differ), else
    ``$SDESAM_GIT_COMMIT``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return out.stdout.strip() + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("SDESAM_GIT_COMMIT") or "unknown (no git checkout; set SDESAM_GIT_COMMIT)"


def run_check(parts: dict[str, str], *, device: str, small: bool, out: Path, limits: dict[str, float],
              data_dir: str | None = None, workdir: Path | None = None, argv=None) -> dict:
    """Run ``parts`` (name → "module:function") in order; write report.json, summary.md
    and logs.txt in ``out`` after every part. Returns the report.

    SIGTERM (like Ctrl-C) kills the running part, marks it and the parts not run as
    ``failed: the check was interrupted``, writes the report and raises KeyboardInterrupt.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sdesam-gpu-check-"))
    report = {
        "check": f"python -m {CHECK_MODULE}",
        "argv": list(argv) if argv is not None else None,
        "device": device, "small": small,
        "git_commit": git_commit(), "hostname": socket.gethostname(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "data_dir": data_dir or os.environ.get("SDESAM_DATA"), "workdir": str(workdir),
        "limits_s": {k: limits[k] for k in parts}, "parts": {},
    }
    t_start = time.perf_counter()
    logs: list[str] = []

    def terminated(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:                                 # not the main thread: no SIGTERM handling
        previous = None
    try:
        for name, spec in parts.items():
            print(f"[gpu_check] {name} (limit {limits[name]:g} s) ...", flush=True)
            try:
                res = run_part(name, spec, device=device, small=small, limit_s=limits[name], workdir=workdir,
                               data_dir=data_dir)
            except KeyboardInterrupt as exc:
                _add_interrupted(report, list(parts)[list(parts).index(name):], workdir, limits, exc)
                _finish(report, t_start, out, logs)
                raise
            _add_part(report, name, res, logs)
            _finish(report, t_start, out, logs)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return report


def _add_interrupted(report: dict, names: list[str], workdir: Path, limits: dict, exc: BaseException) -> None:
    """Mark ``names`` (the running part first) as interrupted, keeping what the running part saved."""
    saved = {}
    with contextlib.suppress(OSError, json.JSONDecodeError):
        saved = json.loads((workdir / names[0] / "result.json").read_text())
    for i, name in enumerate(names):
        kept = saved if i == 0 else {}
        report["parts"][name] = {"status": f"failed: the check was interrupted ({exc or 'Ctrl-C'})",
                                 "wall_s": None, "limit_s": limits[name], "results": kept.get("results", {}),
                                 "failed_items": kept.get("failed_items", {})}


def _add_part(report: dict, name: str, res: dict, logs: list[str]) -> None:
    log = res.pop("log")
    logs.append(f"===== {name}: {res['status']} ({res['wall_s']} s) =====\n{log}\n")
    if res["status"] != "ok":
        res["log_tail"] = log[-LOG_TAIL:]
    report["parts"][name] = res
    env = res["results"].get("env")
    if name == "env" and env:        # the headline facts, also at the top of the report
        report["environment"] = {k: env.get(k) for k in ("gpus", "torch", "cuda_runtime", "cudnn", "nccl",
                                                          "cuda_available", "driver_smi")}
    print(f"[gpu_check] {name}: {res['status']} ({res['wall_s']} s)", flush=True)


def _finish(report: dict, t_start: float, out: Path, logs: list[str]) -> None:
    report["total_wall_s"] = round(time.perf_counter() - t_start, 2)
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    report["ok"] = all(p["status"] == "ok" for p in report["parts"].values())
    atomic_write_text(out / "report.json", json.dumps(report, indent=1, default=json_default))
    atomic_write_text(out / "summary.md", format_summary(report))
    atomic_write_text(out / "logs.txt", "".join(logs))
