"""Argument checks shared by the whole package.

Every public entry point validates its hyperparameters with these helpers so that bad
input fails early with a ``ValueError`` that names the parameter and the value it got.
"""
from __future__ import annotations

import math
import numbers


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive(name: str, value) -> float:
    """Require a finite real number > 0 (e.g. the learning rate ``eta``)."""
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    return float(value)


def check_nonnegative(name: str, value) -> float:
    """Require a finite real number >= 0 (e.g. the SAM radius ``rho``)."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {name}={value!r}")
    return float(value)


def check_int(name: str, value, minimum: int = 1) -> int:
    """Require an integer >= ``minimum`` (e.g. ``m``, ``p``, ``q``, ``K``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {name}={value!r}")
    return int(value)


def check_choice(name: str, value, choices) -> str:
    """Require one of a fixed set of strings."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {name}={value!r}")
    return value
