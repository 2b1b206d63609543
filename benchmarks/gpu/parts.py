"""The parts of the GPU check: each ``part_*(ctx)`` runs in its own process (``harness``).

A part records its results through the ``PartContext`` as it produces them; each
measurement is an *item* (``ctx.item``) that fails on its own. torch and the library
are imported inside the parts, so that importing this module costs nothing.

- ``part_env``: versions, the GPUs, TF32 flags; a small computation on the device.
- ``part_cuda_tests``: ``pytest tests/test_cuda.py``.
- ``part_compare``: oracles and one step of every dynamics, the device against the CPU
  (``step_increments``; the library draws its random numbers on CPU generators, so the
  two steps use the same minibatches and Brownian increments).
- ``part_oracles``: ``benchmarks.oracles`` on the device at several batch sizes.
- ``part_figure2``: timed steps and metrics of ``figures.figure2 --full``.
- ``part_weak_error``: one Monte Carlo chunk per model of ``validation.weak_error``.
- ``part_training``: the trainer on ResNet-18 and other Table 1 architectures.
- ``part_ddp``: ``torchrun`` of ``sdesam.testing.ddp_equivalence_run`` against one process.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from .harness import CHECK_MODULE, REPO, CheckFailed, PartContext

__all__ = ["part_env", "part_cuda_tests", "part_compare", "part_oracles", "part_figure2", "part_weak_error",
           "part_training", "part_ddp", "ddp_worker", "step_increments", "rel_err", "accepted_hyperparameters",
           "write_synthetic_cifar10", "COMPARE_TOL", "DDP_KINDS", "DDP_TOL"]


# -- helpers ------------------------------------------------------------------------------
def _sync(device) -> None:
    """Wait for the queued work of a CUDA device (nothing on the CPU)."""
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


def rel_err(ref, other) -> float:
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


def accepted_hyperparameters(name: str, candidates: dict) -> dict:
    """The entries of ``candidates`` that dynamics ``name`` takes (``REGISTRY[name].hyperparameters``)."""
    from sdesam.registry import REGISTRY
    accepted = REGISTRY[name].hyperparameters
    return {k: v for k, v in candidates.items() if k in accepted}


# -- env, tests ---------------------------------------------------------------------------
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
    """``nvidia-smi``'s GPU name, driver and memory lines, or None."""
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


# -- compare ------------------------------------------------------------------------------
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


def step_increments(name: str, a, b, candidates: dict, trajectories: int = 2, seed: int = 3):
    """One step of dynamics ``name`` on problems ``a`` and ``b`` (e.g. the same problem on
    the CPU and on a GPU), from each one's ``x0`` repeated for ``trajectories``
    trajectories, with the same seed. The dynamics gets the entries of ``candidates`` it
    accepts (``accepted_hyperparameters``). Returns the increments x₁ − x₀ on ``a`` and on ``b``."""
    from sdesam.registry import make_dynamics
    kwargs = accepted_hyperparameters(name, candidates)
    increments = []
    for problem in (a, b):
        dyn = make_dynamics(name, problem, **kwargs)
        state = dyn.init_state(problem.x0.expand(trajectories, -1), seed=seed)
        x0 = state.x.clone()
        dyn.advance(state, 1)
        increments.append(state.x - x0)
    return increments[0], increments[1]


#: tolerance on the max relative error CUDA vs CPU, by dtype
COMPARE_TOL = {"float64": 1e-9, "float32": 1e-3}


