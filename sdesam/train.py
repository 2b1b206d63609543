"""Train an image classifier with SGD, SAM, USAM, Reverse-SAM, ASAM, Fisher-SAM, GSAM, WSAM,
m-SAM, EGR or Eigen-SAM.

    python -m sdesam.train --preset table1 --dataset cifar10 --model resnet18 --method eigen_sam --seed 0
    sdesam train --preset table1_quick --method sam --seed 1
    sdesam train --preset table1_quick --method gsam --gsam-alpha 0.2 --rho-min 0.01
    sdesam train --preset table1_quick --method msam --micro-batches 4 --svag 4   # m-SAM, SVAG l = 4
    sdesam train --preset official --dataset cifar100 --model resnet18 --rho 0.1   # RitianLuo/EigenSAM
    sdesam train --dataset fashion_mnist --model resnet18 --model-kwarg width=8 --method sgd \\
        --epochs 3 --train-subset 2000 --out-dir runs/try
    torchrun --nproc_per_node=8 -m sdesam.train --preset table2 --dataset cifar100 \\
        --method sam --weights-path ~/vit_b_16-c867db91.pth

Without ``--preset`` the defaults are ``TrainConfig``'s (Table 1's SAM settings). Every
``TrainConfig`` field is an option (``--field-name VALUE``; booleans ``--flag`` /
``--no-flag``; ``none`` for an optional number); ``--model-kwarg KEY=VALUE`` (repeatable,
VALUE parsed as JSON when possible) fills ``model_kwargs``. ``--resume`` continues the run
in ``--out-dir``; ``--print-config`` prints the resolved configuration and exits. The
final metrics are printed as one JSON line. An invalid combination of options (e.g.
``--micro-batches 3`` with a batch of 256, ``--svag 0``, ``--gamma 1``, ``--weights-path``
with a preset that does not use it), a ``--data-dir`` that is not a directory, an
``--out-dir`` that is a file and a device this machine lacks are refused before anything
runs, with one line naming them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from .cli import key_value, optional, prog_name
from .data import check_data_dir
from .parallel import check_device
from .training import PRESETS, TrainConfig, train

__all__ = ["main", "add_arguments", "config_from_args", "TrainConfig", "train"]

#: the options each preset needs, in the order of the preset function's arguments (then seed)
_PRESET_REQUIRED = {"table1": ("dataset", "model", "method"), "table2": ("dataset", "method"),
                    "table1_quick": ("method",), "official": ("dataset", "model")}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the trainer's options (one per ``TrainConfig`` field) to ``parser``."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default=argparse.SUPPRESS,
                        help="start from the paper's settings (table1, table2), the quick grid cell, "
                             "or the official code's algorithm (official: Eigen-SAM unless --method)")
    parser.add_argument("--weights-path", default=argparse.SUPPRESS,
                        help="table2: local torchvision ViT-B/16 ImageNet-1k checkpoint")
    parser.add_argument("--model-kwarg", action="append", type=key_value, default=argparse.SUPPRESS,
                        metavar="KEY=VALUE", help="a model_kwargs entry (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the configuration and exit")
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_kwargs":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        help_text = f"(default: {default})"
        if hint in (bool, bool | None):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
            continue
        args = typing.get_args(hint)
        kind = args[0] if args else hint
        parse = optional(kind) if type(None) in args else kind
        parser.add_argument(flag, type=parse, default=argparse.SUPPRESS, help=help_text)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` the parsed options describe."""
    given = {k: v for k, v in vars(args).items() if k not in ("preset", "print_config", "model_kwarg",
                                                                "weights_path", "command")}
    if hasattr(args, "model_kwarg"):
        given["model_kwargs"] = dict(args.model_kwarg)
    preset = getattr(args, "preset", None)
    weights = getattr(args, "weights_path", None)
    if weights is not None:
        if preset not in (None, "table2"):
            raise ValueError(f"--weights-path is used by --preset table2 or without a preset, not by --preset {preset}")
        if "weights_path" in given.get("model_kwargs", {}):
            raise ValueError("--weights-path and --model-kwarg weights_path=… both name the weights; give one")
        if preset is None or "model_kwargs" in given:
            given.setdefault("model_kwargs", {})["weights_path"] = weights
    if preset is None:
        return TrainConfig(**given)
    required = _PRESET_REQUIRED[preset]
    missing = [k for k in required if k not in given]
    if missing:
        raise ValueError(f"--preset {preset} needs --{' --'.join(missing)}")
    positional = [given.pop(k) for k in required] + [given.pop("seed", 0)]
    if preset == "table2":
        given["weights_path"] = weights
    return PRESETS[preset](*positional, **given)


def _check_run(config: TrainConfig) -> None:
    """Refuse, before a run starts, a ``data_dir`` that is not a directory, an ``out_dir``
    that is a file, and a device this machine lacks (ValueError naming the option)."""
    check_data_dir(config.data_dir)
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {config.out_dir!r} exists and is not a directory")
    if config.device != "auto":
        check_device(config.device)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        return 0
    _check_run(config)
    result = train(config)
    summary = {k: v for k, v in result.final.items() if k != "config"}
    print(json.dumps({"out_dir": str(result.out_dir), **summary}, sort_keys=True))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=prog_name("python -m sdesam.train"), description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")


if __name__ == "__main__":
    from sdesam.cli import run_module
    run_module("sdesam.train")
