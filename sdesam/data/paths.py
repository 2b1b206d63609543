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
    """The data directory: ``data_dir`` > ``$SDESAM_DATA`` > ``~/.cache/sdesam``. It may not
    exist yet (a fetch creates it); a path that exists and is not a directory is refused
    (NotADirectoryError naming it and where it came from)."""
    if data_dir is not None:
        path, source = Path(data_dir).expanduser(), "data_dir"
    elif os.environ.get(ENV_VAR):
        path, source = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        path, source = Path.home() / ".cache" / "sdesam", "the default data directory"
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{source} {str(path)!r} is a file, not a directory")
    return path


def check_data_dir(data_dir, flag: str = "--data-dir") -> None:
    """Refuse, before a command runs, a data directory given on its command line (``flag``)
    that is not an existing directory, and a ``$SDESAM_DATA`` that names a file (ValueError
    naming it). A command line names data it has; only the default directory and
    ``$SDESAM_DATA`` are created by a first fetch."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.exists():
            raise ValueError(f"{flag} {str(data_dir)!r} does not exist (create it, or leave {flag} out to use "
                             f"${ENV_VAR} or ~/.cache/sdesam)")
        if not path.is_dir():
            raise ValueError(f"{flag} {str(data_dir)!r} is not a directory")
    else:
        try:
            resolve_data_dir()
        except NotADirectoryError as err:
            raise ValueError(str(err)) from None


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
