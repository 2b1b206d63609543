"""The weak-error CLI in-process: seeds matter, bad flags fail clearly, the MLP path runs."""
import json
from pathlib import Path

import pytest
import torch

from validation.report import markdown
from validation.weak_error import main as _main

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


def test_a_different_seed_changes_the_results(tmp_path, capsys):
    """Guards the sharding test: the results depend on the seed, so equality there means something."""
    small = ARGS[:]
    small[small.index("all")] = "eta"
    small.append("--no-plot")
    outs = []
    for seed in (0, 1):
        main([*small, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")])
        outs.append(_results(tmp_path / f"s{seed}")[0])
    assert outs[0] != outs[1]
    report = markdown(tmp_path / "s0")                  # python -m validation.report DIR
    assert "| η | ρ | N | SGD-SDE | SAM-SDE2 | SAM-SDE3 |" in report
    assert report.count("slope vs η") == 3             # one fit row per test function


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


def test_mlp_quick_configuration_runs_on_synthetic_data(tmp_path, capsys):
    """The MLP path end to end (ModuleProblem, Monte Carlo K, Taylor-mode oracles) at a tiny M,
    on random MNIST-shaped tensors — labelled as such in the results."""
    out = tmp_path / "mlp"
    main(["--problem", "mlp", "--dataset", "synthetic", "--chunks", "1", "--chunk-size", "2",
          "--blocks-per-chunk", "2", "--n-boot", "100", "--no-progress", "--no-plot", "--threads", "1",
          "--out", str(out)])
    _, data = _results(out)
    cfg = data["config"]
    assert cfg["problem"]["problem"] == "mlp-synthetic" and cfg["problem"]["dim"] == 784 * 32 + 32 + 32 * 10 + 10
    assert "synthetic" in cfg["data_source"] and cfg["sde_kwargs"]["n_batches"] == 4
    errs = data["results"]["eta"]["settings"][-1]["errors"]
    assert all(0 < errs[m][t]["error"] < float("inf") for m in errs for t in errs[m])
