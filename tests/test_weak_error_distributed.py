"""torchrun sharding (2 processes, gloo, CPU) gives bit-identical results to one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from validation.weak_error import main as _main

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--mode", "all", "--problem", "logcosh", "--etas", "0.1,0.05,0.025,0.0125", "--horizon", "0.1",
        "--rho-eta", "0.025", "--rhos", "0.2,0.4,0.8", "--ablation-eta", "0.05", "--ablation-substeps", "1,2",
        "--chunks", "5", "--chunk-size", "48", "--blocks-per-chunk", "4", "--substeps", "2",
        "--n-boot", "200", "--no-progress", "--threads", "1"]


def main(argv):
    """The CLI in-process, restoring torch's thread count afterwards (--threads 1 sets it)."""
    threads = torch.get_num_threads()
    try:
        _main(argv)
    finally:
        torch.set_num_threads(threads)


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if k != "wall_s"}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _results(out: Path):
    data = json.loads((out / "results.json").read_text())
    return _strip_times(data["results"]), data


def test_torchrun_two_processes_equal_one_process(tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    main([*ARGS, "--out", str(one)])                       # one process
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "validation.weak_error", *ARGS, "--out", str(two)],
                          cwd=ROOT, env=env, timeout=400, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r1, d1 = _results(one)
    r2, d2 = _results(two)
    assert d1["runtime"]["world_size"] == 1 and d2["runtime"]["world_size"] == 2
    assert d2["runtime"]["backend"] == "gloo"
    assert r1 == r2                                   # every number, bit for bit
    assert (two / "weak_error.png").is_file() and (two / "weak_error_rho.png").is_file()
    # the comparison is not vacuous: the errors are non-zero and differ between models
    errs = r1["eta"]["settings"][0]["errors"]
    assert errs["sam_sde3"]["loss"]["error"] > 0
    assert errs["sam_sde3"]["loss"]["error"] != errs["sam_sde2"]["loss"]["error"]


def test_a_different_seed_changes_the_results(tmp_path, capsys):
    """Guards the test above: the results do depend on the seed (so equality means something)."""
    small = ARGS[:]
    small[small.index("all")] = "eta"
    small.append("--no-plot")
    outs = []
    for seed in (0, 1):
        main([*small, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")])
        outs.append(_results(tmp_path / f"s{seed}")[0])
    assert outs[0] != outs[1]


@pytest.mark.parametrize("flags, message", [
    (["--etas", "0.1,0.05,0.02,0.01"], "geometric"),
    (["--etas", "0.1,0.05,0.025"], "at least 4"),
    (["--horizon", "0.33"], "multiple"),
    (["--mode", "speed"], "mode"),
    (["--problem", "mnist"], "problem"),
    (["--n-batches", "1"], "K"),
    (["--chunk-size", "10", "--blocks-per-chunk", "3"], "multiple"),
    (["--tests", "loss,energy"], "test function"),
])
def test_bad_flags_exit_with_a_clear_message(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exc:
        main([*flags, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
