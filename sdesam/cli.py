"""The ``sdesam`` command: ``sdesam <command> ...``.

Commands:
    train   train an image classifier (SGD / SAM / Eigen-SAM / …); ``sdesam train -h``
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


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
