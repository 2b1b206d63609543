"""Files of a run directory, written atomically (temporary file + ``os.replace``).

    config.json     the exact TrainConfig, versions, device (written at the start)
    metrics.jsonl   one JSON object per epoch (rewritten from the checkpoint on resume)
    steps.jsonl     records returned by step callbacks, if any
    checkpoint.pt   everything needed to continue bit-for-bit (``torch.load(...,
                    weights_only=True)`` — tensors, numbers, strings and containers only)
    final.json      the final metrics with the configuration

A crash can never leave a half-written file in place of a good one: each file is
written to ``<name>.tmp`` in the same directory, flushed to disk, then renamed over
the old one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = ["atomic_write_text", "read_json", "write_json", "write_jsonl", "read_jsonl", "save_checkpoint",
           "load_checkpoint", "CONFIG_FILE", "METRICS_FILE", "STEPS_FILE", "CHECKPOINT_FILE",
           "FINAL_FILE"]

CONFIG_FILE, METRICS_FILE, STEPS_FILE = "config.json", "metrics.jsonl", "steps.jsonl"
CHECKPOINT_FILE, FINAL_FILE = "checkpoint.pt", "final.json"


def _replace(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    try:                                    # make the rename itself durable (POSIX)
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _replace(tmp, path)


def write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def save_checkpoint(path, state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _replace(tmp, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``: no code from the file can run."""
    return torch.load(path, map_location=map_location, weights_only=True)
