"""The trainer on small files in the official formats that the tests write."""
import copy
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path

import pytest
import torch

from sdesam.data import UnsafePickleError
from sdesam.errors import NonFiniteStateError
from sdesam.optim import GSAM, SAM, WSAM, frozen_running_stats
from sdesam.rules import ASAMRule, FisherSAMRule
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


#: the resumed runs: Eigen-SAM, SGD, and GSAM with its ρ schedule under SVAG (l = 2: two batches
#: per step, 3 steps per pass of the loader, one epoch = 12 steps), m-SAM and float16 with a GradScaler
RESUMED = {"eigen_sam": {}, "sgd": {},
           "gsam": dict(svag=2, rho_min=0.01, micro_batches=2, amp="fp16", epochs=1)}


@pytest.mark.parametrize("method", sorted(RESUMED))
def test_resume_after_kill_is_bit_identical(fmnist_dir, tmp_path, method):
    options = RESUMED[method]
    ell = options.get("svag", 1)
    per_pass = 6 // (2 if ell > 1 else 1)
    full = train(small_config(fmnist_dir, tmp_path / "full", method=method, **options), callbacks=[StepRecorder()])
    total = 6 * options.get("epochs", 3) * ell                          # 96 // 16 = 6 batches per epoch
    assert full.final["steps"] == total and len(full.history) == total // per_pass

    cfg = small_config(fmnist_dir, tmp_path / "killed", method=method, **options)
    script = KILLER.format(root=str(ROOT), kill_at=10, config=cfg.to_dict())
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    saved_step = 10 // per_pass * per_pass                              # the last pass finished before step 10
    assert saved["step"] == saved_step and saved["epoch"] == saved_step // per_pass
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
    assert [r["step"] for r in read_jsonl(tmp_path / "full" / "steps.jsonl")] == list(range(0, total, 3))
    final = json.loads((tmp_path / "killed" / "final.json").read_text())
    assert final["test_batches"] == 2 and final["config"]["method"] == method
    config_json = json.loads((tmp_path / "killed" / "config.json").read_text())
    assert config_json["resumed"][0]["at_step"] == saved_step
    assert config_json["config"] == cfg.to_dict()
    assert config_json["environment"]["versions"]["torch"] == metadata.version("torch")


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


# -- the SAM family through the trainer ----------------------------------------------------------
class BatchRecorder(Callback):
    """Keeps every step's data and the model's state before the first step."""

    every_steps = 1

    def __init__(self):
        self.data, self.initial = [], None

    def on_step(self, ctx):
        if ctx.step == 0:
            self.initial = {k: v.clone() for k, v in ctx.model.state_dict().items()}
        self.data.append(tuple(t.clone() for t in ctx.batch))


FAMILY_RUNS = {
    "gsam": (dict(gsam_alpha=0.3, rho_min=0.01, svag=2),
             lambda m, c, kw: GSAM(m.parameters(), alpha=0.3, rho_min=0.01, svag=2, **kw)),
    "wsam": (dict(gamma=0.8, clip_grad_norm=0.5, wsam_decouple=False),
             lambda m, c, kw: WSAM(m.parameters(), gamma=0.8, decouple=False, clip_grad_norm=0.5, **kw)),
    "msam": (dict(micro_batches=4), lambda m, c, kw: SAM(m.parameters(), micro_batches=4, **kw)),
    "asam": (dict(xi=0.01, accumulate=2),
             lambda m, c, kw: SAM(m.parameters(), rule=ASAMRule(0.01), accumulate=2, **kw)),
    "fisher_sam": (dict(eta_f=0.5), lambda m, c, kw: SAM(m.parameters(), rule=FisherSAMRule(0.5), **kw)),
    "sgd": (dict(svag=3), None),
}


