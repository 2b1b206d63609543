"""Small helpers shared by the figure and table scripts: environment, atomic files."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from sdesam.atomic import atomic_open, atomic_write_text


def environment(device: torch.device | str) -> dict:
    """Package versions and the device a result was produced on (saved with every result)."""
    versions = {"python": platform.python_version()}
    for pkg in ("sdesam", "torch", "torchsde", "numpy", "scipy", "matplotlib"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = torch.device(device)
    info = {"versions": versions, "device": str(device), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "argv": sys.argv}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_summary(summary: dict, out: Path, device, t_start: float) -> dict:
    """Add the environment and this invocation's wall time (since ``t_start``, a
    ``time.perf_counter()`` value) to ``summary`` and write ``out/summary.json`` atomically."""
    summary["environment"] = environment(device)
    summary["wall_seconds_this_invocation"] = time.perf_counter() - t_start
    write_json_atomic(summary, out / "summary.json")
    return summary


def check_counts(config, zero_allowed=()) -> None:
    """Refuse, before anything runs, a count of 0 or an empty list in a figure's
    configuration (a dataclass): every int field must be >= 1 (>= 0 for the names in
    ``zero_allowed`` and for seeds, e.g. ``init_seed``), an optional int None or >= 1,
    and every tuple non-empty. Raises ValueError naming the option."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple) and not value:
            raise ValueError(f"{flag} must list at least one value, got none")
        if isinstance(value, int) and not isinstance(value, bool):
            least = 0 if f.name in zero_allowed or f.name.endswith("_seed") else 1
            if value < least:
                raise ValueError(f"{flag} must be >= {least}, got {value}")


def write_json_atomic(obj, path: str | os.PathLike) -> None:
    """Write JSON to a temporary file and rename it over ``path`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """Save ``fig`` as PNG (150 dpi) and PDF under ``out_dir``; return the paths."""
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for p in paths:
        with atomic_open(p, "wb") as f:
            fig.savefig(f, format=p.suffix[1:], dpi=150, bbox_inches="tight")
    return paths
