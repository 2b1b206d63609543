"""``train(config) -> TrainResult``: the one training loop of the project.

SGD, the SAM family (SAM, USAM, Reverse-SAM, ASAM, Fisher-SAM, GSAM, WSAM, m-SAM, EGR) and
Eigen-SAM on the image benchmarks, with everything a long run needs:

- data resident on the device (``sdesam.data.DeviceLoader``), pad-4 crop + flip there;
- per-step cosine learning rate; the SAM-family optimizers of ``sdesam.optim``
  (BatchNorm statistics updated by the clean pass only);
- test evaluation and one ``metrics.jsonl`` line per epoch (train loss, test loss, test
  accuracy, learning rate, wall time, images/s);
- an atomic ``checkpoint.pt`` after every epoch holding the model, optimizer (incl. the
  base optimizer's momentum and Eigen-SAM's v̂ and counters), scheduler, loader and RNG
  states, and the metric history, so that ``resume=True`` continues bit-for-bit on CPU;
- bf16 autocast and channels-last on CUDA, or float16 autocast with a GradScaler
  (``amp="fp16"``); DDP through torchrun (see ``sdesam.parallel``); a progress bar; NaN/Inf
  losses stop the run with a ``NonFiniteStateError`` naming the step;
- SVAG (``svag=l``): two minibatches per step (consecutive batches of the loader; each
  process draws its share of both; callbacks see them concatenated), lr/l and l times the
  steps, with ``effective_step`` = step/l and ``effective_epoch`` in ``metrics.jsonl`` —
  sadhikamalladi/svag's ``sde1`` scaling (lr/l, epochs and schedule ×l, momentum and weight
  decay unchanged);
- ``Callback`` hooks for measurements during training (Figures 1, 3, 5, Appendix A).

The train loss of an epoch is the mean of the clean minibatch losses f_γ(x_k) seen by
the steps of that epoch (before each update, training mode; with SVAG the mean over both
minibatches); test metrics are computed on the whole test split (or ``test_subset``) in
eval mode after the epoch (an epoch is one pass of the loader: with SVAG, 1/(2l) of an
effective epoch).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import progress
from .._streams import STREAM_SHUFFLE, STREAM_TEST_SUBSET, STREAM_TRAIN_EIGVEC, STREAM_TRAIN_SUBSET, derived_seed
from ..data import DeviceLoader, ImageDataset, load_dataset
from ..discrete import svag_coefficients
from ..errors import NonFiniteStateError
from ..experiment import environment
from ..models import build_model
from ..optim import EGR, GSAM, SAM, WSAM, EigenSAM
from ..optim.norm_stats import eval_mode
from ..parallel import Comm, init_comm
from ..rules import ASAMRule, FisherSAMRule
from . import files
from .callbacks import Callback, CallbackContext
from .config import TrainConfig

__all__ = ["train", "TrainResult", "IMAGENET_MEAN", "IMAGENET_STD", "CHECKPOINT_FORMAT"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: version of the checkpoint layout
CHECKPOINT_FORMAT = 1
#: the rule of each SAM-family method, from the configuration
_RULES = {"sam": lambda c: "sam", "usam": lambda c: "usam", "reverse_sam": lambda c: "reverse_sam",
          "asam": lambda c: ASAMRule(c.xi), "fisher_sam": lambda c: FisherSAMRule(c.eta_f), "gsam": lambda c: "sam",
          "wsam": lambda c: "sam", "msam": lambda c: "sam"}
# models that take flat vectors
_FLAT_INPUT_MODELS = ("mlp",)
# models whose constructor takes the input size
_SIZED_MODELS = ("simple_cnn", "vit_b16", "vit_tiny")


@dataclass
class TrainResult:
    """What ``train`` returns.

    Attributes:
        config: the configuration that ran.
        out_dir: the run directory.
        history: one dict per epoch (the lines of ``metrics.jsonl``).
        final: the contents of ``final.json``.
        model: the trained network (not DDP-wrapped), on the run's device.
        optimizer: the optimizer in its final state.
    """

    config: TrainConfig
    out_dir: Path
    history: list
    final: dict
    model: nn.Module
    optimizer: torch.optim.Optimizer


def cross_entropy(logits, labels):
    """Mean cross-entropy computed in float32 (logits may be bf16 under autocast)."""
    return F.cross_entropy(logits.float(), labels)


class _Run:
    """State and steps of one run; ``train`` drives it."""

    def __init__(self, config: TrainConfig, callbacks):
        self.config = config.validate()
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise ValueError(f"callbacks must be sdesam.training.Callback instances, got {cb!r}")
            if cb.every_steps is not None and (not isinstance(cb.every_steps, int) or cb.every_steps < 1):
                raise ValueError(f"{cb.name}.every_steps must be an integer >= 1 or None, "
                                 f"got {cb.every_steps!r}")
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.info = init_comm(config.device)
        self.device = self.info.device
        cuda = self.device.type == "cuda"
        bf16 = config.amp == "bf16" or (config.amp == "auto" and cuda)
        self.amp_dtype = torch.bfloat16 if bf16 else torch.float16 if config.amp == "fp16" else None
        self.scaler = torch.amp.GradScaler(self.device.type) if config.amp == "fp16" else None
        image_model = config.model not in _FLAT_INPUT_MODELS
        self.channels_last = image_model and (cuda if config.channels_last is None else config.channels_last)
        if cuda:
            torch.backends.cudnn.benchmark = True   # fixed shapes; GPU runs are not bitwise reproducible
        self.out_dir = Path(config.out_dir)
        self._eval_loaders = {}

    # -- setup -------------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.amp_dtype)
        return contextlib.nullcontext()

    def load_data(self) -> tuple[ImageDataset, ImageDataset]:
        c = self.config
        train, test = load_dataset(c.dataset, c.data_dir)
        if c.train_subset is not None:
            train = train.subset(c.train_subset, torch.Generator().manual_seed(
                derived_seed(c.subset_seed, STREAM_TRAIN_SUBSET)))
        if c.test_subset is not None:
            test = test.subset(c.test_subset, torch.Generator().manual_seed(
                derived_seed(c.subset_seed, STREAM_TEST_SUBSET)))
        if c.normalization == "imagenet":
            if train.images.shape[1] != 3:
                raise ValueError(f"normalization='imagenet' needs RGB images, {c.dataset} has "
                                 f"{train.images.shape[1]} channel(s)")
            train = dataclasses.replace(train, mean=IMAGENET_MEAN, std=IMAGENET_STD)
            test = dataclasses.replace(test, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return train, test

    def build_model(self, train: ImageDataset) -> nn.Module:
        c = self.config
        _, channels, height, width = train.images.shape
        kwargs = dict(c.model_kwargs)
        size = c.input_size or height
        if c.model in _FLAT_INPUT_MODELS:
            kwargs.setdefault("in_features", channels * size * (c.input_size or width))
            model = build_model(c.model, train.num_classes, **kwargs)
        else:
            if c.model in _SIZED_MODELS:
                kwargs.setdefault("image_size", size)
            model = build_model(c.model, train.num_classes, channels, **kwargs)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """Loader batch (b, C, H, W) → what the model takes (resized, or flattened)."""
        size = self.config.input_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        if self.config.model in _FLAT_INPUT_MODELS:
            x = x.flatten(1)
        return x

    def make_optimizer(self, model: nn.Module, wrapped: nn.Module, steps_per_epoch: int):
        c = self.config
        base = dict(lr=c.lr / c.svag, momentum=c.momentum, nesterov=c.nesterov, weight_decay=c.weight_decay)
        common = dict(base_optimizer=torch.optim.SGD, rho=c.rho, model=wrapped,
                      sync_perturbation=c.sync_perturbation, **base)
        params = model.parameters()
        if c.method == "sgd":
            return torch.optim.SGD(params, **base)
        if c.method == "egr":
            return EGR(params, **common)
        if c.method == "eigen_sam":
            return EigenSAM(params, alpha=c.alpha, p=c.p, q=c.q, p_counting=c.p_counting,
                            first_refresh=c.first_refresh, steps_per_epoch=steps_per_epoch,
                            hvp_mode=c.hvp_mode, renormalize=c.renormalize, perturbed_bn=c.perturbed_bn,
                            estimator=c.estimator, hvp_method=c.hvp_method,
                            seed=derived_seed(c.seed, STREAM_TRAIN_EIGVEC), **common)
        family = dict(rule=_RULES[c.method](c), perturbed_bn=c.perturbed_bn, micro_batches=c.micro_batches,
                      accumulate=c.accumulate, svag=c.svag, scaler=self.scaler, clip_grad_norm=c.clip_grad_norm,
                      **common)
        if c.method == "gsam":
            return GSAM(params, alpha=c.gsam_alpha, rho_min=c.rho_min, lr_min=0.0, **family)
        if c.method == "wsam":
            return WSAM(params, gamma=c.gamma, decouple=c.wsam_decouple, **family)
        return SAM(params, **family)

    def make_scheduler(self, optimizer, total_steps: int):
        if self.config.schedule == "constant":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: 1.0)
        # per-step cosine from lr (step 0) towards 0 (after the last step)
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total_steps) / total_steps)))

    def _ordered_loader(self, dataset: ImageDataset, batch_size: int) -> DeviceLoader:
        return DeviceLoader(dataset, batch_size, shuffle=False, augment=False, drop_last=False,
                            device=self.device, channels_last=self.channels_last,
                            rank=self.info.rank, world_size=self.info.world_size)

    def model_inputs(self, dataset: ImageDataset, batch_size: int | None = None):
        """Model-ready batches of ``dataset``: in order, no augmentation, this process's share."""
        for x, y in self._ordered_loader(dataset, batch_size or self.config.eval_batch_size):
            yield self.model_input(x), y

    # -- steps ----------------------------------------------------------------------------------
    def train_step(self, optimizer, wrapped: nn.Module, x, y) -> torch.Tensor:
        """One optimizer step on the step's data (x, y): one minibatch, or with SVAG its two
        minibatches one after the other. Returns the mean clean loss."""
        def loss_of(xb, yb):
            with self.autocast():
                return cross_entropy(wrapped(xb), yb)

        if isinstance(optimizer, SAM):
            loss = optimizer.step(optimizer.split_closure(loss_of, x, y))
        elif isinstance(optimizer, EGR):
            loss = optimizer.step(lambda: loss_of(x, y))
        else:
            loss = self._sgd_step(optimizer, loss_of, x, y)
        if self.scaler is not None:
            self.scaler.update()
        return loss

    def _sgd_step(self, optimizer, loss_of, x, y) -> torch.Tensor:
        """Plain SGD; with SVAG the gradient of c₁ f_γ₁ + c₂ f_γ₂ (sadhikamalladi/svag's loss)."""
        c = self.config
        optimizer.zero_grad(set_to_none=True)
        if c.svag > 1:
            half = len(y) // 2
            losses = [loss_of(x[:half], y[:half]), loss_of(x[half:], y[half:])]
            c1, c2 = svag_coefficients(c.svag)
            objective, loss = c1 * losses[0] + c2 * losses[1], (losses[0] + losses[1]).detach() / 2
        else:
            objective = loss_of(x, y)
            loss = objective.detach()
        (objective if self.scaler is None else self.scaler.scale(objective)).backward()
        if c.clip_grad_norm is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           c.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()
        return loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: ImageDataset) -> tuple[float, float]:
        """(mean loss, accuracy) over the whole split, in eval mode, summed across processes."""
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        if id(dataset) not in self._eval_loaders:       # the split stays on the device
            self._eval_loaders[id(dataset)] = self._ordered_loader(dataset, self.config.eval_batch_size)
        with eval_mode(model):
            for x, y in self._eval_loaders[id(dataset)]:
                x = self.model_input(x)
                if y.numel() == 0:
                    continue
                with self.autocast():
                    logits = model(x)
                totals[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
                totals[1] += (logits.argmax(1) == y).sum()
                totals[2] += y.numel()
        loss_sum, correct, n = self.info.all_reduce_sum(totals).tolist()
        return loss_sum / n, correct / n


def _check_window(window, first_step: int, epoch: int, method: str, info: Comm) -> list[float]:
    """Losses of the last steps as floats (mean over processes); raise on NaN/Inf."""
    losses = info.all_reduce_sum(torch.stack(window).double()) / info.world_size
    values = losses.tolist()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise NonFiniteStateError(method, first_step + i,
                                      f"the minibatch training loss of step {first_step + i} "
                                      f"(0-based, epoch {epoch + 1}) is {v}")
    return values


def train(config: TrainConfig, callbacks=()) -> TrainResult:
    """Run (or resume) one training run and return its result.

    Args:
        config: the run's ``TrainConfig`` (see ``sdesam.training.presets`` for the paper's).
        callbacks: ``sdesam.training.Callback`` instances.

    Files in ``config.out_dir``: ``config.json``, ``metrics.jsonl``, ``steps.jsonl`` (if
    a callback records steps), ``checkpoint.pt``, ``final.json``. An existing run there is
    continued when ``config.resume`` is True and refused otherwise (FileExistsError).
    """
    run = _Run(config, callbacks)
    try:
        return _train(run)
    finally:
        run.info.close()


def _train(run: _Run) -> TrainResult:
    c, info, device, out = run.config, run.info, run.device, run.out_dir
    if info.world_size > 1:
        if not c.drop_last:
            raise ValueError("drop_last=False needs a single process: with DDP every process "
                             "must see an equal share of every batch")
        if c.batch_size % info.world_size:
            raise ValueError(f"batch_size={c.batch_size} is not divisible by the "
                             f"{info.world_size} processes")
        pieces = c.micro_batches * c.accumulate
        if (c.batch_size // info.world_size) % pieces:
            name = "micro_batches" if c.micro_batches > 1 else "accumulate"
            raise ValueError(f"{name}={pieces} must divide each process's share of the batch, "
                             f"{c.batch_size // info.world_size} (batch_size={c.batch_size}, "
                             f"{info.world_size} processes)")
    ckpt_path = out / files.CHECKPOINT_FILE
    state = None
    if ckpt_path.exists() or (out / files.FINAL_FILE).exists():
        if not c.resume:
            raise FileExistsError(f"{out} already holds a run; pass resume=True (--resume) to "
                                  "continue it, or choose another out_dir")
        if ckpt_path.exists():
            state = files.load_checkpoint(ckpt_path, map_location=device)
            if state.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{ckpt_path}: checkpoint format {state.get('format')!r}, "
                                 f"expected {CHECKPOINT_FORMAT}")
            diffs = TrainConfig.from_dict(state["config"]).differences(c)
            if diffs:
                raise ValueError(f"cannot resume {out}: the configuration differs from the "
                                 f"checkpoint's in {diffs} (checkpoint's value, given value)")
    train_data, test_data = run.load_data()
    torch.manual_seed(c.seed)
    model = run.build_model(train_data)
    wrapped = model
    if info.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    loader = DeviceLoader(train_data, c.batch_size // info.world_size, shuffle=True,
                          augment=c.augment, drop_last=c.drop_last,
                          generator=torch.Generator().manual_seed(derived_seed(c.seed, STREAM_SHUFFLE)),
                          device=device, channels_last=run.channels_last, rank=info.rank,
                          world_size=info.world_size)
    minibatches = 2 if c.svag > 1 else 1          # minibatches per step
    steps_per_epoch = len(loader) // minibatches    # optimizer steps per pass of the loader
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_data)} training examples give no {minibatches} batch(es) of {c.batch_size}")
    total_steps = c.total_steps(len(loader))
    optimizer = run.make_optimizer(model, wrapped, steps_per_epoch)
    scheduler = run.make_scheduler(optimizer, total_steps)

    history, step_records, step, wall = [], [], 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loader.load_state_dict(state["loader"])
        if run.scaler is not None:
            run.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        history, step_records = list(state["history"]), list(state["step_records"])
        step, wall = int(state["step"]), float(state["wall_time_s"])
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        env = environment(device, info.world_size)
        record = {"config": c.to_dict(), "environment": env, "resumed": [],
                  "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                  "train_examples": len(train_data), "test_examples": len(test_data)}
        if state is not None and (out / files.CONFIG_FILE).exists():
            record = files.read_json(out / files.CONFIG_FILE)
            record["resumed"].append({"at_step": step, "environment": env})
        files.write_json(out / files.CONFIG_FILE, record)
        files.write_jsonl(out / files.METRICS_FILE, history)
        if step_records:
            files.write_jsonl(out / files.STEPS_FILE, step_records)
    info.barrier()

    def context(**kw):
        return CallbackContext(config=c, model=model, optimizer=optimizer, loss_fn=cross_entropy,
                               device=device, out_dir=out, rank=info.rank, world_size=info.world_size,
                               model_inputs=run.model_inputs, train_data=train_data,
                               test_data=test_data, **kw)

    def save(epoch_done: int):
        if not c.checkpoint:
            return
        if info.is_main:
            rng = {"torch": torch.get_rng_state(),
                   "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}
            files.save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "config": c.to_dict(), "epoch": epoch_done,
                "step": step, "wall_time_s": wall, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "loader": loader.state_dict(), "rng": rng, "history": history,
                "step_records": step_records, "scaler": None if run.scaler is None else run.scaler.state_dict()})
        info.barrier()

    def flush(window, window_start, epoch, bar, loss_sum, loss_count):
        """Check the window's losses (NaN/Inf stop the run) and add them to the epoch's."""
        values = _check_window(window, window_start, epoch, c.method, info)
        bar.set_postfix_str(f"loss={values[-1]:.4f}, lr={scheduler.get_last_lr()[0]:.4g}")
        return loss_sum + sum(values), loss_count + len(values)

    step_callbacks = [cb for cb in run.callbacks if cb.every_steps is not None]
    model.train()
    while step < total_steps:
        epoch = loader.epoch
        t0 = time.perf_counter()
        loss_sum, loss_count, window, window_start, images = 0.0, 0, [], step, 0
        bar = progress(total=min(steps_per_epoch, total_steps - step), unit="step",
                       desc=f"{c.method} epoch {epoch + 1}/{math.ceil(total_steps / steps_per_epoch)}",
                       enabled=c.progress and info.is_main)
        pending = []
        for x, y in loader:
            pending.append((run.model_input(x), y))
            if len(pending) < minibatches:
                continue                    # a pass's unpaired last batch is dropped
            x, y = (pending[0] if minibatches == 1 else
                    (torch.cat([b[0] for b in pending]), torch.cat([b[1] for b in pending])))
            pending = []
            for cb in step_callbacks:
                if step % cb.every_steps == 0:
                    record = cb.on_step(context(step=step, epoch=epoch, batch=(x, y)))
                    if record is not None and info.is_main:
                        step_records.append({"step": step, "epoch": epoch, "callback": cb.name, **record})
                        files.write_jsonl(out / files.STEPS_FILE, step_records)
            window.append(run.train_step(optimizer, wrapped, x, y))
            scheduler.step()
            step += 1
            images += y.numel() * info.world_size
            bar.update(1)
            if len(window) == c.log_every or step == total_steps:
                loss_sum, loss_count = flush(window, window_start, epoch, bar, loss_sum, loss_count)
                window, window_start = [], step
            if step == total_steps:
                break
        if window:                          # the pass's last steps
            loss_sum, loss_count = flush(window, window_start, epoch, bar, loss_sum, loss_count)
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_time = time.perf_counter() - t0
        test_loss, test_accuracy = run.evaluate(model, test_data)
        wall += time.perf_counter() - t0
        metrics = {"epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                   "train_loss": loss_sum / loss_count, "test_loss": test_loss,
                   "test_accuracy": test_accuracy, "epoch_time_s": time.perf_counter() - t0,
                   "wall_time_s": wall, "images_per_s": images / train_time}
        if c.svag > 1:                      # SVAG's time: l steps of lr/l per step of lr
            metrics["effective_step"] = step / c.svag
            metrics["effective_epoch"] = step / (c.svag * len(loader))
        if isinstance(optimizer, EigenSAM):
            metrics["eigenvalue_estimate"] = optimizer.eigenvalue
        for cb in run.callbacks:
            extra = cb.on_epoch_end(context(step=step, epoch=epoch, metrics=metrics))
            if extra:
                metrics.update(extra)
        history.append(metrics)
        if info.is_main:
            files.write_jsonl(out / files.METRICS_FILE, history)
        save(epoch + 1)

    last = history[-1] if history else {}
    final = {"config": c.to_dict(), "epochs": len(history), "steps": step,
             "train_loss": last.get("train_loss"), "test_loss": last.get("test_loss"),
             "test_accuracy": last.get("test_accuracy"), "wall_time_s": wall,
             "images_per_s": (sum(h["images_per_s"] for h in history) / len(history)) if history else None}
    for cb in run.callbacks:
        extra = cb.on_train_end(context(step=step, epoch=len(history) - 1, metrics=final))
        if extra:
            final.update(extra)
    if info.is_main:
        files.write_json(out / files.FINAL_FILE, final)
    info.barrier()
    return TrainResult(config=c, out_dir=out, history=history, final=final, model=model,
                       optimizer=optimizer)
