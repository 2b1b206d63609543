"""The weak-error command in-process: seeds matter, reruns resume, bad flags fail clearly, the
MLP path runs, the substeps mode extrapolates."""
import json
from pathlib import Path

import pytest
import torch

from validation.report import markdown
from validation.weak_error import main as _main

ARGS = ["--mode", "all", "--problem", "logcosh", "--etas", "0.1", "0.05", "0.025", "0.0125", "--horizon", "0.1",
        "--rho-eta", "0.025", "--rhos", "0.2", "0.4", "0.8", "--ablation-eta", "0.05", "--ablation-substeps", "1", "2",
        "--trajectories", "240", "--chunk-size", "48", "--blocks-per-chunk", "4", "--substeps", "2",
        "--n-boot", "200", "--no-progress", "--threads", "1"]


def main(argv):
    """The command in-process, restoring torch's thread count afterwards (--threads 1 sets it)."""
    threads = torch.get_num_threads()
    try:
        return _main(argv)
    finally:
        torch.set_num_threads(threads)


def _strip_times(obj):
    if isinstance(obj, dict):
        return {k: _strip_times(v) for k, v in obj.items() if k != "wall_s"}
    if isinstance(obj, list):
        return [_strip_times(v) for v in obj]
    return obj


def _results(out: Path):
    data = json.loads((out / "summary.json").read_text())
    return _strip_times(data["results"]), data


def test_a_different_seed_changes_the_results_and_a_rerun_resumes(tmp_path, capsys):
    """Guards the sharding test: the results depend on the seed, so equality there means something."""
    small = ARGS[:]
    small[small.index("all")] = "eta"
    outs = []
    for seed in (0, 1):
        main([*small, "--seed", str(seed), "--out", str(tmp_path / f"s{seed}")])
        outs.append(_results(tmp_path / f"s{seed}")[0])
    assert outs[0] != outs[1]
    chunks = sorted((tmp_path / "s0" / "settings").rglob("*.npz"))
    stamps = {p: p.stat().st_mtime_ns for p in chunks}
    main([*small, "--seed", "0", "--out", str(tmp_path / "s0")])          # resumes: no chunk rewritten
    assert _results(tmp_path / "s0")[0] == outs[0]
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with pytest.raises(ValueError, match="holds results of another configuration .*'seed': \\(0, 1\\)"):
        main([*small, "--seed", "1", "--out", str(tmp_path / "s0")])
    report = markdown(tmp_path / "s0")                  # python -m validation.report DIR
    assert "| η | ρ | N | SGD-SDE | SAM-SDE2 | SAM-SDE3 |" in report
    assert report.count("slope vs η") == 3             # one fit row per test function
    rows = (tmp_path / "s0" / "errors.csv").read_text().splitlines()
    assert rows[0].startswith("sweep,setting,eta,rho,model,test,error,se") and len(rows) == 1 + 4 * 3 * 3


@pytest.mark.parametrize("flags, message", [
    (["--etas", "0.1", "0.05", "0.02", "0.01"], "geometric"),
    (["--etas", "0.1", "0.05", "0.025"], "at least 4"),
    (["--horizon", "0.33"], "multiple"),
    (["--mode", "speed"], "invalid choice"),
    (["--problem", "mnist"], "invalid choice"),
    (["--n-batches", "1"], "K"),
    (["--chunk-size", "10", "--blocks-per-chunk", "3"], "multiple"),
    (["--tests", "loss", "energy"], "test function"),
    (["--models", "sam"], "--models must name SDEs"),
    (["--full"], "--problem mlp"),
    (["--extrapolate", "--substeps", "3"], "even"),
    (["--device", "tpu"], "device must be cpu, cuda or cuda:N"),
    (["--method", "gsam", "--discrete", "sgd"], "leave --discrete at sam"),
    (["--method", "wsam", "--wsam-gamma", "1.5"], "gamma"),
])
def test_bad_flags_exit_with_a_clear_message(tmp_path, capsys, flags, message):
    from sdesam.cli import run_main
    try:
        code = run_main(_main, "python -m validation.weak_error", [*flags, "--out", str(tmp_path / "o")])
    except SystemExit as exc:                     # argparse's own errors (invalid choice)
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_a_family_method_changes_the_discrete_method_and_its_sdes_together(tmp_path, capsys):
    """--method gsam at α = 0 is SAM (every number equal); at α = 0.3 the discrete process and
    both SAM SDEs move, SGD-SDE does not (it has no rule), and the record names the method."""
    small = ARGS[:]
    small[small.index("all")] = "eta"
    runs = {}
    for name, extra in {"sam": [], "gsam0": ["--method", "gsam", "--gsam-alpha", "0"],
                        "gsam": ["--method", "gsam", "--gsam-alpha", "0.3"]}.items():
        main([*small, *extra, "--out", str(tmp_path / name)])
        runs[name] = _results(tmp_path / name)
    def errors(name):
        return [(s["errors"], s["curves"]) for s in runs[name][0]["eta"]["settings"]]
    assert errors("gsam0") == errors("sam")
    (plain, plain_curves), (gsam, gsam_curves) = (errors(k)[0] for k in ("sam", "gsam"))
    assert gsam["sgd_sde"] != plain["sgd_sde"]                  # the reference (discrete GSAM) moved
    assert gsam_curves["discrete_mean"] != plain_curves["discrete_mean"]
    means = {k: c["model_mean"] for k, c in (("sam", plain_curves), ("gsam", gsam_curves))}
    assert means["gsam"]["sgd_sde"] == means["sam"]["sgd_sde"]
    assert all(means["gsam"][m] != means["sam"][m] for m in ("sam_sde2", "sam_sde3"))
    data = runs["gsam"][1]
    assert data["config"]["method"] == "gsam" and data["config"]["gsam_alpha"] == 0.3
    setting = data["results"]["eta"]["settings"][0]
    assert setting["dynamics"]["sam_sde3"]["update"] == "gsam"
    assert setting["discrete"]["update"] == {"update": "gsam", "alpha": 0.3}


