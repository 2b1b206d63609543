"""The trainer on small files in the official formats that the tests write."""
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sdesam.data import UnsafePickleError
from sdesam.errors import NonFiniteStateError
from sdesam.optim import frozen_running_stats
from sdesam.training import Callback, TrainConfig, official, table1, table1_quick, table2, train
from tests.test_data_idx import write_mnist_style

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("epoch_time_s", "wall_time_s", "images_per_s")


@pytest.fixture(autouse=True)
def one_thread():
    """The trainer sets torch's thread count from the config; restore it afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fmnist_dir(tmp_path_factory):
    """A tiny Fashion-MNIST in torchvision's layout: 96 training and 40 test images."""
    root = tmp_path_factory.mktemp("data")
    write_mnist_style(root / "FashionMNIST" / "raw", n_train=96, n_test=40, seed=3)
    return root


def small_config(data_dir, out_dir, **changes) -> TrainConfig:
    settings = dict(dataset="fashion_mnist", data_dir=str(data_dir), model="resnet18",
                    model_kwargs={"width": 2}, method="eigen_sam", epochs=3, batch_size=16,
                    lr=0.05, rho=0.05, p=4, q=2, eval_batch_size=20, threads=1, device="cpu",
                    out_dir=str(out_dir), progress=False, log_every=2)
    settings.update(changes)
    return TrainConfig(**settings)


class StepRecorder(Callback):
    """Records the clean minibatch loss of every third step, and one number per epoch."""

    every_steps = 3

    def on_step(self, ctx):
        x, y = ctx.batch
        with torch.no_grad(), frozen_running_stats(ctx.model):   # leave BN statistics alone
            return {"loss_before_step": ctx.loss_fn(ctx.model(x), y).item(), "batch": len(y)}

    def on_epoch_end(self, ctx):
        return {"param_norm": torch.cat([p.detach().reshape(-1) for p in ctx.model.parameters()]).norm().item()}

    def on_train_end(self, ctx):
        return {"test_batches": sum(1 for _ in ctx.model_inputs(ctx.test_data))}


