"""``build_model``: every model of the package by name."""
from __future__ import annotations

from torch import nn

from .._checks import check_int
from .mlp import MLP
from .resnet import resnet18, resnet34, resnet50
from .simple_cnn import SimpleCNN
from .vit import build_vit_b16, vit_tiny
from .wide_resnet import WideResNet, wrn28_10

__all__ = ["MODEL_NAMES", "build_model", "count_parameters"]


def _mlp(num_classes, in_channels, **kw):
    if in_channels is not None:
        raise ValueError("the 'mlp' model takes flat inputs: give in_features=... "
                         f"(e.g. 784), not in_channels={in_channels!r}")
    return MLP(num_classes=num_classes, **kw)


def _wrn(num_classes, in_channels, depth=28, widen_factor=10, **kw):
    return WideResNet(depth, widen_factor, num_classes=num_classes, in_channels=in_channels, **kw)


def _vit_b16(num_classes, in_channels, **kw):
    if in_channels != 3:
        raise ValueError(f"vit_b16 takes RGB inputs (in_channels=3), got in_channels={in_channels}")
    return build_vit_b16(num_classes, **kw)


_BUILDERS = {
    "mlp": _mlp,
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "wrn28_10": wrn28_10,
    "wrn": _wrn,
    "simple_cnn": SimpleCNN,
    "vit_b16": _vit_b16,
    "vit_tiny": vit_tiny,
}

#: names accepted by ``build_model``.
MODEL_NAMES = tuple(_BUILDERS)


def build_model(name: str, num_classes: int, in_channels: int | None = None,
                **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
        name: one of ``MODEL_NAMES``: ``mlp``, ``resnet18``, ``resnet34``, ``resnet50``,
            ``wrn28_10``, ``wrn`` (``depth``, ``widen_factor`` kwargs, default 28, 10),
            ``simple_cnn``, ``vit_b16`` (``weights_path``, ``image_size``, ``backend``
            kwargs; see ``build_vit_b16``), ``vit_tiny``.
        num_classes: number of output logits.
        in_channels: image channels, 3 when omitted (1 for Fashion-MNIST). Not accepted
            by ``mlp``, which takes flat vectors: pass ``in_features`` instead.
        **kwargs: passed to the model's constructor (e.g. ``width=16, norm="group"`` for
            ResNets, ``hidden=(784,), activation="gelu"`` for the MLP,
            ``image_size=28`` for SimpleCNN on Fashion-MNIST).

    Initialisation is deterministic given ``torch.manual_seed``. Unknown names raise
    ``ValueError`` listing the choices; unknown keyword arguments raise ``TypeError``.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model name={name!r}; choose one of {list(MODEL_NAMES)}")
    num_classes = check_int("num_classes", num_classes)
    if name != "mlp":
        in_channels = 3 if in_channels is None else check_int("in_channels", in_channels)
    return _BUILDERS[name](num_classes, in_channels, **kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
