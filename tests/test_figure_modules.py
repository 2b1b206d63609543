"""End-to-end runs of the training-based figure modules at a tiny scale (fake
Fashion-MNIST files, 64 images, 1–2 epochs): the outputs, their summary fields, resuming
/collecting instead of retraining, and refusing a changed configuration."""
import csv
import json
from pathlib import Path

import pytest
import torch

import figures.appendix_a as appendix_a
import figures.figure1 as figure1
import figures.figure3 as figure3
import figures.figure5 as figure5
import figures.table_p as table_p
from sdesam.experiment import add_config_arguments, config_from_args

from .test_data_idx import write_mnist_style

RESNET = ["--model-kwargs", '{"width": 2}', "--train-subset", "64", "--test-subset", "40", "--batch-size", "32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("fashion")
    write_mnist_style(d, n_train=160, n_test=40, seed=3)
    return d


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def common(out, data_dir):
    return ["--out", str(out), "--data-dir", str(data_dir), "--device", "cpu", "--threads", "1", "--no-progress"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finals(out):
    return {p: p.stat().st_mtime_ns for p in sorted(Path(out, "runs").glob("*/final.json"))}


def test_figure1(tmp_path, data_dir):
    args = common(tmp_path / "f1", data_dir) + [
        "--model-kwargs", '{"n_filters": 4, "n_dense": 8}', "--train-subset", "64", "--test-subset", "40",
        "--batch-size", "32", "--epochs", "2", "--align-every", "1", "--subset-every", "2",
        "--hessian-examples", "32", "--hessian-batch-size", "16", "--eig-tol", "1e-2", "--p", "2"]
    summary = figure1.main(args)
    out = tmp_path / "f1"
    for name in ("figure1_fashion_mnist.png", "figure1_fashion_mnist.pdf", "records.csv", "config.json"):
        assert (out / name).stat().st_size > 0, name
    # no CIFAR-10 in the data directory: "auto" fell back to Fashion-MNIST and says so
    assert summary["dataset"] == "fashion_mnist" and summary["dataset_is_papers"] is False
    assert summary["config"]["dataset"] == "fashion_mnist" and summary["total_steps"] == 4
    res = summary["results"]
    assert set(res["alignment_minibatch"]) == {"sam", "eigen_sam"} == set(res["alignment_vhat"]) | {"sam"}
    assert res["alignment_minibatch"]["sam"]["n"] == 4                     # steps 0, 1, 2, 3
    assert [b["epoch"] for b in res["alignment_minibatch"]["sam"]["per_epoch"]] == [1, 2]
    for method in ("sgd", "sam", "eigen_sam"):
        assert res["subset_lambda1"][method]["epochs"] == [0.0, 1.0, 2.0]    # steps 0, 2 and the end
    assert 1 - 2 ** 0.5 <= res["alignment_minibatch"]["sam"]["min"] <= res["alignment_minibatch"]["sam"]["max"] <= 1
    rows = read_csv(out / "records.csv")
    assert list(rows[0]) == ["method", "seed", "step", "epoch", "metric", "value"]
    assert sum(r["metric"] == "align_minibatch" for r in rows) == 8
    sgd_steps = [json.loads(line) for line in (out / "runs" / "sgd-s0" / "steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in sgd_steps] == [0, 2]                        # SGD: only the λ₁ steps
    stamps, text = finals(out), (out / "records.csv").read_text()
    assert len(stamps) == 3
    figure1.main(args)                                                     # collects, trains nothing
    assert finals(out) == stamps and (out / "records.csv").read_text() == text
    with pytest.raises(ValueError, match="another configuration"):
        figure1.main(args + ["--eig-tol", "1e-3"])


def test_figure3(tmp_path, data_dir):
    args = common(tmp_path / "f3", data_dir) + RESNET + [
        "--epochs", "1", "--alphas", "0", "0.3", "--spectrum-alphas", "0", "0.3", "--seeds", "0", "1", "--p", "1",
        "--hessian-examples", "32", "--hessian-batch-size", "16", "--slq-probes", "2", "--slq-steps", "5",
        "--eig-tol", "1e-2"]
    summary = figure3.main(args)
    out = tmp_path / "f3"
    for name in ("figure3_fashion_mnist.png", "figure3_fashion_mnist.pdf", "accuracy.csv", "spectrum.csv",
                 "density.csv"):
        assert (out / name).stat().st_size > 0, name
    assert set(summary["test_accuracy_by_alpha"]) == {"0", "0.3"}
    assert all(b["n"] == 2 for b in summary["test_accuracy_by_alpha"].values())
    assert set(summary["spectra"]) == {"alpha0-s0", "alpha0.3-s0", "density_sigma_absolute"}
    spec = summary["spectra"]["alpha0.3-s0"]
    assert spec["slq_probes"] == 2 and spec["examples"] == 32 and spec["lambda1"] > 0
    rows = read_csv(out / "accuracy.csv")
    assert len(rows) == 2 * 2 * 3 and {r["method"] for r in rows} == {"sam", "eigen_sam"}
    assert len(read_csv(out / "spectrum.csv")) == 2 * 2 * 5                 # 2 runs × probes × steps
    finals_json = json.loads((out / "runs" / "alpha0.3-s1" / "final.json").read_text())
    assert finals_json["config"]["alpha"] == 0.3 and "spectrum" not in finals_json   # seed 1: no spectrum


def test_figure5(tmp_path, data_dir):
    args = common(tmp_path / "f5", data_dir) + RESNET + [
        "--epochs", "2", "--at-epoch", "1", "--p", "1", "--minibatches", "1", "--starts", "2", "--q-max", "3",
        "--ref-tol", "1e-4"]
    summary = figure5.main(args)
    out = tmp_path / "f5"
    assert (out / "figure5_fashion_mnist.png").stat().st_size > 0
    rows = read_csv(out / "records.csv")
    assert len(rows) == 1 * 3 * 4                                          # (2 random + warm) × q = 0..3
    cur = summary["alignment_by_q"]["resnet18"]
    assert [c["q"] for c in cur["random"]] == [0, 1, 2, 3] and cur["random"][0]["n"] == 2
    assert cur["warm"][0]["n"] == 1
    ref = summary["references"]["resnet18-s0"]
    assert ref["epoch"] == 1 and ref["step"] == 2
    run_dir = out / "runs" / "resnet18-s0"
    assert not (run_dir / "final.json").exists()                           # the run stopped at epoch 1
    stamp = (run_dir / figure5.PROBE_FILE).stat().st_mtime_ns
    figure5.main(args)
    assert (run_dir / figure5.PROBE_FILE).stat().st_mtime_ns == stamp      # reused, not remeasured
    with pytest.raises(ValueError, match="at_epoch"):
        figure5.main(args + ["--at-epoch", "3"])


def test_table_p(tmp_path, data_dir):
    args = common(tmp_path / "tp", data_dir) + RESNET + ["--epochs", "1", "--ps", "1", "3", "--seeds", "0", "1"]
    summary = table_p.main(args)
    out = tmp_path / "tp"
    lines = (out / "table_p.md").read_text().splitlines()
    assert "| Architecture | p=1 | p=3 | SAM |" in lines
    row = next(line for line in lines if line.startswith("| ResNet18"))
    assert row.count("(n=2)") == 3
    assert summary["refreshes"] == {"fashion_mnist": {"1": 2, "3": 1}}     # 2 steps per run
    rows = read_csv(out / "table_p.csv")
    assert len(rows) == 6 and {r["column"] for r in rows} == {"p=1", "p=3", "SAM"}
    assert (out / "table_p_fashion_mnist.png").stat().st_size > 0


def test_appendix_a(tmp_path, data_dir):
    args = common(tmp_path / "aa", data_dir) + RESNET + ["--epochs", "2", "--seeds", "0", "1"]
    summary = appendix_a.main(args)
    out = tmp_path / "aa"
    assert (out / "appendix_a_fashion_mnist.png").stat().st_size > 0
    rows = read_csv(out / "records.csv")
    assert len(rows) == 3 * 2 * 2 * 3                                      # methods × seeds × epochs × metrics
    assert set(summary["final_test_accuracy_pct"]) == {"sam", "reverse_sam", "egr"}
    assert summary["rho"] == [0.05] and summary["is_paper_setting"] is False
    configs = {json.loads(p.read_text())["config"]["method"] for p in (out / "runs").glob("*/final.json")}
    assert configs == {"sam", "reverse_sam", "egr"}
    assert "| Reverse-SAM |" in (out / "accuracy.md").read_text()


def test_every_config_field_is_a_flag():
    import argparse
    ap = argparse.ArgumentParser()
    add_config_arguments(ap, figure3.Config, figure3.Config())
    args = ap.parse_args(["--alphas", "0", "0.5", "--train-subset", "none", "--model-kwargs", '{"width": 4}',
                          "--set", "weight_decay=0.0005", "--set", "augment=false", "--epochs", "7"])
    cfg = config_from_args(args, figure3.Config())
    assert cfg.alphas == (0.0, 0.5) and cfg.train_subset is None and cfg.model_kwargs == {"width": 4}
    assert cfg.overrides == {"weight_decay": 0.0005, "augment": False} and cfg.epochs == 7
    assert cfg.seeds == figure3.Config().seeds                            # untouched fields keep defaults
    tc = cfg.train_config("fashion_mnist", "resnet18", "eigen_sam", 0, Path("x"), alpha=0.5)
    assert tc.weight_decay == 0.0005 and not tc.augment and tc.train_subset is None and tc.epochs == 7
    for module in (figure1, figure3, figure5, table_p, appendix_a):
        ap = argparse.ArgumentParser()
        add_config_arguments(ap, module.Config, module.Config())           # every field type is supported
        full = module.Config.full().validate()
        assert full.train_subset is None and full.test_subset is None