def test_mlp_configuration_runs_on_synthetic_data(tmp_path, capsys):
    """The MLP path end to end (ModuleProblem, Monte Carlo K, antithetic pairs, different M for
    SAM and the SDEs) at a tiny M, on random MNIST-shaped tensors — labelled as such."""
    out = tmp_path / "mlp"
    main(["--problem", "mlp", "--dataset", "synthetic", "--etas", "0.08", "0.04", "0.02", "0.01",
          "--horizon", "0.08", "--trajectories", "8", "--chunk-size", "4", "--blocks-per-chunk", "2",
          "--discrete-trajectories", "16", "--discrete-chunk-size", "8", "--substeps", "2", "--n-train", "256",
          "--eval-examples", "32", "--n-boot", "100", "--no-progress", "--threads", "1", "--out", str(out)])
    _, data = _results(out)
    assert data["problem"]["problem"] == "mnist-mlp-synthetic-32" and data["problem"]["dim"] == 784 * 32 + 32 + 330
    assert "synthetic" in data["data_source"]
    assert data["plans"]["models"]["trajectories"] == 8 and data["plans"]["discrete"]["trajectories"] == 16
    e = data["results"]["eta"]["settings"][-1]
    assert e["dynamics"]["sam_sde3"]["antithetic"] and e["dynamics"]["sam_sde3"]["n_batches"] == 2
    assert all(0 < e["errors"][m][t]["error"] < float("inf") for m in e["errors"] for t in e["errors"][m])
    vr = e["variance_reduction"]
    assert set(vr["antithetic"]) == {"sgd_sde", "sam_sde2", "sam_sde3"}
    assert vr["common_random_numbers"]["sam_sde2 - sam_sde3"]["sqnorm"] > 1     # sharing the noise helps


def test_substeps_mode_runs_every_m_and_extrapolates(tmp_path, capsys):
    out = tmp_path / "sub"
    main(["--mode", "substeps", "--etas", "0.1", "0.05", "0.025", "0.0125", "--horizon", "0.1", "--models", "sam_sde3",
          "--ablation-substeps", "1", "2", "4", "--trajectories", "200", "--chunk-size", "100",
          "--blocks-per-chunk", "10", "--n-boot", "100", "--no-progress", "--threads", "1", "--out", str(out)])
    res, data = _results(out)
    fits = res["eta"]["fits"]
    assert set(fits) == {"sam_sde3|m=1", "sam_sde3|m=2", "sam_sde3|m=4", "sam_sde3@m→∞"}
    e = res["eta"]["settings"][0]
    m4, m2 = (e["curves"]["model_mean"][k] for k in ("sam_sde3|m=4", "sam_sde3|m=2"))
    ext = e["curves"]["model_mean"]["sam_sde3@m→∞"]
    assert ext[-1][0] == pytest.approx(2 * m4[-1][0] - m2[-1][0], rel=1e-12)
    assert "eta/sam_sde3@m→∞/loss" in res["checks"]
