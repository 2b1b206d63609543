"""CIFAR ResNets (He et al. 2016), the variant used by the SAM / Eigen-SAM CIFAR code.

Differences from the ImageNet ResNet: a 3×3 stride-1 stem convolution and no max-pool,
so a 32×32 input keeps its resolution through the first stage. Four stages of widths
w, 2w, 4w, 8w (w = 64 by default) with strides 1, 2, 2, 2; global average pool; one
linear head. BasicBlock for ResNet-18/34, Bottleneck (expansion 4) for ResNet-50.
Module names (``conv1``, ``bn1``, ``layer1``…``layer4``, ``shortcut``, ``linear``) follow
the widely copied ``kuangliu/pytorch-cifar`` layout, whose parameter counts these match:
ResNet-18 11,173,962 and ResNet-50 23,520,842 for 10 classes.

Shapes: input (B, in_channels, H, W) with H, W ≥ 8 (32 for CIFAR/SVHN, 28 for
Fashion-MNIST); output (B, num_classes) logits. Spatial size after the stages is
ceil(H/8); the adaptive average pool makes any such size work.

``activation="gelu"`` replaces every ReLU by the exact GeLU: ReLU's gradient jumps where a
unit switches, so the Taylor expansion of ∇f(x + ρε) in ρ that the SAM SDEs rest on holds
only for the smooth variant (higher derivatives of a ReLU network are zero almost
everywhere and miss those jumps).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_positive
from ._layers import check_norm, norm2d

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50",
           "RESNET_CONFIGS", "ACTIVATIONS"]

#: the activations a ResNet may use
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got activation={name!r}")
    return ACTIVATIONS[name]


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection. (B, in, H, W) -> (B, planes, H/s, W/s)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, norm: str = "batch",
                 bn_momentum: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.act = _activation(activation)
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = norm2d(norm, planes, bn_momentum=bn_momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=bias)
        self.bn2 = norm2d(norm, planes, bn_momentum=bn_momentum)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes * self.expansion:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes * self.expansion, 1, stride=stride, bias=bias),
                norm2d(norm, planes * self.expansion, bn_momentum=bn_momentum),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, residual. (B, in, H, W) -> (B, 4·planes, H/s, W/s)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, *, norm: str = "batch",
                 bn_momentum: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.act = _activation(activation)
        bias = norm == "none"
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=bias)
        self.bn1 = norm2d(norm, planes, bn_momentum=bn_momentum)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = norm2d(norm, planes, bn_momentum=bn_momentum)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=bias)
        self.bn3 = norm2d(norm, out_planes, bn_momentum=bn_momentum)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=bias),
                norm2d(norm, out_planes, bn_momentum=bn_momentum),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act(out + self.shortcut(x))


#: depth -> (block type, blocks per stage)
RESNET_CONFIGS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """CIFAR ResNet. Input (B, in_channels, H, W) -> logits (B, num_classes).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        num_blocks: blocks in each of the four stages, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: number of output logits.
        in_channels: 3 for CIFAR/SVHN, 1 for Fashion-MNIST.
        width: channels of the stem and first stage (stages use width·1, 2, 4, 8); the
            standard network has 64. Small widths (e.g. 8) give fast CPU models of the
            same topology.
        norm: ``"batch"`` (standard), ``"group"`` (GroupNorm, per-example, no buffers) or
            ``"none"``/``None`` (identity, and the convolutions get biases). The last two
            are BatchNorm-free, e.g. for DDP runs without SyncBatchNorm or for
            per-example Hessian work; their parameter counts differ from the standard.
        bn_momentum: BatchNorm running-statistics momentum (PyTorch convention, 0.1).
        activation: ``"relu"`` (standard) or ``"gelu"`` (exact GeLU, a smooth network).

    Initialisation: PyTorch defaults (as in the reference CIFAR code), deterministic
    under ``torch.manual_seed``.
    """

    def __init__(self, block: type[nn.Module], num_blocks, num_classes: int = 10,
                 in_channels: int = 3, width: int = 64, norm: str | None = "batch",
                 bn_momentum: float = 0.1, activation: str = "relu"):
        super().__init__()
        self.act = _activation(activation)
        num_classes = check_int("num_classes", num_classes)
        in_channels = check_int("in_channels", in_channels)
        width = check_int("width", width)
        norm = check_norm(norm)
        bn_momentum = check_positive("bn_momentum", bn_momentum)
        num_blocks = tuple(check_int("num_blocks", n) for n in num_blocks)
        if len(num_blocks) != 4:
            raise ValueError(f"num_blocks must list 4 stages, got num_blocks={num_blocks!r}")
        self.norm = norm
        self.width = width
        self._in_planes = width
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=norm == "none")
        self.bn1 = norm2d(norm, width, bn_momentum=bn_momentum)
        kw = dict(norm=norm, bn_momentum=bn_momentum, activation=activation)
        self.layer1 = self._make_layer(block, width, num_blocks[0], 1, kw)
        self.layer2 = self._make_layer(block, 2 * width, num_blocks[1], 2, kw)
        self.layer3 = self._make_layer(block, 4 * width, num_blocks[2], 2, kw)
        self.layer4 = self._make_layer(block, 8 * width, num_blocks[3], 2, kw)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(8 * width * block.expansion, num_classes)
        del self._in_planes

    def _make_layer(self, block, planes: int, n: int, stride: int, kw) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(block(self._in_planes, planes, s, **kw))
            self._in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.bn1(self.conv1(x)))        # (B, w, H, W)
        out = self.layer1(out)                          # (B, w·e, H, W)
        out = self.layer2(out)                          # (B, 2w·e, H/2, W/2)
        out = self.layer3(out)                          # (B, 4w·e, H/4, W/4)
        out = self.layer4(out)                          # (B, 8w·e, H/8, W/8)
        out = torch.flatten(self.pool(out), 1)          # (B, 8w·e)
        return self.linear(out)                         # (B, num_classes)


def _resnet(depth: int, num_classes: int, in_channels: int, **kwargs) -> ResNet:
    block, blocks = RESNET_CONFIGS[depth]
    return ResNet(block, blocks, num_classes=num_classes, in_channels=in_channels, **kwargs)


def resnet18(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-18 (BasicBlock, 2-2-2-2); 11,173,962 parameters for 10 classes."""
    return _resnet(18, num_classes, in_channels, **kwargs)


def resnet34(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-34 (BasicBlock, 3-4-6-3)."""
    return _resnet(34, num_classes, in_channels, **kwargs)


def resnet50(num_classes: int = 10, in_channels: int = 3, **kwargs) -> ResNet:
    """CIFAR ResNet-50 (Bottleneck ×4, 3-4-6-3); 23,520,842 parameters for 10 classes."""
    return _resnet(50, num_classes, in_channels, **kwargs)
