"""figures.table1: Student-t intervals, Table 1's layout, and a tiny real grid."""
import csv
import io
import json
import math
from pathlib import Path

import pytest
import torch

from figures.table1 import cell_configs, collect, main, summarize, t_interval, to_csv, to_markdown
from sdesam.training.files import write_json
from tests.test_data_idx import write_mnist_style


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_t_interval():
    mean, half = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3))    # t_{0.975, 2} · s / √n, s = 1
    assert t_interval([5.0]) == (5.0, None)
    assert t_interval([1.0, 1.0])[1] == 0.0


def fake_grid(tmp_path, accuracies):
    """final.json files for cells of a Table 1 grid, as finished runs would leave them."""
    configs = cell_configs(["cifar10", "svhn"], ["resnet18"], ["sgd", "sam", "eigen_sam"], [0, 1, 2],
                           tmp_path)
    for cfg in configs:
        acc = accuracies.get((cfg.dataset, cfg.method, cfg.seed))
        if acc is not None:
            Path(cfg.out_dir).mkdir(parents=True)
            write_json(Path(cfg.out_dir) / "final.json",
                       {"config": cfg.to_dict(), "test_accuracy": acc, "test_loss": 0.1,
                        "train_loss": 0.01, "wall_time_s": 1.0})
    return configs


def test_layout_and_csv(tmp_path):
    accs = {("cifar10", "sgd", s): a for s, a in enumerate([0.948, 0.950, 0.946])}
    accs |= {("cifar10", "sam", s): a for s, a in enumerate([0.955, 0.954, 0.956])}
    accs |= {("cifar10", "eigen_sam", s): a for s, a in enumerate([0.959, 0.961])}   # seed 2 missing
    accs |= {("svhn", "sam", 0): 0.963}
    configs = fake_grid(tmp_path, accs)
    summary = summarize(collect(configs))
    table = to_markdown(summary, ["cifar10", "svhn"], ["resnet18"], ["sgd", "sam", "eigen_sam"])
    lines = table.strip().splitlines()
    assert lines[0] == "| Architecture | Method | CIFAR-10 | SVHN |"
    half = 4.302652729911275 * 0.2 / math.sqrt(3)                            # s = 0.2 (percent)
    assert lines[2] == f"| ResNet18 | SGD | 94.8 ± {half:.1f} (n=3) | — |"
    assert lines[3] == "|  | SAM | 95.5 ± 0.2 (n=3) | **96.3** ± n/a (n=1) |"
    assert lines[4].startswith("|  | Eigen-SAM | **96.0** ± ") and lines[4].endswith("(n=2) | — |")
    rows = list(csv.DictReader(io.StringIO(to_csv(summary))))
    assert len(rows) == 4
    eig = next(r for r in rows if r["method"] == "eigen_sam")
    assert eig["n_seeds"] == "2" and eig["seeds"] == "0 1" and float(eig["mean_accuracy_pct"]) == pytest.approx(96.0)
    assert float(eig["ci95_half_width_pct"]) == pytest.approx(12.706204736 * math.sqrt(0.02) / math.sqrt(2), abs=1e-4)


def test_collect_refuses_a_run_of_another_configuration(tmp_path):
    configs = fake_grid(tmp_path, {("cifar10", "sam", 0): 0.95})
    changed = [c.replace(rho=0.2) for c in configs]
    with pytest.raises(ValueError, match="rho"):
        collect(changed)
    # how a cell ran (threads, device, progress) does not matter
    assert len(collect([c.replace(threads=1, device="cpu", progress=False) for c in configs])) == 1


def test_tiny_real_grid(tmp_path, capsys):
    data = tmp_path / "data"
    write_mnist_style(data / "FashionMNIST" / "raw", n_train=64, n_test=20, seed=2)
    settings = ["--data-dir", str(data), "--threads", "1", "--no-progress", "--device", "cpu",
                "--set", "epochs=1", "--set", 'model_kwargs={"width": 2}', "--set", "batch_size=32", "--set", "p=1"]
    runs = tmp_path / "runs"
    argv = ["--datasets", "fashion_mnist", "--models", "resnet18", "--methods", "sgd", "eigen_sam",
            "--seeds", "0", "1", "--out", str(runs)] + settings
    assert main(argv) == 0
    printed = capsys.readouterr().out
    table = (runs / "table1.md").read_text()
    assert table in printed and table.count("(n=2)") == 2 and "| ResNet18 | SGD |" in table
    assert (runs / "table1.csv").read_text().count("\n") == 3                # header + 2 rows
    finals = sorted(runs.glob("*/final.json"))
    assert len(finals) == 4
    saved = json.loads(finals[0].read_text())["config"]
    assert (saved["data_dir"], saved["threads"], saved["progress"], saved["device"]) == (str(data), 1, False, "cpu")
    stamps = [f.stat().st_mtime_ns for f in finals]
    assert main(argv + ["--collect-only"]) == 0                  # collects; trains nothing
    assert [f.stat().st_mtime_ns for f in finals] == stamps
    assert (runs / "table1.md").read_text() == table
    # the grid in parts: one seed's table from the same directory, a cell of it trained before
    assert main([*argv[:argv.index("--seeds")], "--seeds", "1", *argv[argv.index("--seeds") + 3:],
                 "--collect-only"]) == 0
    assert (runs / "table1.md").read_text().count("(n=1)") == 2
    with pytest.raises(ValueError, match="--quick is the Fashion-MNIST / ResNet-18 grid"):
        main(["--quick", "--models", "resnet50", "--collect-only"])
