"""figures.svag end to end at a tiny scale (fake Fashion-MNIST files): one run per l through the
trainer with svag=l, metrics against effective time, resume without retraining, refusal of a
changed configuration; and the trainer's l = 1 is the plain method."""
import csv
import json

import pytest
import torch

import figures.svag as svag

from .test_data_idx import write_mnist_style

ARGS = ["--model-kwargs", '{"width": 2, "norm": "group"}', "--train-subset", "64", "--test-subset", "32",
        "--batch-size", "16", "--epochs", "2", "--ls", "1", "2", "--device", "cpu", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fashion")
    write_mnist_style(d, n_train=96, n_test=32, seed=5)
    return d


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_svag_test_runs_resumes_and_refuses_another_configuration(tmp_path, data_dir):
    out = tmp_path / "svag"
    summary = svag.main(["--out", str(out), "--data-dir", str(data_dir), *ARGS])
    with open(out / "records.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    ts = {l: sorted({float(r["effective_epoch"]) for r in rows if r["l"] == l and r["metric"] == "train_loss"})
          for l in ("1", "2")}
    # l = 2: twice the steps, two minibatches each: four passes over the data per effective epoch
    assert ts["1"] == [1.0, 2.0] and ts["2"] == [0.25 * k for k in range(1, 9)]
    assert set(summary["final"]) == {"1", "2"} and "train_loss" in summary["gap_to_largest_l"]["1"]
    final2 = json.loads((out / "runs" / "l2-s0" / "final.json").read_text())
    assert final2["config"]["svag"] == 2 and final2["config"]["lr"] == 0.05
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/final.json")}
    svag.main(["--out", str(out), "--data-dir", str(data_dir), *ARGS])             # collected, not retrained
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/final.json")}
    with pytest.raises(ValueError, match="another configuration .*'rho': \\(0.05, 0.1\\)"):
        svag.main(["--out", str(out), "--data-dir", str(data_dir), *ARGS, "--rho", "0.1"])


def test_bad_factors_are_refused():
    with pytest.raises(ValueError, match="--ls must be distinct integers >= 1"):
        svag.Config(ls=(0, 1)).validate()
