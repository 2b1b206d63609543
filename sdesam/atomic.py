"""Atomic file writes: nothing ever sees a half-written file.

The content goes to ``<name>.tmp`` next to the target, is flushed and fsynced, then
renamed over the target (``os.replace``, atomic on POSIX), and the directory entry is
fsynced too. A crash leaves either the old file or the new one.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

__all__ = ["atomic_open", "atomic_write_text"]


def _fsync_directory(directory: Path) -> None:
    try:                                    # make the rename itself durable (POSIX)
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **open_kwargs):
    """``with atomic_open(path, "wb") as f: ...``: a file object whose content replaces
    ``path`` atomically when the block ends without an exception (else nothing changes)."""
    path = Path(path)
    # a temporary name of this process's own: processes writing the same path at once
    # (e.g. two first fetches of a data set) never share one
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_write_text(path, text: str) -> None:
    """Replace ``path`` by ``text`` (UTF-8) atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
