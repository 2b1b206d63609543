"""Progress reporting that suits where it is written.

On a terminal: a tqdm bar. Written to a file or a pipe (logs, CI): plain lines, at most one
per ``LOG_INTERVAL_S`` seconds and one when the work ends — never thousands of redrawn
frames.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

__all__ = ["progress", "LOG_INTERVAL_S"]

#: seconds between two progress lines in a log
LOG_INTERVAL_S = 60.0


class _LineProgress:
    """The part of tqdm's interface sdesam uses, printing lines."""

    def __init__(self, total: int | None, desc: str, unit: str, file):
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.n, self.postfix = 0, ""
        self._t0 = self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= LOG_INTERVAL_S:
            self._last = now
            self._line()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def _line(self) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n}{total} {self.unit}s, {time.perf_counter() - self._t0:.0f} s{post}",
              file=self.file, flush=True)

    def close(self) -> None:
        if self.n:
            self._line()
            self.n = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True, file=None):
    """A progress reporter with ``update``, ``set_postfix_str`` and ``close``: tqdm on a
    terminal, lines in a log, nothing when ``enabled`` is False."""
    file = sys.stderr if file is None else file
    if not enabled:
        return tqdm(total=total, disable=True)
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=file)
    return _LineProgress(total, desc, unit, file)
