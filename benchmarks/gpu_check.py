"""One command that proves the GPU paths of sdesam and measures them.

    python -m benchmarks.gpu_check --device cuda --out gpu_report      # ≈ 5-8 min on one H200
    python -m benchmarks.gpu_check --device cpu --small --out /tmp/r    # toy sizes, < 1 min (CI)
    python -m benchmarks.gpu_check --parts env,training --limit training=300 ...

Each *part* runs in its own process (``python -m benchmarks.gpu_check --_part ...``) in
a new session, with its own time limit: a hang, a CUDA error or a crash of one part is
reported as ``"failed: <reason>"`` (with the tail of its log) and the check goes on.
Within a part, every *item* (one measurement or comparison) fails soft as well. A part
saves its results as it produces them, so a part that runs out of time still reports
what it measured. Parts (``PARTS``; docs/gpu.md explains every number):

- ``env``: GPU model and memory, torch / CUDA / cuDNN / NCCL versions, TF32 flags.
- ``cuda_tests``: ``pytest tests/test_cuda.py`` (they skip without CUDA, which fails
  the part on ``--device cuda``).
- ``compare``: CUDA against the CPU on the MNIST MLP (784-784-10 GeLU, B = 128), in
  float64 and float32: the oracles g, Hu, ∇³f(u,u), v² (DESIGN §3.1) and one step of
  every dynamics of ``sdesam.DYNAMICS``, the CPU step replaying the minibatches and
  Brownian increments the device step drew. Max relative error
  max|a − b| / max|a| of each vector (of the step increment x₁ − x₀ for steps).
- ``oracles``: ``benchmarks.oracles`` on the device at B = 128, 4096 and 32768 (v² and
  a step in units of one plain gradient, jet and generic autograd paths).
- ``figure2``: the ``figures.figure2 --full`` configuration for a few steps of each
  dynamics and one evaluation of the six metrics; extrapolated wall time of the run.
- ``weak_error``: one chunk (32 trajectories) of ``validation.weak_error --problem mlp
  --mlp-config gpu`` per model at η = 0.01; trajectories/s and the extrapolated wall
  time of ``--mode eta``.
- ``training``: ResNet-18 on CIFAR-10-shaped data (synthetic batches in the official
  pickle format unless CIFAR-10 is in the data directory) through
  ``sdesam.training.train`` for SGD, SAM and Eigen-SAM (p = 100, q = 5) in float32 and
  bf16 autocast: images/s, peak memory, the Eigen-SAM/SAM step-time ratio over a
  window of p steps holding one refresh; a plain PyTorch SGD loop as the baseline;
  SGD/SAM steps of ResNet-50 and WRN-28-10; extrapolated Table 1 cell and grid times.
- ``ddp``: ``torchrun`` (NCCL on CUDA with one process per GPU; gloo with two CPU
  processes) running tests/test_optim_ddp.py's check that data-parallel SAM, Eigen-SAM
  and EGR equal one process with the combined batch.

Outputs in ``--out``: ``report.json`` (everything, rewritten after every part),
``summary.md`` (readable) and ``logs.txt`` (every part's output). The parent process
runs no torch computation (it imports torch only through ``sdesam.cli``'s error
handling, which touches no device), so it survives whatever a part does.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import inspect
import json
import math
import os
import pickle
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

__all__ = ["PARTS", "DEFAULT_LIMITS", "SMALL_LIMITS", "PartContext", "run_check", "run_part", "main"]

REPO = Path(__file__).resolve().parent.parent
LOG_TAIL = 3000          # characters of a failed part's log kept in the report

#: part name → "module:function" run in a child process with a ``PartContext``.
PARTS = {
    "env": "benchmarks.gpu_check:part_env",
    "cuda_tests": "benchmarks.gpu_check:part_cuda_tests",
    "compare": "benchmarks.gpu_check:part_compare",
    "oracles": "benchmarks.gpu_check:part_oracles",
    "figure2": "benchmarks.gpu_check:part_figure2",
    "weak_error": "benchmarks.gpu_check:part_weak_error",
    "training": "benchmarks.gpu_check:part_training",
    "ddp": "benchmarks.gpu_check:part_ddp",
}
#: seconds per part for the full check; they sum to 470 s (the issue's budget: ~8 min).
DEFAULT_LIMITS = {"env": 20, "cuda_tests": 40, "compare": 45, "oracles": 60, "figure2": 70,
                  "weak_error": 55, "training": 130, "ddp": 50}
#: seconds per part for ``--small`` (each takes a few seconds on 2 CPU cores).
SMALL_LIMITS = {name: 60 for name in PARTS}


# ======================================================================================
# Running parts in child processes
# ======================================================================================
class PartContext:
    """What a part function receives, and where it writes its results.

    Attributes:
        name: the part's name.
        device: ``"cuda"`` or ``"cpu"`` (``"cuda:1"`` …).
        small: toy sizes (the CPU smoke mode).
        workdir: a scratch directory of this part (data, run directories).
        data_dir: the data directory (``$SDESAM_DATA`` when None).
        results: the part's JSON-serialisable results, saved by ``record``/``item``.
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
        """Write the results so far (atomically: a killed part leaves a readable file)."""
        tmp = self.result_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"results": self.results, "failed_items": self.failed_items},
                                  default=_json_default))
        tmp.replace(self.result_path)

    def record(self, key: str, value) -> None:
        self.results[key] = value
        self.save()

    @contextlib.contextmanager
    def item(self, name: str):
        """Run one measurement: an exception is recorded as ``failed: <reason>`` for this
        item (the part then fails) and the part continues with the next item."""
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


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


def _load_callable(spec: str):
    module, _, func = spec.partition(":")
    return getattr(importlib.import_module(module), func)