def strip_timing(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# -- resume after a kill ------------------------------------------------------------------------
KILLER = """
import os, signal, sys, torch
sys.path.insert(0, {root!r})
from sdesam.training import Callback, TrainConfig, train
from tests.test_train import StepRecorder

class Kill(Callback):
    every_steps = 1
    def on_step(self, ctx):
        if ctx.step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

train(TrainConfig.from_dict({config!r}), callbacks=[StepRecorder(), Kill()])
"""


@pytest.mark.parametrize("method", ["eigen_sam", "sgd"])
def test_resume_after_kill_is_bit_identical(fmnist_dir, tmp_path, method):
    full = train(small_config(fmnist_dir, tmp_path / "full", method=method), callbacks=[StepRecorder()])
    assert full.final["steps"] == 18 and len(full.history) == 3       # 96 // 16 = 6 steps per epoch

    cfg = small_config(fmnist_dir, tmp_path / "killed", method=method)
    script = KILLER.format(root=str(ROOT), kill_at=10, config=cfg.to_dict())
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 6 and saved["epoch"] == 1                   # killed in epoch 2
    with pytest.raises(FileExistsError, match="resume"):
        train(cfg, callbacks=[StepRecorder()])
    with pytest.raises(ValueError, match="lr"):
        train(cfg.replace(resume=True, lr=0.1), callbacks=[StepRecorder()])
    resumed = train(cfg.replace(resume=True), callbacks=[StepRecorder()])

    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert strip_timing(resumed.history) == strip_timing(full.history)
    for run in ("full", "killed"):
        assert strip_timing(read_jsonl(tmp_path / run / "metrics.jsonl")) == strip_timing(full.history)
    assert read_jsonl(tmp_path / "killed" / "steps.jsonl") == read_jsonl(tmp_path / "full" / "steps.jsonl")
    assert [r["step"] for r in read_jsonl(tmp_path / "full" / "steps.jsonl")] == list(range(0, 18, 3))
    final = json.loads((tmp_path / "killed" / "final.json").read_text())
    assert final["test_batches"] == 2 and final["config"]["method"] == method
    config_json = json.loads((tmp_path / "killed" / "config.json").read_text())
    assert config_json["resumed"][0]["at_step"] == 6
    assert config_json["config"] == cfg.to_dict() and config_json["environment"]["torch"] == torch.__version__


def test_metrics_lines_and_cosine_schedule(fmnist_dir, tmp_path):
    result = train(small_config(fmnist_dir, tmp_path / "run", method="sam", epochs=2),
                   callbacks=[StepRecorder()])
    lines = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert {"train_loss", "test_loss", "test_accuracy", "lr", "wall_time_s", "images_per_s",
                "param_norm"} <= set(line)
        assert 0.0 <= line["test_accuracy"] <= 1.0 and math.isfinite(line["train_loss"])
    # per-step cosine over 12 steps: after 6 steps lr = 0.05 * (1 + cos(pi / 2)) / 2
    assert lines[0]["lr"] == pytest.approx(0.025)
    assert lines[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # the train loss is the mean of the clean minibatch losses the steps saw
    assert result.final["test_accuracy"] == lines[-1]["test_accuracy"]


def test_non_finite_loss_names_the_step(fmnist_dir, tmp_path):
    class Poison(Callback):
        every_steps = 1

        def on_step(self, ctx):
            if ctx.step == 7:
                with torch.no_grad():
                    next(ctx.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteStateError, match="step 7") as err:
        train(small_config(fmnist_dir, tmp_path / "nan", method="sam"), callbacks=[Poison()])
    assert err.value.step == 7 and err.value.dynamics == "sam"


# -- CIFAR through the trainer ----------------------------------------------------------------
def test_trainer_reads_cifar_and_refuses_a_poisoned_pickle(tmp_path):
    from tests.test_data_pickle import payloads, write_cifar10

    write_cifar10(tmp_path / "good" / "cifar-10-batches-py", n=4)
    cfg = TrainConfig(dataset="cifar10", data_dir=str(tmp_path / "good"), model="simple_cnn",
                      model_kwargs={"n_filters": 2, "n_dense": 4}, method="usam", epochs=1,
                      batch_size=5, out_dir=str(tmp_path / "run"), progress=False, threads=1,
                      device="cpu")
    result = train(cfg)
    assert result.final["steps"] == 4                        # 20 training images, batch 5

    evil = tmp_path / "evil" / "cifar-10-batches-py"
    write_cifar10(evil, n=4)
    marker = tmp_path / "marker"
    (evil / "data_batch_3").write_bytes(payloads(marker)["os.system"])
    with pytest.raises(UnsafePickleError, match="refused"):
        train(cfg.replace(data_dir=str(tmp_path / "evil"), out_dir=str(tmp_path / "evil-run")))
    assert not marker.exists() and not (tmp_path / "evil-run").exists()


# -- presets and the command line ---------------------------------------------------------------
def test_presets_follow_the_paper():
    sam = table1("cifar100", "wrn28_10", "sam", seed=2)
    sgd = table1("svhn", "resnet18", "sgd")
    assert (sam.rho, sam.lr, sam.epochs, sam.batch_size, sam.weight_decay) == (0.1, 0.1, 200, 256, 5e-5)
    assert (sgd.rho, sgd.lr, sgd.epochs) == (0.01, 0.01, 400)
    eig = table1("fashion_mnist", "resnet50", "eigen_sam", epochs=3)
    assert (eig.alpha, eig.p, eig.q, eig.rho, eig.epochs) == (0.2, 100, 5, 0.05, 3)
    vit = table2("cifar10", "sgd", weights_path="/w.pth")
    assert (vit.steps, vit.lr, vit.input_size, vit.normalization) == (8000, 0.01, 224, "imagenet")
    assert table2("cifar100", "eigen_sam", weights_path="/w.pth").steps == 4000
    with pytest.raises(ValueError, match="weights_path"):
        table2("cifar10", "sam")
    assert table1_quick("sgd").epochs == 2 * table1_quick("sam").epochs
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=None, steps=None)
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="adam")


