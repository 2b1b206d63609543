"""Where datasets live: the data directory and the search for complete file sets.

The data directory is resolved as: the explicit ``data_dir`` argument, else the
environment variable ``SDESAM_DATA``, else ``~/.cache/sdesam``. Loaders look for
user-provided files there and write their caches (e.g. ``mnist.npz``) there.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SDESAM_DATA"


def resolve_data_dir(data_dir=None) -> Path:
    """The data directory: ``data_dir`` > ``$SDESAM_DATA`` > ``~/.cache/sdesam``."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "sdesam"


def find_file(directory: Path, name: str, suffixes=("", ".gz")) -> Path | None:
    """``directory/name + suffix`` for the first suffix that exists as a file, else None."""
    for suffix in suffixes:
        path = directory / (name + suffix)
        if path.is_file():
            return path
    return None


def find_complete_set(directories, names, suffixes=("", ".gz")):
    """The first directory holding every file in ``names`` (each with any of ``suffixes``).

    Returns:
        ``(files, partial)``: ``files`` maps each name to its path (None when no directory
        is complete); ``partial`` lists, for directories holding only some of the files,
        a line naming the missing ones (to put in error messages).
    """
    partial = []
    for directory in directories:
        directory = Path(directory)
        found = {name: find_file(directory, name, suffixes) for name in names}
        if all(path is not None for path in found.values()):
            return found, partial
        missing = [name for name, path in found.items() if path is None]
        if len(missing) < len(names):
            partial.append(f"{directory} holds some files but lacks {', '.join(missing)}")
    return None, partial
