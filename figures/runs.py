"""What the figures that train networks (Figures 1, 3, 5, Tables 3–4, Appendix A) and
Table 1 share; each figure is an ``sdesam.experiment`` command (its flags, validation,
output directory and summary).

- ``TrainingSettings``: the training fields every such figure exposes, turned into a
  ``sdesam.training.TrainConfig`` by the Table 1 preset (``presets.table1``) plus the
  figure's values — the figures train with the project's one trainer, never a loop of
  their own; ``check_training`` refuses, before anything runs, what no run could train;
- ``check_overrides``: the ``--set KEY=VALUE`` fields a command may not take (those it
  sets per run, and those it has a flag for);
- ``run_or_collect``: train a run in its own directory, resume it after an interruption,
  or collect it when it has finished (after checking that it ran this configuration);
- ``t_interval`` / ``t_band``: mean and Student-t 95% half-width;
- labels, captions and ``resolve_dataset`` (``"auto"``: CIFAR-10 when present).
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats

from sdesam.data import DatasetNotFoundError, load_dataset
from sdesam.training import RESUME_MUTABLE_FIELDS, TrainConfig, table1, train
from sdesam.training.files import FINAL_FILE, METRICS_FILE, STEPS_FILE, read_json, read_jsonl

__all__ = ["TrainingSettings", "Run", "run_or_collect", "check_overrides", "check_distinct", "t_interval",
           "t_band", "resolve_dataset", "dataset_label", "model_label", "method_label", "training_caption",
           "RUN_FIELDS", "PER_RUN_FLAGS", "DATASET_LABELS", "MODEL_LABELS", "METHOD_LABELS"]

#: TrainConfig fields that say how a run ran, not what it computed (ignored when a
#: finished run is matched against its configuration)
RUN_FIELDS = RESUME_MUTABLE_FIELDS + ("device",)

#: TrainConfig fields a command sets for every run from its own flags (not ``--set``)
PER_RUN_FLAGS = {"out_dir": "--out", "data_dir": "--data-dir", "device": "--device", "threads": "--threads",
                 "progress": "--no-progress"}

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST",
                  "svhn": "SVHN"}
MODEL_LABELS = {"resnet18": "ResNet18", "resnet50": "ResNet50", "wrn28_10": "WideResNet-28-10"}
METHOD_LABELS = {"sgd": "SGD", "sam": "SAM", "eigen_sam": "Eigen-SAM", "usam": "USAM",
                 "reverse_sam": "Reverse-SAM", "egr": "EGR"}


def dataset_label(name: str) -> str:
    return {"mnist": "MNIST", **DATASET_LABELS}.get(name, name)


def model_label(name: str) -> str:
    return {"simple_cnn": "SimpleCNN", "mlp": "MLP", **MODEL_LABELS}.get(name, name)


def method_label(name: str) -> str:
    return METHOD_LABELS.get(name, name)


def training_caption(cfg, paper: tuple[str, str]) -> str:
    """The start of a figure's title: "<model> (width w) on <dataset>[ — stand-in for the
    paper's <model> on <dataset>]: <n> training images, B = <B>". ``paper`` is the
    paper's (dataset, model); ``cfg`` a figure configuration with ``dataset`` and ``model``."""
    is_paper = (cfg.dataset, cfg.model) == tuple(paper) and not cfg.model_kwargs
    note = "" if is_paper else f" — stand-in for the paper's {model_label(paper[1])} on {dataset_label(paper[0])}"
    width = f" (width {cfg.model_kwargs['width']})" if "width" in cfg.model_kwargs else ""
    n_train = "all" if cfg.train_subset is None else str(cfg.train_subset)
    return (f"{model_label(cfg.model)}{width} on {dataset_label(cfg.dataset)}{note}: {n_train} training images, "
            f"B = {cfg.batch_size}")


def resolve_dataset(name: str, preferred: str, fallback: str, data_dir=None) -> str:
    """``name`` unless it is ``"auto"``: then ``preferred`` when its files load here, else
    ``fallback`` (e.g. CIFAR-10 when present, otherwise Fashion-MNIST)."""
    if name != "auto":
        return name
    try:
        load_dataset(preferred, data_dir, download=False)
    except DatasetNotFoundError:
        return fallback
    return preferred


def check_distinct(flag: str, values) -> None:
    """Refuse a list that names a value twice (ValueError naming the option): a repeated
    seed or method would be run once and counted twice."""
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{flag} lists {v!r} twice")
        seen.add(v)


