"""Small building blocks shared by the convolutional models (normalisation choice)."""
from __future__ import annotations

import math

from torch import nn

from .._checks import check_choice

NORMS = ("batch", "group", "none")


def check_norm(norm) -> str:
    """Validate a ``norm`` argument; ``None`` is accepted as a synonym of ``"none"``."""
    if norm is None:
        return "none"
    return check_choice("norm", norm, NORMS)


def norm2d(norm: str, channels: int, *, bn_momentum: float = 0.1,
           max_groups: int = 32) -> nn.Module:
    """A 2-d normalisation layer over ``channels`` feature maps, input (B, C, H, W).

    * ``"batch"``: ``nn.BatchNorm2d(channels, momentum=bn_momentum)`` (has running-stat
      buffers, and its output depends on the whole minibatch in training mode);
    * ``"group"``: ``nn.GroupNorm(g, channels)`` with ``g = gcd(max_groups, channels)``
      groups (32 at standard widths, fewer at small test widths); no buffers, per-example;
    * ``"none"``: ``nn.Identity()``; callers then give the preceding convolution a bias.
    """
    if norm == "batch":
        return nn.BatchNorm2d(channels, momentum=bn_momentum)
    if norm == "group":
        return nn.GroupNorm(math.gcd(max_groups, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {list(NORMS)}, got norm={norm!r}")