def _child_main(spec: str, ctx_file: str) -> int:
    """Entry of a part's process: run ``spec`` with the context described in ``ctx_file``."""
    ctx = PartContext(**json.loads(Path(ctx_file).read_text()))
    ctx.save()
    try:
        _load_callable(spec)(ctx)
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
    """Run one part in a child process (new session) with a time limit; never raises.

    Returns ``{"status": "ok" | "failed: <reason>", "wall_s", "limit_s", "results",
    "failed_items", "log"}``.
    """
    pdir = Path(workdir) / name
    pdir.mkdir(parents=True, exist_ok=True)
    result_path, log_path, ctx_path = pdir / "result.json", pdir / "log.txt", pdir / "context.json"
    result_path.unlink(missing_ok=True)
    ctx_path.write_text(json.dumps({"name": name, "device": device, "small": small,
                                    "workdir": str(pdir / "work"), "data_dir": data_dir,
                                    "result_path": str(result_path)}))
    (pdir / "work").mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if small:     # toy tensors: one thread each is far faster on a small shared machine
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--_part", spec, str(ctx_path)]
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


def _git_commit() -> str:
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
    and logs.txt in ``out`` after every part. Returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sdesam-gpu-check-"))
    report = {
        "check": "python -m benchmarks.gpu_check",
        "argv": list(argv) if argv is not None else None,
        "device": device, "small": small,
        "git_commit": _git_commit(), "hostname": socket.gethostname(),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()],
        "data_dir": data_dir or os.environ.get("SDESAM_DATA"), "workdir": str(workdir),
        "limits_s": {k: limits[k] for k in parts}, "parts": {},
    }
    t_start = time.perf_counter()
    logs = []

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
                for rest in list(parts)[list(parts).index(name):]:
                    saved = {}
                    with contextlib.suppress(OSError, json.JSONDecodeError):
                        saved = json.loads((workdir / rest / "result.json").read_text()) if rest == name else {}
                    report["parts"][rest] = {"status": f"failed: the check was interrupted ({exc or 'Ctrl-C'})",
                                             "wall_s": None, "limit_s": limits[rest],
                                             "results": saved.get("results", {}),
                                             "failed_items": saved.get("failed_items", {})}
                _finish(report, t_start, out, logs)
                raise
            _add_part(report, name, res, logs)
            _finish(report, t_start, out, logs)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return report


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
    _write_outputs(report, out, logs)


def _write_outputs(report: dict, out: Path, logs: list[str]) -> None:
    for fname, text in (("report.json", json.dumps(report, indent=1, default=_json_default)),
                        ("summary.md", format_summary(report)), ("logs.txt", "".join(logs))):
        tmp = out / (fname + ".tmp")
        tmp.write_text(text)
        tmp.replace(out / fname)


