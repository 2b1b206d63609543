"""Timing helper shared by the benchmark scripts."""
from __future__ import annotations

import statistics
import time

import torch


def median_seconds(fn, repeats: int, warmup: int = 3, device="cpu") -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed calls.

    On CUDA every call is followed by a synchronisation, so the time includes the work
    the call queued on the device.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"--repeats (timed calls) must be >= 1, got {repeats!r}")
    cuda = torch.device(device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
