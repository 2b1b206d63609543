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
    assert (one / "errors.csv").read_text() == (two / "errors.csv").read_text()
    assert r1 == r2                                   # every number, bit for bit
    assert (two / "weak_error.png").is_file() and (two / "weak_error_rho.png").is_file()
    # the comparison is not vacuous: the errors are non-zero and differ between models
    errs = r1["eta"]["settings"][0]["errors"]
    assert errs["sam_sde3"]["loss"]["error"] > 0
    assert errs["sam_sde3"]["loss"]["error"] != errs["sam_sde2"]["loss"]["error"]


_BLAS_SCRIPT = """
import hashlib, json, sys
import numpy as np
from sdesam.montecarlo import BlockStats
from validation.stats import fit_power_law, weak_errors
rng = np.random.default_rng(0)
def stats(shift):
    v = rng.normal(shift, 1.0, (100, 50, 81, 3))
    return BlockStats(v.sum(1), (v * v).sum(1), 50, tuple(range(81)), ("a", "b", "c"))
ref, mod = stats(0.0), stats(0.01)
summary, reps = weak_errors(ref, {"m": mod}, n_boot=1000, rng=np.random.default_rng(1))
fit = fit_power_law([0.1, 0.05, 0.025, 0.0125], [4.0, 2.1, 0.9, 0.52], np.abs(reps["m"][:, :1]) + [4, 2, 1, 0.5])
blob = json.dumps([summary, fit.to_dict()], sort_keys=True).encode() + reps["m"].tobytes()
print(hashlib.sha256(blob).hexdigest())
"""


def test_statistics_do_not_depend_on_the_blas_thread_count():
    """torchrun workers run with OMP_NUM_THREADS=1, a single process with one BLAS thread
    per core: the bootstrap and the fits must not change in the last bit between them."""
    out = []
    for threads in ("1", "2"):
        env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads)
        proc = subprocess.run([sys.executable, "-c", _BLAS_SCRIPT], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.append(proc.stdout.strip())
    assert out[0] == out[1]
