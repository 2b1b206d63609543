"""The ``sdesam`` command: ``sdesam <command> ...``.

Commands:
    train   train an image classifier (SGD / SAM / Eigen-SAM / …); ``sdesam train -h``
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main", "key_value", "optional"]


def key_value(text: str) -> tuple[str, object]:
    """argparse type for ``KEY=VALUE``: the value parsed as JSON when it is JSON
    (``width=8`` → 8, ``norm=\"group\"`` or ``norm=group`` → "group")."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def optional(kind):
    """argparse type: ``kind(text)``, or None for the text ``none`` (any case)."""
    def parse(text: str):
        return None if text.lower() == "none" else kind(text)
    parse.__name__ = f"{getattr(kind, '__name__', 'value')} or none"
    return parse


def main(argv=None) -> int:
    from . import train as train_command

    parser = argparse.ArgumentParser(prog="sdesam", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train_parser = commands.add_parser("train", help="train an image classifier",
                                       description=train_command.__doc__,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
    train_command.add_arguments(train_parser)
    args = parser.parse_args(argv)
    try:
        return train_command.run(args)
    except ValueError as err:
        parser.exit(2, f"sdesam {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
