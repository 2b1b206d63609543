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

import torch

from ..atomic import atomic_open, atomic_write_text

__all__ = ["atomic_write_text", "read_json", "write_json", "write_jsonl", "read_jsonl", "save_checkpoint",
           "load_checkpoint", "CONFIG_FILE", "METRICS_FILE", "STEPS_FILE", "CHECKPOINT_FILE",
           "FINAL_FILE"]

CONFIG_FILE, METRICS_FILE, STEPS_FILE = "config.json", "metrics.jsonl", "steps.jsonl"
CHECKPOINT_FILE, FINAL_FILE = "checkpoint.pt", "final.json"


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
    with atomic_open(path, "wb") as f:
        torch.save(state, f)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``: no code from the file can run."""
    return torch.load(path, map_location=map_location, weights_only=True)
