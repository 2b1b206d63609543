"""torchrun sharding (2 processes, gloo, CPU) gives bit-identical results to one process."""
import os
import subprocess
import sys
from pathlib import Path

from .test_weak_error_cli import ARGS, _results, main

ROOT = Path(__file__).resolve().parents[1]


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