def check_overrides(overrides: dict, per_run: dict) -> None:
    """Refuse ``--set`` keys that are no ``TrainConfig`` field, that the command sets for
    every run itself (``per_run`` maps them to what sets them, e.g. ``{"method": "--methods"}``,
    plus ``PER_RUN_FLAGS``), or ``resume`` (every run resumes). ValueError naming the key."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in overrides:
        if key not in names:
            raise ValueError(f"--set {key}=…: TrainConfig has no field {key!r}")
        if key == "resume":
            raise ValueError("--set resume=…: every run resumes from its directory; remove it")
        source = {**PER_RUN_FLAGS, **per_run}.get(key)
        if source is not None:
            raise ValueError(f"--set {key}=…: {key} is set for each run by {source}; use that instead")


@dataclass
class TrainingSettings:
    """Training fields shared by the figures; everything else is Table 1's preset
    (batch 256, SGD momentum 0.9, per-step cosine, weight decay 5e-5, pad-4 crop + flip,
    ρ by dataset, α = 0.2, p = 100, q = 5; docs/math.md §9). A figure's configuration adds its
    dataset(s) and model(s).

    Attributes:
        model_kwargs: passed to ``build_model`` (e.g. ``{"width": 8}``).
        seeds: the seeds of every cell's runs (initialisation, shuffling, v̂₀).
        epochs: training length of every run (None: the preset's, 200; SGD 400).
        batch_size: minibatch size B.
        train_subset, test_subset: fixed subsets (subset seed 0) or None for all.
        lr, rho: base learning rate and SAM radius (None: the preset's for the dataset).
        overrides: any further ``TrainConfig`` fields (``--set KEY=VALUE``).
    """

    model_kwargs: dict = field(default_factory=dict)
    seeds: tuple = (0,)
    epochs: int | None = None
    batch_size: int = 256
    train_subset: int | None = None
    test_subset: int | None = None
    lr: float | None = None
    rho: float | None = None
    overrides: dict = field(default_factory=dict)

    def train_config(self, dataset: str, model: str, method: str, seed: int, out_dir: Path,
                     **changes) -> TrainConfig:
        """The ``TrainConfig`` of one run (resume on, out_dir set); ``changes`` win."""
        settings = dict(model_kwargs=dict(self.model_kwargs), batch_size=self.batch_size,
                        train_subset=self.train_subset, test_subset=self.test_subset)
        for name in ("epochs", "lr", "rho"):
            if getattr(self, name) is not None:
                settings[name] = getattr(self, name)
        settings.update(self.overrides)
        settings.update(changes)
        settings.update(out_dir=os.fspath(out_dir), resume=True)
        return table1(dataset, model, method, seed, **settings)

    def check_training(self, cells, per_run: dict, examples: int = 0) -> None:
        """Refuse, before anything runs (ValueError naming the option): negative or repeated
        seeds, a list of the configuration that names a value twice, ``--set`` keys the
        figure sets itself (``per_run``: field → its flag; the configuration's own fields
        have flags too), a training subset without one complete batch or smaller than
        ``examples`` (the images a probe measures on), and any value ``TrainConfig`` refuses
        in one of ``cells`` (``(dataset, model, method, changes)`` tuples: every kind of run
        the figure trains)."""
        if any(s < 0 for s in self.seeds):
            raise ValueError(f"--seeds must be integers >= 0, got {list(self.seeds)}")
        for f in dataclasses.fields(self):
            if isinstance(getattr(self, f.name), tuple):
                check_distinct("--" + f.name.replace("_", "-"), getattr(self, f.name))
        own = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(self)
               if f.name not in ("overrides", "seeds")}
        check_overrides(self.overrides, {**own, "dataset": "--dataset", "model": "--model", "seed": "--seeds",
                                         **per_run})
        if self.train_subset is not None and examples > self.train_subset:
            raise ValueError(f"--train-subset {self.train_subset} is smaller than the {examples} training "
                             "images the probe measures on")
        for dataset, model, method, changes in cells:
            self.train_config(dataset, model, method, self.seeds[0], Path("."), **changes)


@dataclass
class Run:
    """A finished training run as its files hold it."""

    name: str
    config: TrainConfig
    final: dict
    history: list
    steps: list


def run_or_collect(name: str, config: TrainConfig, callbacks=()) -> Run:
    """Train ``config`` (resuming its directory if interrupted) unless it has finished;
    then read its files. A finished run must have been produced by ``config`` (up to
    ``RUN_FIELDS``) — otherwise ``ValueError`` names the fields that differ."""
    out = Path(config.out_dir)
    if not (out / FINAL_FILE).exists():
        train(config.replace(resume=True), callbacks)
    final = read_json(out / FINAL_FILE)
    diffs = TrainConfig.from_dict(final["config"]).differences(config, ignore=RUN_FIELDS)
    if diffs:
        raise ValueError(f"{out} holds a run of another configuration: {diffs} "
                         "(its value, this figure's value); use another --out")
    steps = read_jsonl(out / STEPS_FILE) if (out / STEPS_FILE).exists() else []
    return Run(name, config, final, read_jsonl(out / METRICS_FILE), steps)


def t_interval(values, level: float = 0.95) -> tuple[float, float | None]:
    """(mean, confidence half-width t_{(1+level)/2, n−1} · s / √n); half-width None for n < 2."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None
    return mean, float(stats.t.ppf((1 + level) / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)


def t_band(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, Student-t half-width t_{(1+level)/2, n−1} · s/√n); NaN half-width for n < 2."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return math.nan, math.nan
    mean, half = t_interval(values, level)
    return mean, math.nan if half is None else half