def test_official_preset_trains_with_the_official_optimizer(fmnist_dir, tmp_path):
    """``official`` = Table 1's cell + every official optimizer setting; the trainer builds
    the optimizer ``EigenSAM.official`` builds (tests/test_official_replay.py replays it)."""
    from sdesam.optim import EigenSAM

    cfg = official("cifar100", "resnet18", seed=1)
    assert (cfg.method, cfg.p_counting, cfg.first_refresh, cfg.hvp_mode, cfg.perturbed_bn,
            cfg.renormalize, cfg.weight_decay, cfg.rho, cfg.p, cfg.q) == (
        "eigen_sam", "epoch", "after_p", "eval", "zero_momentum", False, 5e-4, 0.1, 100, 5)
    assert official("cifar10", "resnet18", method="sam").perturbed_bn == "zero_momentum"
    with pytest.raises(ValueError, match="method"):
        official("cifar10", "resnet18", method="egr")
    fields = {k: getattr(cfg, k) for k in ("p_counting", "first_refresh", "hvp_mode", "perturbed_bn",
                                           "renormalize", "weight_decay")}
    small = small_config(fmnist_dir, tmp_path / "official", epochs=2, test_subset=20, **fields)
    result = train(small)
    opt, model = result.optimizer, result.model
    reference = EigenSAM.official(model.parameters(), model=model, steps_per_epoch=6, lr=small.lr,
                                  rho=small.rho, p=small.p, q=small.q)
    same = lambda o: (o.schedule, o.hvp_mode, o.perturbed_bn, o.rule.renormalize,
                      o.param_groups[0]["momentum"], o.param_groups[0]["weight_decay"])
    assert same(opt) == same(reference)
    assert opt.steps == 12 and opt.has_estimate         # 96 images / 16: refreshes at k = 4 of each epoch
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert int(bn.num_batches_tracked) == 2 * 12         # clean + momentum-0 perturbed pass per step


def test_command_line(fmnist_dir, tmp_path, capsys):
    from sdesam.cli import main

    assert main(["train", "--preset", "table1", "--dataset", "svhn", "--model", "resnet18",
                 "--method", "sgd", "--seed", "4", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["epochs"], printed["lr"], printed["seed"]) == (400, 0.01, 4)
    out = tmp_path / "cli"
    assert main(["train", "--dataset", "fashion_mnist", "--data-dir", str(fmnist_dir), "--model", "mlp",
                 "--model-kwarg", "hidden=[8]", "--method", "egr", "--epochs", "1", "--batch-size", "32",
                 "--no-augment", "--test-subset", "none", "--threads", "1", "--device", "cpu",
                 "--no-progress", "--out-dir", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["out_dir"] == str(out)
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["model_kwargs"] == {"hidden": [8]} and saved["augment"] is False
    with pytest.raises(SystemExit):
        main(["train", "--method", "adam", "--print-config"])
    assert "method" in capsys.readouterr().err
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "sdesam.train", "--preset", "table1_quick", "--method",
                           "sam", "--print-config"], capture_output=True, text=True, cwd=str(ROOT), env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["model_kwargs"] == {"width": 8}
    assert main(["train", "--preset", "official", "--dataset", "cifar100", "--model", "resnet18",
                 "--rho", "0.1", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["method"], printed["p_counting"], printed["first_refresh"], printed["hvp_mode"],
            printed["perturbed_bn"], printed["weight_decay"]) == (
        "eigen_sam", "epoch", "after_p", "eval", "zero_momentum", 5e-4)