# ======================================================================================
# Helpers shared by the parts (torch is imported inside the parts only)
# ======================================================================================
def _sync(device) -> None:
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device) -> float:
    """Wall seconds of ``fn()`` including the device work it queued."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _rel_err(ref, other) -> float:
    """max|ref − other| / max|ref| (0 when both are 0)."""
    ref = ref.detach().double().cpu()
    diff = (ref - other.detach().double().cpu()).abs().max().item()
    scale = ref.abs().max().item()
    return diff / scale if scale > 0 else diff


def _mnist_or_none(data_dir):
    """(train, test) ImageDatasets of MNIST from the data directory, or None (no download)."""
    from sdesam.data import DatasetNotFoundError, load_dataset
    try:
        return load_dataset("mnist", data_dir, download=False)
    except DatasetNotFoundError:
        return None


def _kwargs_for(cls_or_fn, candidates: dict) -> dict:
    """The subset of ``candidates`` that ``cls_or_fn`` accepts (all of them with **kwargs)."""
    params = inspect.signature(cls_or_fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(candidates)
    return {k: v for k, v in candidates.items() if k in params}


def _make_dynamics(name: str, problem, **candidates):
    """``make_dynamics(name, problem, ...)`` with the hyperparameters its class accepts."""
    from sdesam.registry import REGISTRY, make_dynamics
    accepted = REGISTRY[name].hyperparameters
    return make_dynamics(name, problem, **{k: v for k, v in candidates.items() if k in accepted})


# ======================================================================================
# Parts
# ======================================================================================
def part_env(ctx: PartContext) -> None:
    """Versions and the device; fails on ``--device cuda`` without a usable GPU."""
    import importlib.util

    import numpy
    import torch
    env = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda, "python": platform.python_version(),
           "numpy": numpy.__version__, "cuda_available": torch.cuda.is_available(),
           "torchsde_installed": importlib.util.find_spec("torchsde") is not None,
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "platform": platform.platform()}
    if torch.cuda.is_available():
        env["device_count"] = torch.cuda.device_count()
        env["gpus"] = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            env["gpus"].append({"name": p.name, "memory_GiB": round(p.total_memory / 2**30, 1),
                                "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count})
        env["cudnn"] = torch.backends.cudnn.version()
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        env["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
        with contextlib.suppress(Exception):
            env["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        env["driver_smi"] = _nvidia_smi()
    ctx.record("env", env)
    with ctx.item("device"):
        dev = torch.device(ctx.device)
        x = torch.ones(1024, device=dev)
        if float((x @ x).item()) != 1024.0:
            raise CheckFailed(f"1024-vector dot product on {dev} is not 1024")
        ctx.record("device_ok", str(dev))


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def part_cuda_tests(ctx: PartContext) -> None:
    """``pytest tests/test_cuda.py`` (in this process); on CUDA every test must run and pass."""
    import pytest

    class Outcomes:
        def __init__(self):
            self.counts = {}

        def pytest_runtest_logreport(self, report):
            if report.when == "call" or report.outcome != "passed":
                self.counts[report.outcome] = self.counts.get(report.outcome, 0) + 1

    args = ["-q", "-rs", "-p", "no:cacheprovider", str(REPO / "tests" / "test_cuda.py")]
    outcomes = Outcomes()
    code = int(pytest.main(list(args), plugins=[outcomes]))   # pytest extends the list it gets
    ctx.record("pytest", {"command": "pytest " + " ".join(args[:-1]) + " tests/test_cuda.py",
                          "exit_code": code, "outcomes": outcomes.counts})
    with ctx.item("tests"):
        if code not in (0, 5):
            raise CheckFailed(f"pytest exit code {code}: {outcomes.counts}")
        if ctx.cuda and (outcomes.counts.get("skipped") or not outcomes.counts.get("passed")):
            raise CheckFailed(f"on CUDA every test must run and pass: {outcomes.counts}")


def _mlp_problems(ctx: PartContext, dtype_name: str):
    """The MNIST MLP as two ModuleProblems, on the CPU and on ``ctx.device``, same init."""
    import torch

    from sdesam.models import MLP
    from sdesam.problem import ModuleProblem
    hidden, n, B = (32, 512, 16) if ctx.small else (784, 8192, 128)
    data = _mnist_or_none(ctx.data_dir)
    if data is not None:
        train, _ = data
        X = (train.images[:n].reshape(n, -1).float() / 255.0 - train.mean[0]) / train.std[0]
        Y, source = train.labels[:n], "MNIST"
    else:
        g = torch.Generator().manual_seed(0)
        X, Y, source = torch.randn(n, 784, generator=g), torch.randint(10, (n,), generator=g), "synthetic"
    dtype = getattr(torch, dtype_name)
    out = []
    for device in ("cpu", ctx.device):
        torch.manual_seed(0)
        model = MLP(784, (hidden,), 10, activation="gelu")
        out.append(ModuleProblem(model, "cross_entropy", X, Y, B, dtype=dtype, device=device))
    return out[0], out[1], {"hidden": hidden, "n_train": n, "batch_size": B, "data": source}


def _replayed_step(name: str, cpu, dev, hyper: dict, M: int = 2):
    """One step of dynamics ``name`` on ``dev`` and on ``cpu`` from the same state, the CPU
    step replaying the device step's minibatches and Brownian increments (the generators
    of the two devices draw different numbers). Returns (increment cpu, increment dev)."""
    dyn_d = _make_dynamics(name, dev, **hyper)
    dyn_c = _make_dynamics(name, cpu, **hyper)
    sd = dyn_d.init_state(dev.x0.expand(M, -1), seed=3)
    sc = dyn_c.init_state(cpu.x0.expand(M, -1), seed=3)
    sc.x.copy_(sd.x.cpu())
    sc.extra = {k: v.detach().cpu().clone() for k, v in sd.extra.items()}
    tape = {"batches": [], "noise": []}

    def recorder(obj, attr, key):
        orig = getattr(obj, attr)

        def wrapper(*args, **kwargs):
            value = orig(*args, **kwargs)
            tape[key].append(value.detach().cpu().clone())
            return value
        return _patched(obj, attr, wrapper)

    def replayer(obj, attr, key):
        return _patched(obj, attr, lambda *args, **kwargs: tape[key].pop(0))

    x0 = sd.x.clone()
    with contextlib.ExitStack() as stack:
        stack.enter_context(recorder(dev, "sample_batches", "batches"))

        dyn_d.advance(sd, 1)
    with contextlib.ExitStack() as stack:
        stack.enter_context(replayer(cpu, "sample_batches", "batches"))

        dyn_c.advance(sc, 1)
    if any(tape.values()):
        raise CheckFailed(f"the CPU step did not replay every draw of the device step ({ {k: len(v) for k, v in tape.items()} })")
    return sc.x - x0.cpu(), sd.x - x0


@contextlib.contextmanager
def _patched(obj, attr: str, value):
    """Set the instance attribute ``obj.attr = value`` for the block, then restore it."""
    own = vars(obj)
    had, old = attr in own, own.get(attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        if had:
            setattr(obj, attr, old)
        else:
            delattr(obj, attr)


#: tolerance on the max relative error CUDA vs CPU, by dtype
COMPARE_TOL = {"float64": 1e-9, "float32": 1e-3}


def part_compare(ctx: PartContext) -> None:
    """Oracles and one step of every dynamics: ``ctx.device`` against the CPU."""
    import torch

    from sdesam.registry import DYNAMICS
    torch.manual_seed(0)
    K = 2 if ctx.small else 8
    hyper = {"eta": 0.01, "rho": 0.2, "n_batches": K, "substeps": 1}
    ctx.record("setup", {"reference": "cpu", "device": ctx.device, "dynamics_hyperparameters": hyper,
                         "error": "max|a - b| / max|a| (steps: of the increment x1 - x0)",
                         "tolerance": COMPARE_TOL})
    for dtype in ("float64", "float32"):
        tol = COMPARE_TOL[dtype]
        errs = {}
        with ctx.item(f"{dtype}/problem"):
            cpu, dev, info = _mlp_problems(ctx, dtype)
            ctx.record(f"problem_{dtype}", info)
        if f"{dtype}/problem" in ctx.failed_items:
            continue
        with ctx.item(f"{dtype}/oracles"):
            B = cpu.batch_size
            idx = torch.arange(2 * B).reshape(2, B)
            a = cpu.taylor(cpu.x0, idx, "sam", 0.2, components=True)
            b = dev.taylor(dev.x0, idx.to(dev.device), "sam", 0.2, components=True)
            errs["oracles"] = {n: _rel_err(getattr(a, n), getattr(b, n)) for n in ("g", "h", "t", "v")}
            ctx.record(f"max_rel_err_{dtype}", errs)
            bad = {n: e for n, e in errs["oracles"].items() if not e <= tol}
            if bad:
                raise CheckFailed(f"oracle errors above {tol:g}: {bad}")
        errs["steps"] = {}
        for name in DYNAMICS:
            with ctx.item(f"{dtype}/step/{name}"):
                inc_c, inc_d = _replayed_step(name, cpu, dev, hyper)
                e = _rel_err(inc_c, inc_d)
                errs["steps"][name] = e
                ctx.record(f"max_rel_err_{dtype}", errs)
                if not e <= tol:
                    raise CheckFailed(f"step error {e:.3g} above {tol:g}")


def part_oracles(ctx: PartContext) -> None:
    """``benchmarks.oracles`` on the device at B = 128, at B = 4096 (the most its 4,096
    examples allow) and, with its data enlarged to B examples, at B = 32768 (a batch
    that fills the GPU)."""
    from benchmarks import oracles
    runs = {"B=16": 16, "B=64": 64} if ctx.small else {"B=128": 128, "B=4096": 4096, "B=32768": 32768}
    extra = ["--repeats", "2", "--n-batches", "2"] if ctx.small else ["--repeats", "20"]
    data = [] if ctx.data_dir is None else ["--data-dir", ctx.data_dir]
    # the per-block-size lines (looped vs batched oracles, their own fixed models) once,
    # with the first batch size; toy block sizes in the smoke mode
    blocks = ["--block-sizes", "1,4", "--block-repeats", "1"] if ctx.small else ["--block-repeats", "3"]
    for i, (label, B) in enumerate(runs.items()):
        with ctx.item(label):
            argv = ["--device", ctx.device, "--batch-size", str(B), *extra, *data,
                    *(blocks if i == 0 else ["--block-sizes", ""])]
            enlarged = i == len(runs) - 1
            patch = contextlib.nullcontext()
            if enlarged:
                examples = oracles._mnist_like          # (n, data_dir, seed) -> (inputs, labels, source)
                patch = _patched(oracles, "_mnist_like", lambda n, d, s: examples(max(n, B), d, s))
            with patch:
                res = oracles.main(argv)
            ctx.record(label, {"argv": argv, "examples_enlarged_to_B": enlarged, **res})


def _synthetic_figure2_problem(cfg, device):
    """Figure 2's problem on standard-normal MNIST-shaped inputs with uniform labels
    (60,000 train, 10,000 test), for when MNIST is absent."""
    import torch

    from figures import figure2
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(70_000, 784, generator=g), torch.randint(10, (70_000,), generator=g)
    return figure2.mlp_problem(cfg, x[:60_000], y[:60_000], (x[60_000:], y[60_000:]), device)


def part_figure2(ctx: PartContext) -> None:
    """Figure 2 ``--full``: a few timed steps of each dynamics and one metrics evaluation;
    the extrapolated wall time of the whole ``--full`` run."""
    import dataclasses

    import torch

    from figures import figure2
    from sdesam.metrics import ClassificationMetrics
    from sdesam.simulate import record_steps
    cfg = figure2.Config.full()
    if ctx.small:
        cfg = dataclasses.replace(cfg, n_batches=2, substeps=1, batch_size=16, hessian_examples=128)
    warmup, timed = (1, 2) if ctx.small else (2, 8)
    ctx.record("config", dataclasses.asdict(cfg))
    device = torch.device(ctx.device)
    t0 = time.perf_counter()
    if _mnist_or_none(ctx.data_dir) is not None:
        problem, source = figure2.load_problem(cfg, device, ctx.data_dir), "MNIST"
    else:   # the timings depend on the shapes only: MNIST-shaped Gaussian images keep the part running
        problem, source = _synthetic_figure2_problem(cfg, device), "synthetic (MNIST not found in the data directory)"
    ctx.record("data", source)
    if ctx.small:      # the metrics' full-data passes over 70,000 images take too long on a CPU
        from sdesam.problem import ModuleProblem
        problem = ModuleProblem(problem.model, "cross_entropy", problem.inputs[:2048], problem.targets[:2048],
                                cfg.batch_size, test=(problem.test[0][:512], problem.test[1][:512]),
                                dtype=problem.dtype, device=problem.device)
    ctx.record("load_s", round(time.perf_counter() - t0, 2))
    n_records = len(record_steps(cfg.steps, cfg.record_every))
    step_s, metric_s = {}, None
    with ctx.item("metrics"):
        metrics = ClassificationMetrics(problem, hessian_examples=cfg.hessian_examples, eig_tol=cfg.eig_tol,
                                        seed=cfg.init_seed)
        values = {}
        first = _timed(lambda: values.update(metrics(problem.x0)), device)
        metric_s = first if ctx.small else _timed(lambda: values.update(metrics(problem.x0)), device)
        ctx.record("metrics", {"first_call_s": first, "seconds": metric_s, "values_at_x0": values})
    for dyn in figure2.make_all_dynamics(cfg, problem):
        with ctx.item(f"step/{dyn.name}"):
            state = dyn.init_state(seed=0)
            dyn.advance(state, warmup)
            t = _timed(lambda: dyn.advance(state, timed), device)
            step_s[dyn.name] = t / timed
            ctx.record("seconds_per_step", step_s)
    if metric_s is not None and len(step_s) == len(cfg.dynamics):
        per_dyn = {n: cfg.seeds * (cfg.steps * s + n_records * metric_s) for n, s in step_s.items()}
        ctx.record("extrapolated", {
            "seconds_per_dynamics": per_dyn, "total_s": sum(per_dyn.values()),
            "formula": "seeds x (steps x seconds_per_step + records x metrics seconds), summed over dynamics",
            "seeds": cfg.seeds, "steps": cfg.steps, "records": n_records,
            "note": "metrics timed at the initialisation; Lanczos needs a varying number of HVPs later"})


def part_weak_error(ctx: PartContext) -> None:
    """One chunk of ``validation.weak_error --problem mlp --mlp-config gpu`` per model at
    η = 0.01: trajectories/s, and the extrapolated wall time of ``--mode eta``."""
    import torch

    from sdesam.simulate import record_steps
    from validation.experiment import SDE_MODELS, num_steps
    from validation.mlp import MLP_CONFIGS, mlp_problem, mlp_test_functions
    from sdesam.montecarlo import run_chunk
    name = "quick-cpu" if ctx.small else "gpu"
    cfg = MLP_CONFIGS[name]
    dataset = "mnist" if _mnist_or_none(ctx.data_dir) is not None else "synthetic"
    problem, ex, ey, source = mlp_problem(cfg, dataset, data_dir=ctx.data_dir, device=torch.device(ctx.device))
    tests = mlp_test_functions(problem, ex, ey, -1)
    eta = min(cfg.etas, key=lambda e: abs(e - 0.01))
    rho = cfg.c * eta ** (1 / 3)
    n = 2 * cfg.record_every
    ctx.record("setup", {"mlp_config": name, **cfg.to_dict(), "dataset": source, "eta": eta, "rho": rho,
                         "timed_steps": n, "chunk_size": cfg.chunk_size})
    per_step = {}
    runs = [("discrete", "sam", {})] + [(label, dyn, {"n_batches": cfg.n_batches, "substeps": cfg.substeps})
                                        for label, dyn in SDE_MODELS.items()]
    for label, dname, kw in runs:
        with ctx.item(label):
            dyn = _make_dynamics(dname, problem, eta=eta, rho=rho, **kw)
            chunk = dict(chunk_size=cfg.chunk_size, blocks_per_chunk=cfg.blocks_per_chunk, tests=tests)
            run_chunk(dyn, problem.x0, 0, record_steps=[0, 1], **chunk)            # warm-up
            t = _timed(lambda: run_chunk(dyn, problem.x0, 1, record_steps=record_steps(n, cfg.record_every),
                                         **chunk), problem.device)
            per_step[label] = t / n
            N = num_steps(cfg.horizon, eta)
            ctx.record("runs", {lab: {"seconds_per_chunk_step": s,
                                      "trajectory_steps_per_s": cfg.chunk_size / s,
                                      f"trajectories_per_s_over_T={cfg.horizon}": cfg.chunk_size / (s * N)}
                                for lab, s in per_step.items()})
    if len(per_step) == len(runs):
        total = sum(num_steps(cfg.horizon, e) * cfg.n_chunks * sum(per_step.values()) for e in cfg.etas)
        ctx.record("extrapolated", {
            "mode_eta_total_s": total, "etas": list(cfg.etas), "n_chunks": cfg.n_chunks,
            "formula": "sum over etas of (T/eta) x n_chunks x sum over runs of seconds_per_chunk_step "
                       "(discrete SAM and the three SDEs; bootstrap and plots not included)"})


# -- training -----------------------------------------------------------------------------
def write_synthetic_cifar10(folder: Path, n_per_batch: int, n_test: int, seed: int = 0) -> None:
    """CIFAR-10 in the official "python version" layout (``data_batch_1..5``,
    ``test_batch``: pickled dicts with b"data" uint8 (n, 3072) and b"labels"), random pixels."""
    import numpy as np
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in names:
        batch = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)],
                 b"filenames": [b"synthetic_%d.png" % i for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))


def _step_timer(device):
    """A training callback that timestamps the start of every step after a device sync:
    step k lasts ``times[k+1] - times[k]``."""
    from sdesam.training import Callback

    class StepTimes(Callback):
        every_steps = 1

        def __init__(self):
            self.times = []

        def on_step(self, ctx_):
            _sync(device)
            self.times.append(time.perf_counter())
            return None
    return StepTimes()


def _plain_sgd(model_name: str, model_kwargs: dict, batch: int, steps: int, warmup: int, device, amp: bool,
               eval_batch: int) -> dict:
    """A plain PyTorch SGD loop (fixed batch, channels-last on CUDA as the trainer) and the
    eval-mode forward throughput: the baseline for the trainer's images/s."""
    import torch
    from torch import nn

    from sdesam.models import build_model
    cuda = str(device).startswith("cuda")
    torch.manual_seed(0)
    model = build_model(model_name, 10, 3, **model_kwargs).to(device)
    fmt = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5)
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if amp \
        else contextlib.nullcontext

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    t = _timed(lambda: [step() for _ in range(steps)], device)
    xe = torch.randn(eval_batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    model.eval()
    with torch.no_grad(), autocast():
        model(xe)
        te = _timed(lambda: [model(xe) for _ in range(3)], device)
    return {"images_per_s": batch * steps / t, "seconds_per_step": t / steps,
            "eval_images_per_s": 3 * eval_batch / te}


def _other_model_steps(name: str, kwargs: dict, batch: int, steps: int, warmup: int, device) -> dict:
    """Seconds per step of SGD and SAM (bf16 autocast on CUDA, as the trainer) on another
    Table 1 architecture, through ``sdesam.optim.SAM`` with the trainer's closure."""
    import torch
    from torch import nn

    from sdesam.models import build_model
    from sdesam.optim import SAM
    cuda = str(device).startswith("cuda")
    fmt = torch.channels_last if cuda else torch.contiguous_format
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(10, (batch,), device=device)
    out = {}
    for method in ("sgd", "sam"):
        torch.manual_seed(0)
        model = build_model(name, 10, 3, **kwargs).to(device).to(memory_format=fmt).train()
        base = dict(lr=0.1, momentum=0.9, weight_decay=5e-5)
        opt = torch.optim.SGD(model.parameters(), **base) if method == "sgd" else \
            SAM(model.parameters(), base_optimizer=torch.optim.SGD, rho=0.05, model=model, **base)

        def closure():
            with (torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()):
                return nn.functional.cross_entropy(model(x).float(), y)

        def step():
            if method == "sam":
                opt.step(closure)
            else:
                opt.zero_grad(set_to_none=True)
                closure().backward()
                opt.step()
        for _ in range(warmup):
            step()
        out[method] = _timed(lambda: [step() for _ in range(steps)], device) / steps
        del model, opt
    return out


def part_training(ctx: PartContext) -> None:
    """ResNet-18 on CIFAR-10-shaped data through ``sdesam.training.train``: SGD, SAM and
    Eigen-SAM in float32 and bf16 autocast; a plain PyTorch SGD baseline; other Table 1
    architectures; extrapolated Table 1 times."""
    import torch

    from sdesam.data import DatasetNotFoundError, load_dataset
    from sdesam.training import TrainConfig, table1, train
    from sdesam.training.presets import TABLE1_DATASETS, TABLE1_METHODS, TABLE1_MODELS
    small = ctx.small
    batch, p, q, warmup = (8, 4, 2, 2) if small else (256, 100, 5, 10)
    width = {"width": 4} if small else {}
    steps = warmup + p + 1                      # step times: warmup … warmup+p−1 (one refresh: step p)
    data_dir = ctx.data_dir
    try:
        load_dataset("cifar10", data_dir)
        source = "CIFAR-10 from the data directory"
    except DatasetNotFoundError:
        data_dir = str(ctx.workdir / "data")
        per = math.ceil(steps * batch / 5) + batch
        write_synthetic_cifar10(Path(data_dir) / "cifar-10-batches-py", per, 2 * batch if small else 1000)
        source = f"synthetic CIFAR-10-shaped batches in the official pickle format ({5 * per} train images)"
    ctx.record("setup", {"data": source, "model": "resnet18", "model_kwargs": width, "batch_size": batch,
                         "p": p, "q": q, "warmup_steps": warmup, "timed_steps": p, "device": ctx.device})
    cuda = ctx.cuda
    runs = {}
    for amp in ("none", "bf16"):
        for method in ("sgd", "sam", "eigen_sam"):
            key = f"{method}/{'fp32' if amp == 'none' else 'bf16'}"
            with ctx.item(key):
                timer = _step_timer(ctx.device)
                run_dir = ctx.workdir / "runs" / key.replace("/", "-")
                shutil.rmtree(run_dir, ignore_errors=True)          # a reused --workdir: start afresh
                cfg = TrainConfig(dataset="cifar10", data_dir=data_dir, model="resnet18", model_kwargs=width,
                                  method=method, steps=steps, epochs=None, batch_size=batch, p=p, q=q,
                                  amp=amp, device=ctx.device, eval_batch_size=batch if small else 1000,
                                  out_dir=str(run_dir), checkpoint=False,
                                  progress=False)
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                result = train(cfg, callbacks=[timer])
                t = timer.times
                if len(t) != steps:
                    raise CheckFailed(f"expected {steps} step callbacks, got {len(t)}")
                window = t[warmup + p] - t[warmup]
                durations = [b - a for a, b in zip(t[warmup:warmup + p], t[warmup + 1:warmup + p + 1])]
                runs[key] = {"images_per_s": batch * p / window, "seconds_per_step": window / p,
                             "median_step_s": statistics.median(durations), "max_step_s": max(durations),
                             "peak_memory_GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                             "train_loss": result.history[-1]["train_loss"]}
                if method == "eigen_sam":
                    runs[key]["eigenvalue_estimate"] = result.history[-1].get("eigenvalue_estimate")
                ctx.record("trainer", runs)
    ratios = {}
    for prec in ("fp32", "bf16"):
        if f"sam/{prec}" in runs and f"eigen_sam/{prec}" in runs:
            ratios[prec] = runs[f"eigen_sam/{prec}"]["seconds_per_step"] / runs[f"sam/{prec}"]["seconds_per_step"]
    ctx.record("eigen_sam_over_sam_step_time", {**ratios, "p": p, "q": q, "paper_estimate": 1 + q / p})
    baseline = {}
    for prec, amp in (("fp32", False), ("bf16", True)):
        with ctx.item(f"plain_sgd/{prec}"):
            baseline[prec] = _plain_sgd("resnet18", width, batch, p, warmup, ctx.device, amp,
                                        batch if small else 1000)
            if f"sgd/{prec}" in runs:
                baseline[prec]["trainer_sgd_over_plain_images_per_s"] = (
                    runs[f"sgd/{prec}"]["images_per_s"] / baseline[prec]["images_per_s"])
            ctx.record("plain_pytorch_sgd", baseline)
    others = {}
    small_models = {"resnet50": ("resnet50", {"width": 4}), "wrn28_10": ("wrn", {"depth": 10, "widen_factor": 1})}
    for model in TABLE1_MODELS:
        if model == "resnet18":
            continue
        with ctx.item(f"model/{model}"):
            name, kw = small_models.get(model, (model, {})) if small else (model, {})
            others[model] = _other_model_steps(name, kw, batch, 2 if small else 8, 1 if small else 3, ctx.device)
            ctx.record("other_models_seconds_per_step", others)
    # extrapolation (bf16 autocast is the trainer's default on CUDA)
    prec = "bf16" if cuda else "fp32"
    if not all(f"{m}/{prec}" in runs for m in ("sgd", "sam", "eigen_sam")) or prec not in baseline:
        return
    ratio = ratios[prec]
    step_s = {"resnet18": {m: runs[f"{m}/{prec}"]["seconds_per_step"] for m in ("sgd", "sam", "eigen_sam")}}
    for model, t in others.items():
        step_s[model] = {"sgd": t["sgd"], "sam": t["sam"], "eigen_sam": t["sam"] * ratio}
    sizes = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "svhn": (73257, 26032),
             "fashion_mnist": (60000, 10000)}
    eval_ips = baseline[prec]["eval_images_per_s"]
    seeds = 3

    def cell_s(dataset, model, method):
        c = table1(dataset, model, method)
        n_train, n_test = sizes[dataset]
        per_epoch = (n_train // c.batch_size) * step_s[model][method] * (c.batch_size / batch)
        return c.epochs * (per_epoch + n_test / eval_ips)

    cells = {f"{d}/{m}/{meth}": cell_s(d, m, meth) for d in TABLE1_DATASETS for m in step_s for meth in TABLE1_METHODS}
    ctx.record("extrapolated", {
        "precision": prec,
        "cell_cifar10_resnet18_eigen_sam_s": cells["cifar10/resnet18/eigen_sam"],
        "cell_s": cells, "seeds": seeds,
        "grid_models": sorted(step_s), "grid_s": seeds * sum(cells.values()),
        "grid_resnet18_only_s": seeds * sum(v for k, v in cells.items() if "/resnet18/" in k),
        "formula": "epochs x (floor(n_train / 256) x seconds_per_step + n_test / eval images/s), Table 1 "
                   "presets (SGD 400 epochs, others 200); x seeds summed over datasets, models, methods",
        "notes": ["other architectures: Eigen-SAM = SAM x the ResNet-18 ratio",
                  "Fashion-MNIST (1x28x28) and SVHN timed as CIFAR (3x32x32)",
                  "data loading and checkpoints not included",
                  *([] if batch == 256 else [f"measured at batch {batch}, scaled linearly to 256"])]})


# -- data parallel ------------------------------------------------------------------------
DDP_KINDS = ("sam", "eigen_sam", "egr")


def _ddp_run(kind: str, device, rank: int = 0, world: int = 1, ddp: bool = False):
    """tests/test_optim_ddp.run on ``device``: STEPS steps of ``kind`` on this process's
    share of each combined batch; returns the flat parameters (on the CPU)."""
    import torch
    from torch import nn

    from tests.test_optim import flat, make_data, make_net
    from tests.test_optim_ddp import BATCH, STEPS, build
    X, Y = make_data(STEPS * BATCH)
    X, Y = X.to(device), Y.to(device)
    net = make_net(bn=False).to(device)
    cuda = torch.device(device).type == "cuda"
    model = nn.parallel.DistributedDataParallel(net, device_ids=[torch.device(device).index] if cuda else None) \
        if ddp else net
    opt = build(kind, net, model)
    share = BATCH // world
    for k in range(STEPS):
        rows = slice(k * BATCH + rank * share, k * BATCH + (rank + 1) * share)
        opt.step(lambda: nn.functional.cross_entropy(model(X[rows]), Y[rows]))
    return flat(net).detach().cpu()


def _ddp_worker(out_prefix: str, device_type: str) -> None:
    """Entry of one torchrun process: the data-parallel runs, saved to ``out_prefix.RANK``."""
    import torch
    import torch.distributed as dist
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        results = {kind: _ddp_run(kind, device, dist.get_rank(), dist.get_world_size(), ddp=True)
                   for kind in DDP_KINDS}
        results["backend"] = dist.get_backend()
        torch.save(results, f"{out_prefix}.{dist.get_rank()}")
    finally:
        dist.destroy_process_group()


#: max |DDP − one process| accepted (float64; tests/test_optim_ddp.py uses 1e-12 on CPU)
DDP_TOL = {"cpu": 1e-12, "cuda": 1e-10}


def part_ddp(ctx: PartContext) -> None:
    """torchrun with NCCL (one process per GPU) or gloo (two CPU processes): DDP equals one
    process with the combined batch."""
    import torch
    device_type = "cuda" if ctx.cuda else "cpu"
    nproc = torch.cuda.device_count() if ctx.cuda else 2
    prefix = str(ctx.workdir / "ddp-result")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "benchmarks.gpu_check", "--_ddp-worker", prefix, device_type]
    ctx.record("setup", {"command": " ".join(cmd[2:]), "nproc": nproc,
                         "backend": "nccl" if ctx.cuda else "gloo", "tolerance": DDP_TOL[device_type]})
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
    ctx.record("torchrun", {"returncode": proc.returncode, "wall_s": round(time.perf_counter() - t0, 2)})
    if proc.returncode != 0:
        raise CheckFailed(f"torchrun exit code {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]} ")
    device = torch.device("cuda", 0) if ctx.cuda else torch.device("cpu")
    ranks = [torch.load(f"{prefix}.{r}", weights_only=True) for r in range(nproc)]
    ctx.record("backend", ranks[0]["backend"])
    diffs = {}
    for kind in DDP_KINDS:
        with ctx.item(kind):
            single = _ddp_run(kind, device)
            diffs[kind] = max((res[kind] - single).abs().max().item() for res in ranks)
            ctx.record("max_abs_diff_vs_combined_batch", diffs)
            if not diffs[kind] <= DDP_TOL[device_type]:
                raise CheckFailed(f"DDP differs from one process by {diffs[kind]:.3g}")


# ======================================================================================
# Summary
# ======================================================================================
def _fmt(v, spec=".3g") -> str:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return format(v, spec)
    return "-" if v is None else str(v)


def _hours(s) -> str:
    return "-" if s is None else (f"{s / 3600:.1f} h" if s >= 3600 else f"{s:.0f} s")


def format_summary(report: dict) -> str:
    """report.json → summary.md (the key numbers of each part)."""
    parts = report["parts"]
    env = parts.get("env", {}).get("results", {}).get("env", {})
    gpus = ", ".join(f"{g['name']} ({g['memory_GiB']} GiB)" for g in env.get("gpus", [])) or "none"
    lines = [f"# sdesam GPU check — {'OK' if report.get('ok') else 'FAILURES'}", "",
             f"- date: {report['date_utc']}; host: {report['hostname']}; commit: {report['git_commit']}",
             f"- device: {report['device']}{' (--small)' if report['small'] else ''}; GPU: {gpus}",
             f"- torch {env.get('torch', '?')}, CUDA {env.get('cuda_runtime', '-')}, cuDNN {env.get('cudnn', '-')}, "
             f"NCCL {env.get('nccl', '-')}, Python {report['python']}, {report['cpu_count']} CPUs",
             f"- total wall time {report.get('total_wall_s', 0):.0f} s; load average before "
             f"{report['load_average_before']}, after {report.get('load_average_after')}", "",
             "| part | status | wall s | limit s |", "|---|---|---|---|"]
    for name, p in parts.items():
        lines.append(f"| {name} | {p['status'][:160]} | {_fmt(p['wall_s'])} | {p['limit_s']:g} |")
    for name, p in parts.items():
        r = p.get("results", {})
        try:
            body = _SUMMARIES.get(name, lambda r: [])(r) if r else []
        except Exception as exc:                       # noqa: BLE001 — the summary must not fail
            body = [f"- (summary not available: {type(exc).__name__}: {exc}; see report.json)"]
        if body:
            lines += ["", f"## {name}", "", *body]
    return "\n".join(lines) + "\n"


def _sum_compare(r):
    out = []
    for dtype in ("float64", "float32"):
        e = r.get(f"max_rel_err_{dtype}")
        if not e:
            continue
        o = e.get("oracles", {})
        out.append(f"- {dtype} (tolerance {COMPARE_TOL[dtype]:g}): oracles "
                   + ", ".join(f"{k} {_fmt(v, '.1e')}" for k, v in o.items())
                   + "; one step: " + ", ".join(f"{k} {_fmt(v, '.1e')}" for k, v in e.get("steps", {}).items()))
    return out


def _sum_oracles(r):
    keys = ("gradient_ms", "v2_over_gradient", "v2_generic_autograd_over_gradient", "sam_step_over_gradient",
            "sde3_step_over_gradient")
    out = []
    for label, v in r.items():
        if isinstance(v, dict) and "gradient_ms" in v:
            out.append(f"- {label}: " + ", ".join(f"{k} {_fmt(v.get(k))}" for k in keys))
    return out


def _sum_figure2(r):
    out = []
    if "seconds_per_step" in r:
        out.append("- seconds per step: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r["seconds_per_step"].items()))
    if "metrics" in r:
        out.append(f"- one evaluation of the six metrics: {_fmt(r['metrics']['seconds'])} s")
    if "extrapolated" in r:
        out.append(f"- extrapolated `figures.figure2 --full`: {_hours(r['extrapolated']['total_s'])}")
    return out


def _sum_weak(r):
    out = [f"- {k}: {_fmt(v['trajectory_steps_per_s'])} trajectory-steps/s; "
           + "; ".join(f"{_fmt(x)} {n.replace('_per_s', '/s')}" for n, x in v.items() if n.startswith("trajectories"))
           for k, v in r.get("runs", {}).items()]
    if "extrapolated" in r:
        out.append(f"- extrapolated `--mode eta` (mlp-config gpu): {_hours(r['extrapolated']['mode_eta_total_s'])}")
    return out


def _sum_training(r):
    out = []
    for k, v in r.get("trainer", {}).items():
        mem = v.get("peak_memory_GiB")
        out.append(f"- {k}: {_fmt(v['images_per_s'], '.0f')} images/s, {_fmt(v['seconds_per_step'])} s/step"
                   + (f", peak {mem:.2f} GiB" if mem is not None else ""))
    ratio = r.get("eigen_sam_over_sam_step_time", {})
    if ratio:
        out.append(f"- Eigen-SAM / SAM step time (p={ratio.get('p')}, q={ratio.get('q')}): "
                   f"fp32 {_fmt(ratio.get('fp32'), '.4f')}, bf16 {_fmt(ratio.get('bf16'), '.4f')} "
                   f"(paper {_fmt(ratio.get('paper_estimate'), '.3f')})")
    for k, v in r.get("plain_pytorch_sgd", {}).items():
        out.append(f"- plain PyTorch SGD {k}: {_fmt(v['images_per_s'], '.0f')} images/s; trainer SGD / plain "
                   f"{_fmt(v.get('trainer_sgd_over_plain_images_per_s'))}")
    ex = r.get("extrapolated")
    if ex:
        out.append(f"- extrapolated Table 1 cell (CIFAR-10, ResNet-18, Eigen-SAM, {ex['precision']}): "
                   f"{_hours(ex['cell_cifar10_resnet18_eigen_sam_s'])}; grid ({', '.join(ex['grid_models'])}; "
                   f"{ex['seeds']} seeds): {_hours(ex['grid_s'])} on one GPU")
    return out


def _sum_ddp(r):
    if "max_abs_diff_vs_combined_batch" not in r:
        return []
    return [f"- {r.get('setup', {}).get('nproc')} process(es), backend {r.get('backend')}: max |DDP − combined batch| "
            + ", ".join(f"{k} {_fmt(v, '.1e')}" for k, v in r["max_abs_diff_vs_combined_batch"].items())]


def _sum_env(r):
    return [f"- {k}: {v}" for k, v in r.get("env", {}).items() if k in ("gpus", "tf32_matmul", "tf32_cudnn",
                                                                       "torchsde_installed", "driver_smi")]


def _sum_cuda_tests(r):
    return [f"- `{r['pytest']['command']}`: {r['pytest']['outcomes']}"] if "pytest" in r else []


_SUMMARIES = {"env": _sum_env, "cuda_tests": _sum_cuda_tests, "compare": _sum_compare, "oracles": _sum_oracles,
              "figure2": _sum_figure2, "weak_error": _sum_weak, "training": _sum_training, "ddp": _sum_ddp}


# ======================================================================================
# Command line
# ======================================================================================
def _limit(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS, got {text!r}")
    if name not in PARTS or not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS with NAME in {list(PARTS)} and SECONDS > 0, "
                                         f"got {text!r}")
    return name, seconds


def parse_args(argv=None) -> argparse.Namespace:
    from sdesam.cli import prog_name
    ap = argparse.ArgumentParser(prog=prog_name("python -m benchmarks.gpu_check"), description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--small", action="store_true", help="toy sizes (the CPU smoke mode of the test suite)")
    ap.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="report directory")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--limit", type=_limit, action="append", default=[], metavar="PART=SECONDS",
                    help="time limit of one part (repeatable); defaults: "
                         + ", ".join(f"{k}={v}" for k, v in DEFAULT_LIMITS.items()) + f" (sum {sum(DEFAULT_LIMITS.values())} s)"
                         f"; with --small {SMALL_LIMITS['env']} s each")
    ap.add_argument("--data-dir", default=None, help="data directory (default $SDESAM_DATA)")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new temp dir)")
    args = ap.parse_args(argv)
    if args.device != "cpu" and not args.device.startswith("cuda"):
        ap.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    names = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown or not names:
        ap.error(f"--parts must name parts of {list(PARTS)}, got {args.parts!r}")
    args.part_names = names
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--_part"]:
        return _child_main(argv[1], argv[2])
    if argv[:1] == ["--_ddp-worker"]:
        _ddp_worker(argv[1], argv[2])
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
