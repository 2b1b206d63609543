"""Bad input to the public entry points is refused before anything runs: one line
``<prog>: error: <what is wrong>`` on stderr, exit status 2, nothing written — the figure
and table commands, ``sdesam train`` and ``TrainConfig``, the data directory, the
benchmarks; and progress written to a log is a few lines, not redrawn frames."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sdesam import cli
from sdesam.data import load_mnist
from sdesam.data.paths import resolve_data_dir
from sdesam.training import TrainConfig

from .test_data_idx import write_mnist_style


@pytest.fixture(autouse=True)
def no_fetch(monkeypatch):
    """No data set is fetched here (a test that reached a loader sees it absent), and the
    thread count is restored."""
    monkeypatch.setattr("sdesam.data.mnist.run_tool", lambda *a, **k: "no fetch in the tests")
    monkeypatch.setattr("sdesam.data.fashion_mnist.missing_tools", lambda *names: list(names))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def empty(tmp_path):
    """An existing, empty data directory."""
    path = tmp_path / "empty-data"
    path.mkdir()
    return path


def refused(capsys, tmp_path, argv, message):
    """Run ``sdesam <argv>`` and check the one-line refusal naming ``message``, and that
    ``tmp_path/out`` was not created."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
    return err[0]


# -- the figure commands ----------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["figure3", "--set", "method=sgd"], "--set method=…: method is set for each run by --alphas"),
    (["figure3", "--set", "alpha=0.5"], "--set alpha=…: alpha is set for each run by --alphas"),
    (["appendix_a", "--set", "epochs=3"], "--set epochs=…: epochs is set for each run by --epochs"),
    (["table_p", "--set", "device=cpu"], "--set device=…: device is set for each run by --device"),
    (["figure5", "--set", "seed=4"], "--set seed=…: seed is set for each run by --seeds"),
    (["figure1", "--methods", "sam", "sam", "--align-methods", "sam"], "--methods lists 'sam' twice"),
    (["figure1", "--epochs", "none"], "--epochs must be a number"),
    (["figure1", "--hessian-examples", "4096"], "--train-subset 2048 is smaller than the 4096 training images"),
    (["figure5", "--minibatches", "20"], "--train-subset 2000 is smaller than the 2560 training images"),
    (["figure5", "--models", "resnet18", "nope"], "model must be one of"),
    (["figure3", "--dataset", "nope"], "dataset must be one of"),
    (["figure3", "--spectrum-seeds", "5"], "spectrum_seeds [5] must be among seeds [0, 1]"),
    (["appendix_a", "--train-subset", "100"], "train_subset=100 gives no complete step: it needs 128 examples"),
])
def test_figure_options_are_refused_before_anything_runs(argv, message, capsys, tmp_path, empty):
    refused(capsys, tmp_path, [*argv, "--out", str(tmp_path / "out"), "--data-dir", str(empty)], message)