@pytest.mark.parametrize("method", sorted(FAMILY_RUNS))
def test_family_methods_train_as_their_optimizers(fmnist_dir, tmp_path, method):
    """The trainer's run equals its optimizer stepping by hand on the data each step saw
    (two batches per step with SVAG, learning rate lr/l on the per-step cosine over l times
    the steps), and SVAG records its effective time."""
    options, make = FAMILY_RUNS[method]
    cfg = small_config(fmnist_dir, tmp_path / method, method=method, model="mlp", model_kwargs={"hidden": [8]},
                       epochs=1, **options)
    recorder = BatchRecorder()
    result = train(cfg, callbacks=[recorder])
    ell = cfg.svag
    assert result.final["steps"] == len(recorder.data) == 6 * ell            # l times the plain run's 6 steps
    assert all(len(y) == (32 if ell > 1 else 16) for _, y in recorder.data)
    model = copy.deepcopy(result.model)
    model.load_state_dict(recorder.initial)
    kw = dict(rho=cfg.rho, model=model, lr=cfg.lr / ell, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if make is None:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr / ell, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = make(model, cfg, kw)
    total = result.final["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total)))
    c1, c2 = (1.0, 0.0) if ell == 1 else ((1 + math.sqrt(2 * ell - 1)) / 2, (1 - math.sqrt(2 * ell - 1)) / 2)

    def loss(xb, yb):
        return torch.nn.functional.cross_entropy(model(xb), yb)

    for x, y in recorder.data:
        if make is None:
            opt.zero_grad()
            (c1 * loss(x[:16], y[:16]) + c2 * loss(x[16:], y[16:])).backward()
            opt.step()
        else:
            opt.step(opt.split_closure(loss, x, y))
        sched.step()
    for (name, a), b in zip(result.model.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b, rtol=0, atol=1e-6), name
    assert type(result.optimizer) is type(opt)
    if ell > 1:
        plain = BatchRecorder()                                  # the loader's batches, one per step
        train(small_config(fmnist_dir, tmp_path / "plain", method="sgd", model="mlp", model_kwargs={"hidden": [8]},
                           epochs=1), callbacks=[plain])
        for k in range(3):                                       # step k: batches 2k and 2k + 1 of the pass
            assert all(torch.equal(a, torch.cat([b, c])) for a, b, c in
                       zip(recorder.data[k], plain.data[2 * k], plain.data[2 * k + 1]))
        assert [h["effective_step"] for h in result.history] == [h["step"] / ell for h in result.history]
        assert result.history[-1]["effective_epoch"] == 1.0 and len(result.history) == 2 * ell  # passes of the loader


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

    def same(o):
        return (o.schedule, o.hvp_mode, o.perturbed_bn, o.rule.renormalize,
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


@pytest.mark.parametrize("argv,message", [
    (["--micro-batches", "3"], "micro_batches=3 must divide batch_size=256"),
    (["--method", "msam"], "msam' needs micro_batches >= 2"),
    (["--svag", "0"], "svag must be an integer >= 1"),
    (["--gamma", "1"], "gamma must lie in"),
    (["--method", "gsam", "--gsam-alpha", "-0.1"], "gsam_alpha must be"),
    (["--rho-min", "0.01"], "rho_min is GSAM's"),
    (["--method", "gsam", "--rho-min", "0.5"], "rho_min=0.5 must not exceed rho=0.05"),
    (["--method", "eigen_sam", "--svag", "2"], "svag needs SGD or a SAM-family method"),
    (["--method", "egr", "--amp", "fp16"], "amp='fp16' needs"),
    (["--method", "sgd", "--micro-batches", "2"], "micro_batches=2 needs a SAM-family method"),
    (["--micro-batches", "2", "--accumulate", "2"], "use one of the two"),
    (["--clip-grad-norm", "0"], "clip_grad_norm must be"),
])
def test_invalid_family_options_are_refused_in_one_line(capsys, argv, message):
    from sdesam.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", *argv, "--print-config"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and message in err and len(err.splitlines()) == 1, err


def test_family_options_on_the_command_line(capsys):
    from sdesam.cli import main

    assert main(["train", "--preset", "table1_quick", "--method", "gsam", "--gsam-alpha", "0.2", "--rho-min", "0.01",
                 "--svag", "4", "--micro-batches", "4", "--clip-grad-norm", "2", "--amp", "fp16",
                 "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["method"], printed["gsam_alpha"], printed["rho_min"], printed["svag"], printed["micro_batches"],
            printed["clip_grad_norm"], printed["amp"]) == ("gsam", 0.2, 0.01, 4, 4, 2.0, "fp16")
    assert main(["train", "--method", "wsam", "--gamma", "0.5", "--no-wsam-decouple", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["gamma"], printed["wsam_decouple"]) == (0.5, False)
    for method in ("asam", "fisher_sam"):
        assert main(["train", "--method", method, "--xi", "0.01", "--eta-f", "2", "--print-config"]) == 0
        assert json.loads(capsys.readouterr().out)["method"] == method
