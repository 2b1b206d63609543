"""Plumbing of the figures that train networks (Figures 1, 3, 5, Tables 3–4, Appendix A).

- ``TrainingSettings``: the training fields every such figure exposes, turned into a
  ``sdesam.training.TrainConfig`` by the Table 1 preset (``presets.table1``) plus the
  figure's values — the figures train with the project's one trainer, never a loop of
  their own;
- ``add_config_arguments`` / ``config_from_args``: every field of a figure's dataclass
  configuration is a command-line flag;
- ``prepare_output``: one output directory holds the results of one configuration
  (``config.json``); a different configuration is refused, the same one resumes;
- ``run_or_collect``: train a run in its own directory, resume it after an interruption,
  or collect it when it has finished (after checking that it ran this configuration);
- ``t_band``: mean and Student-t 95% half-width; ``write_csv``: tidy CSV, atomically.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from sdesam.atomic import atomic_write_text
from sdesam.cli import key_value, optional, prog_name
from sdesam.data import DatasetNotFoundError, load_dataset
from sdesam.training import RESUME_MUTABLE_FIELDS, TrainConfig, table1, train
from sdesam.training.files import FINAL_FILE, METRICS_FILE, STEPS_FILE, read_json, read_jsonl

from sdesam.parallel import resolve_device

from .common import check_counts, write_json_atomic
from .table1 import DATASET_LABELS, METHOD_LABELS, MODEL_LABELS, t_interval

__all__ = ["TrainingSettings", "Run", "run_or_collect", "prepare_output", "add_config_arguments",
           "config_from_args", "parse_figure_command", "run_figure_command", "t_band", "write_csv",
           "resolve_dataset", "dataset_label", "model_label", "method_label", "training_caption", "RUN_FIELDS"]

#: TrainConfig fields that say how a run ran, not what it computed (ignored when a
#: finished run is matched against its configuration)
RUN_FIELDS = RESUME_MUTABLE_FIELDS + ("device",)


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


@dataclass
class TrainingSettings:
    """Training fields shared by the figures; everything else is Table 1's preset
    (batch 256, SGD momentum 0.9, per-step cosine, weight decay 5e-5, pad-4 crop + flip,
    ρ by dataset, α = 0.2, p = 100, q = 5; docs/math.md §9). A figure's configuration adds its
    dataset(s) and model(s).

    Attributes:
        model_kwargs: passed to ``build_model`` (e.g. ``{"width": 8}``).
        seeds: runs per cell use seeds 0 … seeds−1 (initialisation, shuffling, v̂₀).
        epochs: training length of every run (None: the preset's, 200; SGD 400).
        batch_size: minibatch size B.
        train_subset, test_subset: fixed subsets (subset seed 0) or None for all.
        lr, rho: base learning rate and SAM radius (None: the preset's for the dataset).
        overrides: any further ``TrainConfig`` fields (``--set KEY=VALUE``).
    """

    model_kwargs: dict = field(default_factory=dict)
    seeds: int = 1
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


def _jsonable(obj):
    return json.loads(json.dumps(obj))


def prepare_output(out: Path, cfg) -> None:
    """Validate ``cfg``, create ``out`` and record ``cfg`` there; refuse a directory that
    holds results of another configuration (``SystemExit`` naming the differences)."""
    cfg.validate()
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "config.json"
    now = _jsonable(dataclasses.asdict(cfg))
    if saved.exists():
        prev = json.loads(saved.read_text())
        if prev != now:
            diff = {k: (prev.get(k), now.get(k)) for k in sorted(set(prev) | set(now))
                    if prev.get(k) != now.get(k)}
            raise SystemExit(f"{out} holds results of another configuration {diff} (saved, "
                             "requested); use another --out (or delete that directory)")
    write_json_atomic(now, saved)


# -- command line -------------------------------------------------------------------------
_SCALARS = {"int": int, "float": float, "str": str}


def _json_dict(text: str) -> dict:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def add_config_arguments(parser: argparse.ArgumentParser, config_cls, defaults) -> None:
    """One flag per dataclass field (``--field-name``); help shows the quick default.
    Tuples take several values, dicts a JSON object, optional numbers accept ``none``;
    ``overrides`` is ``--set KEY=VALUE`` (repeatable, JSON values)."""
    unset = argparse.SUPPRESS          # an absent flag leaves no attribute (``none`` is a value)
    for f in dataclasses.fields(config_cls):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        if f.name == "overrides":
            parser.add_argument("--set", dest="overrides", action="append", type=key_value, default=unset,
                                metavar="KEY=VALUE", help="TrainConfig field for every run (repeatable)")
        elif kind.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=unset,
                                help=f"default {default}")
        elif kind.startswith("tuple"):
            elem = type(default[0]) if default else str
            parser.add_argument(flag, nargs="+", type=elem, default=unset, help=f"default {' '.join(map(str, default))}")
        elif kind.startswith("dict"):
            parser.add_argument(flag, type=_json_dict, default=unset, help=f"JSON object, default {json.dumps(default)}")
        else:
            base = _SCALARS[kind.split("|")[0].strip()]
            parse = optional(base) if "None" in kind else base
            parser.add_argument(flag, type=parse, default=unset, help=f"default {default}")


def config_from_args(args: argparse.Namespace, config):
    """``config`` with every flag that was given applied (validated by the dataclass)."""
    changes = {}
    for f in dataclasses.fields(config):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if f.name == "overrides":
            value = {**config.overrides, **dict(value)}
        elif isinstance(getattr(config, f.name), tuple):
            value = tuple(value)
        changes[f.name] = value
    return dataclasses.replace(config, **changes)



def parse_figure_command(name: str, doc: str, config_cls, argv=None):
    """The command line shared by ``python -m figures.<name>``: the common flags
    (``--out``, ``--full``, ``--device``, ``--data-dir``, ``--threads``, ``--no-progress``)
    plus one flag per field of ``config_cls``, applied to its quick default (or to
    ``config_cls.full()`` with ``--full``). Returns ``(args, config)`` with ``args.device``
    resolved to a device string; an invalid value, a count of 0 or an empty list
    (``check_counts``; ``config_cls.zero_allowed`` names the counts that may be 0) exits
    with a message naming it, before anything runs."""
    ap = argparse.ArgumentParser(prog=prog_name(f"python -m figures.{name}"), description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs") / name, help="output directory")
    ap.add_argument("--full", action="store_true", help="the paper's configuration (for GPUs)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    ap.add_argument("--data-dir", default=None, help="data directory (default $SDESAM_DATA or ~/.cache/sdesam)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--no-progress", action="store_true")
    add_config_arguments(ap, config_cls, config_cls())
    args = ap.parse_args(argv)
    try:
        config = config_from_args(args, config_cls.full() if args.full else config_cls())
        check_counts(config, getattr(config_cls, "zero_allowed", ()))
        config.validate()
        if isinstance(config, TrainingSettings):
            # one run's TrainConfig, so that a bad training value (--lr -1, --set …) stops
            # here rather than after config.json is written
            model = getattr(config, "model", None) or config.models[0]
            try:
                config.train_config("fashion_mnist", model, "eigen_sam", 0, Path(name))
            except TypeError as err:
                raise ValueError(f"--set names no TrainConfig field ({err})") from None
    except (TypeError, ValueError) as err:
        raise SystemExit(str(err))
    args.device = str(resolve_device(args.device))
    return args, config


def run_figure_command(name: str, doc: str, config_cls, run, argv=None):
    """``python -m figures.<name>``: ``parse_figure_command``, then ``run(config, out,
    device=…, data_dir=…, threads=…, progress=…)``. Returns ``(args, summary)``."""
    args, config = parse_figure_command(name, doc, config_cls, argv)
    return args, run(config, args.out, device=args.device, data_dir=args.data_dir, threads=args.threads,
                     progress=not args.no_progress)

# -- statistics and files --------------------------------------------------------------
def t_band(values, level: float = 0.95) -> tuple[float, float]:
    """(mean, Student-t half-width t_{(1+level)/2, n−1} · s/√n); NaN half-width for n < 2."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not values:
        return math.nan, math.nan
    mean, half = t_interval(values, level)
    return mean, math.nan if half is None else half


def write_csv(path: Path, fieldnames, rows) -> None:
    """A tidy CSV (one observation per row), written to a temporary file and renamed."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n", extrasaction="raise")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())