# -- Table 1 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0", "0"], "--seeds lists 0 twice"),
    (["--methods", "sam", "sam"], "--methods lists 'sam' twice"),
    (["--set", "method=sgd"], "--set method=…: method is set for each run by --methods"),
    (["--set", "device=cpu"], "--set device=…: device is set for each run by --device"),
    (["--jobs", "2"], "--jobs has no effect with --collect-only"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_table1_options_are_refused(argv, message, capsys, tmp_path, empty):
    refused(capsys, tmp_path, ["table1", "--quick", "--collect-only", *argv, "--out", str(tmp_path / "out"),
                               "--data-dir", str(empty)], message)


# -- sdesam train and TrainConfig ----------------------------------------------------------------
def test_train_refuses_paths_and_devices_before_loading_data(capsys, tmp_path, empty):
    common = ["train", "--dataset", "fashion_mnist", "--epochs", "1"]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    refused(capsys, tmp_path, [*common, "--device", "gpu", "--print-config"],
            "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got device='gpu'")
    refused(capsys, tmp_path, [*common, "--data-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "out")],
            f"--data-dir '{tmp_path / 'nope'}' does not exist")
    assert not (tmp_path / "nope").exists()
    refused(capsys, tmp_path, [*common, "--data-dir", str(empty), "--out-dir", str(a_file)],
            f"--out-dir '{a_file}' exists and is not a directory")


def test_train_weights_path_is_used_or_refused(capsys, tmp_path):
    refused(capsys, tmp_path, ["train", "--preset", "table1_quick", "--method", "sam", "--weights-path", "w.pth",
                               "--print-config"], "--weights-path is used by --preset table2 or without a preset")
    refused(capsys, tmp_path, ["train", "--model", "vit_b16", "--weights-path", "a.pth", "--model-kwarg",
                               "weights_path=b.pth", "--print-config"], "both name the weights; give one")
    assert cli.main(["train", "--preset", "table2", "--dataset", "cifar10", "--method", "sam", "--weights-path",
                     "w.pth", "--model-kwarg", "backend=torchvision", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model_kwargs"] == {"backend": "torchvision", "weights_path": "w.pth"}


@pytest.mark.parametrize("changes,message", [
    ({"device": "tpu"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got device='tpu'"),
    ({"device": "cuda:"}, "got device='cuda:'"),
    ({"data_dir": ""}, "data_dir must be a directory path or None"),
    ({"dataset": "fashion_mnist", "normalization": "imagenet"}, "needs RGB images, fashion_mnist is grey-scale"),
    ({"train_subset": 200}, "train_subset=200 gives no complete step: it needs 256 examples"),
    ({"train_subset": 300, "method": "sgd", "svag": 2}, "it needs 512 examples"),
])
def test_train_config_refuses(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**changes)
    TrainConfig(train_subset=200, drop_last=False)          # an incomplete batch is a step without drop_last


# -- the data directory -------------------------------------------------------------------------
def test_a_data_directory_that_is_a_file_is_named(tmp_path, monkeypatch):
    from sdesam.data import check_data_dir
    a_file = tmp_path / "data"
    a_file.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match=f"data_dir '{a_file}' is a file, not a directory"):
        load_mnist(a_file, download=False)
    monkeypatch.setenv("SDESAM_DATA", str(a_file))
    with pytest.raises(NotADirectoryError, match=r"\$SDESAM_DATA"):
        resolve_data_dir()
    with pytest.raises(ValueError, match=r"\$SDESAM_DATA .* is a file"):
        check_data_dir(None)
    with pytest.raises(ValueError, match="--data-dir .* is not a directory"):
        check_data_dir(a_file)
    monkeypatch.setenv("SDESAM_DATA", str(tmp_path / "not-yet"))     # created by a first fetch
    check_data_dir(None)
    assert resolve_data_dir() == tmp_path / "not-yet"


# -- the benchmarks -----------------------------------------------------------------------------
ORACLES_TINY = ["bench", "oracles", "--batch-size", "8", "--examples", "32", "--repeats", "1", "--n-batches", "2",
                "--block-repeats", "1", "--threads", "1"]
EIGENSAM_TINY = ["bench", "eigensam", "--width", "1", "--batch-size", "2", "--p", "3", "--repeats", "1",
                 "--align-width", "1", "--align-pretrain", "0", "--align-every", "1", "--align-refreshes", "1",
                 "--align-max-iters", "3", "--threads", "1"]
CURVATURE_TINY = ["bench", "curvature", "--data", "synthetic", "--examples", "16", "--batch-size", "8",
                  "--train-examples", "16", "--train-steps", "1", "--starts", "1", "--lanczos-iters", "4",
                  "--power-iters", "4", "--reps", "1", "--ref-tol", "1e-2"]


@pytest.mark.parametrize("argv,message", [
    ([*ORACLES_TINY, "--block-sizes", "6"], "each M·K must be 1..4 or a multiple of 4 (K = 4 minibatches), got 6"),
    ([*ORACLES_TINY, "--block-sizes", "0"], "got 0"),
    ([*ORACLES_TINY, "--block-sizes", "1,x"], "--block-sizes must be comma-separated integers"),
    ([*ORACLES_TINY[:-2], "--threads", "0", "--block-sizes", ""], "--threads must be >= 1, got 0"),
    ([*ORACLES_TINY[:4], "--examples", "16", *ORACLES_TINY[6:], "--block-sizes", "1"],
     "--examples must be >= 32 for the block lines (the quick-cpu MLP's B = 32), got 16"),
    ([*EIGENSAM_TINY, "--timed-steps", "5"], "--timed-steps must be in 2..--p (3), got 5"),
    ([*EIGENSAM_TINY[:6], "--p", "1"], "--p must be >= 2"),
    ([*EIGENSAM_TINY, "--align-refreshes", "0"], "--align-refreshes must be >= 1, got 0"),
    ([*EIGENSAM_TINY, "--alignment-only", "--per-layer"],
     "--per-layer: no effect with --alignment-only (it skips the step timings)"),
    ([*CURVATURE_TINY, "--starts", "0"], "--starts must be >= 1, got 0"),
    ([*CURVATURE_TINY, "--data-dir", "."], "--data-dir is read only with --data mnist, not with --data synthetic"),
    (["bench", "curvature", "--data", "synthetic", "--quick", "--examples", "64"],
     "--quick sets --examples itself; drop them or --quick"),
    (["bench", "curvature", "--data", "npz:/does/not/exist.npz"], "--data npz:/does/not/exist.npz: no such file"),
    (["bench", "causal", "--eig-tol", "0"], "--eig-tol must be a finite number > 0, got 0.0"),
    (["bench", "causal", "--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_benchmark_options_are_refused_before_measuring(argv, message, capsys, tmp_path):
    refused(capsys, tmp_path, argv, message)


def test_curvature_names_what_an_npz_file_lacks(capsys, tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, x=np.zeros((16, 784), np.float32), labels=np.zeros(16, np.int64))
    err = refused(capsys, tmp_path, [*CURVATURE_TINY[:3], f"npz:{path}", *CURVATURE_TINY[4:]],
                  f"{path} lacks the array(s) y (it holds x, labels)")
    assert "Traceback" not in err


def test_oracles_reports_a_corrupt_mnist_instead_of_using_noise(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mnist.npz").write_bytes(b"not an npz file")
    refused(capsys, tmp_path, [*ORACLES_TINY, "--block-sizes", "", "--data-dir", str(data)],
            "mnist.npz: is not a readable .npz file")


def test_toys_threads_must_be_positive():
    from benchmarks import toys
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        toys.main(["0"])


# -- progress in a log ------------------------------------------------------------------------------
def test_progress_in_a_log_is_a_line_per_epoch_and_per_figure(tmp_path, capsys):
    """Written to a file (here pytest's capture, not a terminal): the trainer prints one line
    per epoch, the figure one line for its runs — no redrawn frames."""
    data = tmp_path / "data"
    write_mnist_style(data, n_train=96, n_test=20, seed=1)
    cli.main(["appendix_a", "--out", str(tmp_path / "aa"), "--data-dir", str(data), "--device", "cpu",
              "--threads", "1", "--model-kwargs", '{"width": 2}', "--train-subset", "64", "--test-subset", "20",
              "--batch-size", "32", "--epochs", "2", "--seeds", "0", "--methods", "sam", "egr"])
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert len([line for line in lines if re.match(r"(sam|egr) epoch [12]/2: 2/2 steps", line)]) == 4, lines
    assert [line for line in lines if line.startswith("appendix_a runs")] == [lines[-1]]
    assert lines[-1].startswith("appendix_a runs: 2/2 runs")
    assert len(lines) == 5, lines
    assert Path(tmp_path / "aa" / "summary.json").exists()
