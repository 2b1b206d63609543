"""End-to-end Figure 2 at a tiny scale: the four outputs, and resume after an interruption."""
import json

import pytest

import figures.figure2 as figure2

from .test_data_idx import write_mnist_style

ARGS = ["--steps", "3", "--record-every", "2", "--seeds", "0", "1", "--batch-size", "16", "--n-batches", "2",
        "--hessian-examples", "32", "--eig-tol", "0.05", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mnist")
    write_mnist_style(d, n_train=200, n_test=50, gz=False, seed=1)
    return d


def test_tiny_run_writes_all_outputs_and_resumes(tmp_path, data_dir, monkeypatch):
    full = tmp_path / "full"
    figure2.main(["--out", str(full), "--data-dir", str(data_dir), *ARGS])
    for name in ["figure2.png", "figure2.pdf", "records.csv", "summary.json"]:
        assert (full / name).stat().st_size > 0, name
    summary = json.loads((full / "summary.json").read_text())
    assert set(summary["discrepancy"]) == set(figure2.FIGURE2_METRICS)
    assert {"sam_sde2", "sam_sde3", "sam_seed_se", "range"} <= set(summary["discrepancy"]["train_loss"])
    assert summary["config"]["steps"] == 3 and summary["environment"]["versions"]["torch"]
    lines = (full / "records.csv").read_text().splitlines()
    assert lines[0] == "dynamics,seed,step,time,metric,value"
    assert len(lines) == 1 + 3 * 2 * 3 * 6                     # dynamics × seeds × steps {0,2,3} × metrics

    # interrupt the fourth (dynamics, seed) run after its first record, then rerun
    real = figure2.run_trajectory
    calls = []

    def interrupted(dyn, **kw):
        calls.append((dyn.name, kw["seed"]))
        if len(calls) == 4:
            def stop(k):
                if k == 0:
                    raise KeyboardInterrupt
            kw["on_record"] = stop
        return real(dyn, **kw)
    monkeypatch.setattr(figure2, "run_trajectory", interrupted)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        figure2.main(["--out", str(part), "--data-dir", str(data_dir), *ARGS])
    assert len(list((part / "runs").glob("*.json"))) == 3
    assert len(list((part / "runs").glob("*.pt"))) == 1          # the interrupted run's checkpoint
    calls.clear()
    figure2.main(["--out", str(part), "--data-dir", str(data_dir), *ARGS])
    assert len(calls) == 3                                       # finished runs were not redone
    assert (part / "records.csv").read_text() == (full / "records.csv").read_text()

    with pytest.raises(ValueError, match="holds results of another configuration .*'rho': \\(0.2, 0.1\\)"):
        figure2.main(["--out", str(part), "--data-dir", str(data_dir), *ARGS[:-1], "--rho", "0.1"])


def test_discrepancy_table_by_hand():
    recs = []
    for dyn, offset in [("sam", 0.0), ("sam_sde2", 0.5), ("sam_sde3", 0.1)]:
        for seed in range(2):
            for step, base in [(0, 1.0), (1, 2.0), (2, 3.0)]:
                value = base if step == 0 else base + offset + 0.1 * seed
                recs.append({"dynamics": dyn, "seed": seed, "step": step, "time": step, "metric": "train_loss",
                             "value": value})
    t = figure2.discrepancy_table(recs)["train_loss"]
    # seed means: sam 1, 2.05, 3.05; sde2 1, 2.55, 3.55; sde3 1, 2.15, 3.15 → range 3.55 − 1
    assert t["range"] == pytest.approx(2.55)
    assert t["sam_sde2"] == pytest.approx(0.5 / 2.55)
    assert t["sam_sde3"] == pytest.approx(0.1 / 2.55)
    assert t["sam_seed_se"] == pytest.approx((0.1 / 2 ** 0.5) / 2 ** 0.5 / 2.55)