def part_compare(ctx: PartContext) -> None:
    """Oracles and one step of every dynamics: ``ctx.device`` against the CPU, in float64
    and float32. Each dynamics takes those of η, ρ, K and m = 1 it accepts, and a
    Hessian-based eigenvector is taken over the first B training examples
    (``hessian_subset``)."""
    import torch

    from sdesam.registry import DYNAMICS
    torch.manual_seed(0)
    K = 2 if ctx.small else 8
    hyper = {"eta": 0.01, "rho": 0.2, "n_batches": K, "substeps": 1}
    ctx.record("setup", {"reference": "cpu", "device": ctx.device, "dynamics_hyperparameters": hyper,
                         "hessian_subset": "the first batch_size training examples",
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
            errs["oracles"] = {n: rel_err(getattr(a, n), getattr(b, n)) for n in ("g", "h", "t", "v")}
            ctx.record(f"max_rel_err_{dtype}", errs)
            bad = {n: e for n, e in errs["oracles"].items() if not e <= tol}
            if bad:
                raise CheckFailed(f"oracle errors above {tol:g}: {bad}")
        errs["steps"] = {}
        candidates = {**hyper, "hessian_subset": torch.arange(cpu.batch_size)}
        for name in DYNAMICS:
            with ctx.item(f"{dtype}/step/{name}"):
                inc_c, inc_d = step_increments(name, cpu, dev, candidates)
                e = rel_err(inc_c, inc_d)
                errs["steps"][name] = e
                ctx.record(f"max_rel_err_{dtype}", errs)
                if not e <= tol:
                    raise CheckFailed(f"step error {e:.3g} above {tol:g}")


# -- benchmarks, figures, weak error ------------------------------------------------------
def part_oracles(ctx: PartContext) -> None:
    """``benchmarks.oracles`` on the device at B = 128, at B = 4096 (the most its default
    4,096 examples allow) and, with ``--examples`` raised to B, at B = 32768 (a batch
    that fills the GPU). The per-block-size lines (looped against batched oracles) run
    once, with the first batch size."""
    from benchmarks import oracles
    runs = {"B=16": 16, "B=64": 64} if ctx.small else {"B=128": 128, "B=4096": 4096, "B=32768": 32768}
    extra = ["--repeats", "2", "--n-batches", "2"] if ctx.small else ["--repeats", "20"]
    data = [] if ctx.data_dir is None else ["--data-dir", ctx.data_dir]
    blocks = ["--block-sizes", "1,4", "--block-repeats", "1"] if ctx.small else ["--block-repeats", "3"]
    for i, (label, B) in enumerate(runs.items()):
        with ctx.item(label):
            enlarged = i == len(runs) - 1
            argv = ["--device", ctx.device, "--batch-size", str(B), *extra, *data,
                    *(blocks if i == 0 else ["--block-sizes", ""]),
                    *(["--examples", str(max(B, oracles.DEFAULT_EXAMPLES))] if enlarged else [])]
            res = oracles.main(argv)
            ctx.record(label, {"argv": argv, "examples_enlarged_to_B": enlarged, **res})


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
        dataset, source = "mnist", "MNIST"
    else:   # the timings depend on the shapes only: MNIST-shaped Gaussian images keep the part running
        dataset, source = "synthetic", "synthetic (MNIST not found in the data directory)"
    problem = figure2.load_problem(cfg, device, ctx.data_dir, dataset=dataset)
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
            t = _timed(lambda dyn=dyn, state=state: dyn.advance(state, timed), device)
            step_s[dyn.name] = t / timed
            ctx.record("seconds_per_step", step_s)
    if metric_s is not None and len(step_s) == len(cfg.dynamics):
        seeds = len(cfg.seeds)
        per_dyn = {n: seeds * (cfg.steps * s + n_records * metric_s) for n, s in step_s.items()}
        ctx.record("extrapolated", {
            "seconds_per_dynamics": per_dyn, "total_s": sum(per_dyn.values()),
            "formula": "seeds x (steps x seconds_per_step + records x metrics seconds), summed over dynamics",
            "seeds": seeds, "steps": cfg.steps, "records": n_records,
            "note": "metrics timed at the initialisation; Lanczos needs a varying number of HVPs later"})


#: the SDE models of ``validation.weak_error``, timed by ``part_weak_error`` next to discrete SAM


def part_weak_error(ctx: PartContext) -> None:
    """One chunk of ``validation.weak_error --problem mlp --full`` (the paper's network) per
    model — discrete SAM and the SDEs of the study — at the grid's η nearest 0.01: trajectory
    steps per second, and the extrapolated wall time of the ``--full`` η sweep."""
    import dataclasses

    import torch

    from sdesam.montecarlo import run_chunk
    from validation.experiment import build, num_steps, record_steps
    from validation.weak_error import Config, _sde_kwargs, build_problem
    cfg = Config.mlp() if ctx.small else Config.mlp_full()
    dataset = "mnist" if _mnist_or_none(ctx.data_dir) is not None else "synthetic"
    cfg = dataclasses.replace(cfg, dataset=dataset, n_train=2048 if ctx.small else cfg.n_train)
    problem, tests, source = build_problem(cfg, torch.device(ctx.device), ctx.data_dir)
    eta = min(cfg.etas, key=lambda e: abs(e - 0.01))
    rho = cfg.c * eta ** (1 / 3)
    n = 2 if ctx.small else 4
    plan, dplan = cfg.plans()
    ctx.record("setup", {"config": dataclasses.asdict(cfg), "dataset": source, "eta": eta, "rho": rho,
                         "timed_steps": n, "chunk_size": plan.chunk_size, "discrete_chunk_size": dplan.chunk_size})
    per_step = {}
    runs = [("discrete", cfg.discrete, {}, dplan)] + [(m, m, _sde_kwargs(cfg, m), plan) for m in cfg.models]
    for label, dname, kw, p in runs:
        with ctx.item(label):
            dyn = build(dname, problem, eta, rho, **kw)
            chunk = dict(chunk_size=p.chunk_size, blocks_per_chunk=p.blocks_per_chunk, tests=tests)
            run_chunk(dyn, problem.x0, 0, record_steps=[0, 1], **chunk)            # warm-up
            t = _timed(lambda dyn=dyn, chunk=chunk: run_chunk(dyn, problem.x0, 1, record_steps=record_steps(n, 1),
                                                              **chunk), problem.device)
            per_step[label] = (t / n, p)
            N = num_steps(cfg.horizon, eta)
            ctx.record("runs", {lab: {"seconds_per_chunk_step": sec, "trajectory_steps_per_s": q.chunk_size / sec,
                                      f"trajectories_per_s_over_T={cfg.horizon}": q.chunk_size / (sec * N)}
                                for lab, (sec, q) in per_step.items()})
    if len(per_step) == len(runs):
        total = sum(num_steps(cfg.horizon, e) * sum(q.n_chunks * sec for sec, q in per_step.values())
                    for e in cfg.etas)
        ctx.record("extrapolated", {
            "mode_eta_total_s": total, "etas": list(cfg.etas),
            "formula": "sum over etas of (T/eta) x sum over runs of n_chunks x seconds_per_chunk_step "
                       "(discrete SAM and the SDEs; bootstrap and plots not included)"})


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
    cuda = str(device).startswith("cuda")
    fmt = torch.channels_last if cuda else torch.contiguous_format
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(10, (batch,), device=device)
    return {method: _seconds_per_step(method, name, kwargs, x, y, steps, warmup, device) for method in ("sgd", "sam")}


def _seconds_per_step(method: str, name: str, kwargs: dict, x, y, steps: int, warmup: int, device) -> float:
    """Seconds per step of ``method`` (``"sgd"`` or ``"sam"``) on a fresh model ``name``
    (seed 0) with the fixed batch (x, y), after ``warmup`` steps."""
    import torch
    from torch import nn

    from sdesam.models import build_model
    from sdesam.optim import SAM
    cuda = str(device).startswith("cuda")
    fmt = torch.channels_last if cuda else torch.contiguous_format
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
    return _timed(lambda: [step() for _ in range(steps)], device) / steps


def part_training(ctx: PartContext) -> None:
    """ResNet-18 on CIFAR-10-shaped data through ``sdesam.training.train``: SGD, SAM and
    Eigen-SAM in float32 and bf16 autocast; a plain PyTorch SGD baseline; other Table 1
    architectures; extrapolated Table 1 times."""
    import torch

    from sdesam.data import DatasetNotFoundError, load_dataset
    from sdesam.training import TrainConfig, train
    from sdesam.training.presets import TABLE1_MODELS
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
    prec = "bf16" if cuda else "fp32"          # bf16 autocast: the trainer's default on CUDA
    if all(f"{m}/{prec}" in runs for m in ("sgd", "sam", "eigen_sam")) and prec in baseline:
        ctx.record("extrapolated", _table1_extrapolation(prec, runs, ratios[prec], baseline[prec], others, batch))


def _table1_extrapolation(prec: str, runs: dict, ratio: float, baseline: dict, others: dict, batch: int) -> dict:
    """Wall time of every Table 1 cell and of the grid (3 seeds) on one device, from the
    measured ResNet-18 step times in precision ``prec``, the other architectures' SGD and
    SAM step times (their Eigen-SAM: SAM × the ResNet-18 ratio ``ratio``) and the eval
    throughput of the plain baseline."""
    from sdesam.training import table1
    from sdesam.training.presets import TABLE1_DATASETS, TABLE1_METHODS
    step_s = {"resnet18": {m: runs[f"{m}/{prec}"]["seconds_per_step"] for m in ("sgd", "sam", "eigen_sam")}}
    for model, t in others.items():
        step_s[model] = {"sgd": t["sgd"], "sam": t["sam"], "eigen_sam": t["sam"] * ratio}
    sizes = {"cifar10": (50000, 10000), "cifar100": (50000, 10000), "svhn": (73257, 26032),
             "fashion_mnist": (60000, 10000)}
    eval_ips = baseline["eval_images_per_s"]
    seeds = 3

    def cell_s(dataset, model, method):
        c = table1(dataset, model, method)
        n_train, n_test = sizes[dataset]
        per_epoch = (n_train // c.batch_size) * step_s[model][method] * (c.batch_size / batch)
        return c.epochs * (per_epoch + n_test / eval_ips)

    cells = {f"{d}/{m}/{meth}": cell_s(d, m, meth) for d in TABLE1_DATASETS for m in step_s for meth in TABLE1_METHODS}
    return {
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
                  *([] if batch == 256 else [f"measured at batch {batch}, scaled linearly to 256"])]}


# -- data parallel ------------------------------------------------------------------------
#: the optimizers whose data-parallel runs ``part_ddp`` compares (``sdesam.testing.ddp_optimizer``)
DDP_KINDS = ("sam", "eigen_sam", "egr")


def ddp_worker(out_prefix: str, device_type: str) -> None:
    """Entry of one torchrun process (``python -m benchmarks.gpu_check --_ddp-worker PREFIX
    cuda|cpu``): ``ddp_equivalence_run`` of each of ``DDP_KINDS`` on this rank's share,
    saved with the backend's name to ``PREFIX.RANK``."""
    import torch
    import torch.distributed as dist

    from sdesam.testing import ddp_equivalence_run
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        results = {kind: ddp_equivalence_run(kind, dist.get_rank(), dist.get_world_size(), ddp=True, device=device)
                   for kind in DDP_KINDS}
        results["backend"] = dist.get_backend()
        torch.save(results, f"{out_prefix}.{dist.get_rank()}")
    finally:
        dist.destroy_process_group()


#: max |DDP − one process| accepted (float64; tests/test_optim_ddp.py uses 1e-12 on CPU)
DDP_TOL = {"cpu": 1e-12, "cuda": 1e-10}


def part_ddp(ctx: PartContext) -> None:
    """torchrun with NCCL (one process per GPU) or gloo (two CPU processes): DDP equals one
    process with the combined batch (``sdesam.testing.ddp_equivalence_run``)."""
    import torch

    from sdesam.testing import ddp_equivalence_run
    device_type = "cuda" if ctx.cuda else "cpu"
    nproc = torch.cuda.device_count() if ctx.cuda else 2
    prefix = str(ctx.workdir / "ddp-result")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", CHECK_MODULE, "--_ddp-worker", prefix, device_type]
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
            single = ddp_equivalence_run(kind, device=device)
            diffs[kind] = max((res[kind] - single).abs().max().item() for res in ranks)
            ctx.record("max_abs_diff_vs_combined_batch", diffs)
            if not diffs[kind] <= DDP_TOL[device_type]:
                raise CheckFailed(f"DDP differs from one process by {diffs[kind]:.3g}")
