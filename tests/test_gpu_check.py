"""benchmarks.gpu_check: the CPU smoke mode (``--device cpu --small``) runs every part of
the GPU check without a failure and writes a complete report; a part that raises, crashes,
hangs or fails one item is reported as failed while the check goes on; the step
comparison of two problems is exact when both are on the CPU, and the random streams it
relies on draw on CPU generators whatever the problem's device; ``benchmarks.oracles
--examples`` sets the number of examples."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from benchmarks import gpu_check
from benchmarks.gpu import parts

# -- fake parts, run in child processes by the failure test ---------------------------------


def part_ok(ctx):
    ctx.record("value", 1)


def part_raises(ctx):
    ctx.record("before", 1)
    raise RuntimeError("boom")


def part_item_fails(ctx):
    with ctx.item("good"):
        ctx.record("good", 1)
    with ctx.item("bad"):
        raise ValueError("bad value")
    ctx.record("after", 2)


def part_crashes(ctx):
    ctx.record("before", 1)
    os.kill(os.getpid(), signal.SIGSEGV)


def part_hangs(ctx):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    ctx.record("grandchild_pid", child.pid)
    time.sleep(600)


def _gone_or_zombie(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def test_failing_parts_are_reported_and_the_check_goes_on(tmp_path):
    here = "tests.test_gpu_check"
    parts = {"raises": f"{here}:part_raises", "item": f"{here}:part_item_fails",
             "crashes": f"{here}:part_crashes", "hangs": f"{here}:part_hangs", "ok": f"{here}:part_ok",
             "missing": "benchmarks.gpu_check:no_such_part"}
    limits = {name: 30 for name in parts}
    limits["hangs"] = 4
    t0 = time.perf_counter()
    report = gpu_check.run_check(parts, device="cpu", small=True, out=tmp_path, limits=limits,
                                 workdir=tmp_path / "work")
    assert time.perf_counter() - t0 < 60
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["parts"].keys() == parts.keys() and on_disk["ok"] is False
    p = on_disk["parts"]
    assert p["raises"]["status"] == "failed: <part>: RuntimeError: boom"
    assert p["raises"]["results"]["before"] == 1 and "boom" in p["raises"]["log_tail"]
    assert p["item"]["status"] == "failed: bad: ValueError: bad value"
    assert p["item"]["results"]["good"] == 1 and p["item"]["results"]["after"] == 2
    assert p["crashes"]["status"].startswith("failed: killed by signal 11")
    assert p["hangs"]["status"].startswith("failed: timed out after 4 s")
    assert p["hangs"]["wall_s"] < 20
    assert _gone_or_zombie(p["hangs"]["results"]["grandchild_pid"])   # the whole process group is killed
    assert p["missing"]["status"].startswith("failed: <part>: AttributeError")
    assert p["ok"]["status"] == "ok" and p["ok"]["results"] == {"value": 1}
    summary = (tmp_path / "summary.md").read_text()
    assert "FAILURES" in summary and "| ok | ok |" in summary
    assert "===== hangs: failed: timed out" in (tmp_path / "logs.txt").read_text()
    assert report["parts"]["ok"]["status"] == "ok"


def test_sigterm_takes_the_running_part_down_and_keeps_the_report(tmp_path):
    here = "tests.test_gpu_check"
    code = ("import sys; from benchmarks import gpu_check; gpu_check.run_check("
            f"{{'ok': '{here}:part_ok', 'hangs': '{here}:part_hangs', 'later': '{here}:part_ok'}}, device='cpu', "
            f"small=True, out=sys.argv[1], limits={{'ok': 30, 'hangs': 60, 'later': 30}}, workdir=sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out"), str(tmp_path / "work")])
    result = tmp_path / "work" / "hangs" / "result.json"
    deadline = time.time() + 40
    while time.time() < deadline and "grandchild_pid" not in (result.read_text() if result.exists() else ""):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) != 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    parts = report["parts"]
    assert parts["ok"]["status"] == "ok"
    assert parts["hangs"]["status"].startswith("failed: the check was interrupted")
    assert parts["later"]["status"].startswith("failed: the check was interrupted")
    assert _gone_or_zombie(parts["hangs"]["results"]["grandchild_pid"])


def test_compare_steps_on_two_cpu_problems_are_equal():
    """``step_increments`` of every dynamics on two copies of a problem: exactly the same
    non-zero increment; another seed gives another one (the draws follow the seed)."""
    from sdesam.registry import DYNAMICS

    from .problems import tiny_mlp_problem
    a, b = tiny_mlp_problem(n=12), tiny_mlp_problem(n=12)
    candidates = {"eta": 0.1, "rho": 0.3, "n_batches": 3, "substeps": 2, "hessian_subset": torch.arange(6)}
    for name in DYNAMICS:
        inc_a, inc_b = parts.step_increments(name, a, b, candidates)
        assert inc_a.abs().max() > 0 and parts.rel_err(inc_a, inc_b) == 0.0, name
        other, _ = parts.step_increments(name, a, b, candidates, seed=4)
        assert parts.rel_err(inc_a, other) > 1e-6, name


class RandomDraws(TorchFunctionMode):
    """Records (generator, output) of every random draw made while it is active."""

    RANDOM = {torch.randn, torch.rand, torch.randint, torch.randperm, torch.normal}

    def __init__(self):
        super().__init__()
        self.draws = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self.RANDOM:
            self.draws.append((kwargs.get("generator"), out))
        return out


class ProblemOn:
    """The two members of a problem that ``draw_batches`` uses, on any device; its
    ``sample_batches`` draws on the generator's device, as ``ModuleProblem``'s does."""

    def __init__(self, device):
        self.device = torch.device(device)

    def sample_batches(self, num, generator):
        return torch.randint(50, (num, 4), generator=generator, device=generator.device).to(self.device)


def test_streams_draw_on_cpu_generators_whatever_the_device():
    """Minibatches and Brownian increments (every sub-step count: the tree and i.i.d.) of a
    problem on another device are drawn by CPU generators, the same numbers as on the CPU."""
    from sdesam import _streams
    drawn = {}
    for device in ("cpu", "meta"):
        with RandomDraws() as mode:
            batches = _streams.draw_batches(ProblemOn(device), 5, 2, num_trajectories=3, per_trajectory=2)
            noise = [_streams.brownian_increments(5, 2, m, (3, 7), 0.1, dtype=torch.float64, device=device)
                     for m in (1, 2, 4, 3)]
        assert batches.device.type == device and {w.device.type for w in noise} == {device}
        assert len(mode.draws) >= 6
        for generator, out in mode.draws:
            assert generator is not None and generator.device.type == "cpu" and out.device.type == "cpu"
        drawn[device] = [out for _, out in mode.draws]
    assert len(drawn["cpu"]) == len(drawn["meta"])
    assert all(torch.equal(x, y) for x, y in zip(drawn["cpu"], drawn["meta"]))


def test_oracles_benchmark_loads_the_examples_it_is_asked_for(capsys):
    from benchmarks import oracles
    argv = ["--batch-size", "8", "--repeats", "1", "--n-batches", "2", "--block-sizes", ""]
    assert oracles.main([*argv, "--examples", "24"])["examples"] == 24
    with pytest.raises(SystemExit):
        oracles.main([*argv, "--examples", "4"])
    assert "--examples must be at least --batch-size (8), got 4" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    gpu_check.main(["--device", "cpu", "--small", "--out", str(out), "--workdir", str(out / "work")])
    return out, json.loads((out / "report.json").read_text())


def test_small_cpu_check_is_complete_and_passes(small_check):
    from sdesam.registry import DYNAMICS
    out, report = small_check
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS)
    failed = {n: (p["status"], p.get("log_tail", "")[-1500:]) for n, p in parts.items() if p["status"] != "ok"}
    assert not failed, failed
    assert report["ok"] is True and report["device"] == "cpu" and report["small"] is True
    for key in ("git_commit", "hostname", "date_utc", "total_wall_s"):
        assert report[key], key
    env = parts["env"]["results"]["env"]
    assert env["torch"] and "cuda_runtime" in env and report["environment"]["torch"] == env["torch"]
    outcomes = parts["cuda_tests"]["results"]["pytest"]["outcomes"]
    assert set(outcomes) == {"skipped"} and outcomes["skipped"] >= 3             # no CUDA here
    r = parts["compare"]["results"]
    for dtype in ("float64", "float32"):
        errs = r[f"max_rel_err_{dtype}"]
        assert set(errs["oracles"]) == {"g", "h", "t", "v"}
        assert set(errs["steps"]) == set(DYNAMICS)
        assert max(errs["oracles"].values()) == 0 and max(errs["steps"].values()) == 0   # CPU against CPU
    r = parts["oracles"]["results"]
    assert r["B=16"]["v2_over_gradient"] > 0 and r["B=64"]["examples_enlarged_to_B"] is True
    assert r["B=64"]["batch_size"] == 64 and r["B=64"]["examples"] == r["B=16"]["examples"] == 4096
    assert "--examples" in r["B=64"]["argv"] and "--examples" not in r["B=16"]["argv"]
    r = parts["figure2"]["results"]
    assert set(r["seconds_per_step"]) == {"sam", "sam_sde2", "sam_sde3"} and r["extrapolated"]["total_s"] > 0
    r = parts["weak_error"]["results"]
    assert set(r["runs"]) == {"discrete", "sgd_sde", "sam_sde2", "sam_sde3"}
    assert r["extrapolated"]["mode_eta_total_s"] > 0
    r = parts["training"]["results"]
    assert set(r["trainer"]) == {f"{m}/{p}" for m in ("sgd", "sam", "eigen_sam") for p in ("fp32", "bf16")}
    assert r["eigen_sam_over_sam_step_time"]["fp32"] > 0 and set(r["plain_pytorch_sgd"]) == {"fp32", "bf16"}
    assert set(r["other_models_seconds_per_step"]) == {"resnet50", "wrn28_10"}
    assert r["extrapolated"]["grid_s"] > r["extrapolated"]["cell_cifar10_resnet18_eigen_sam_s"] > 0
    r = parts["ddp"]["results"]
    assert r["setup"]["nproc"] == 2 and r["backend"] == "gloo"
    assert max(r["max_abs_diff_vs_combined_batch"].values()) <= 1e-12
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# sdesam GPU check — OK")
    for name in gpu_check.PARTS:
        assert f"| {name} | ok |" in summary
    assert (out / "logs.txt").stat().st_size > 0


def test_command_line_options_are_validated(capsys):
    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N, got 'tpu'"):
        gpu_check.parse_args(["--device", "tpu"])
    for argv in (["--parts", "env,nope"], ["--limit", "training"], ["--limit", "nope=3"],
                 ["--limit", "env=-1"]):
        with pytest.raises(SystemExit):
            gpu_check.parse_args(argv)
    args = gpu_check.parse_args(["--parts", "env,ddp", "--limit", "ddp=12"])
    assert args.part_names == ["env", "ddp"] and args.limit == [("ddp", 12.0)]
    assert sum(gpu_check.DEFAULT_LIMITS.values()) <= 480 and set(gpu_check.DEFAULT_LIMITS) == set(gpu_check.PARTS)
