"""Wide residual networks (Zagoruyko & Komodakis 2016), CIFAR variant, e.g. WRN-28-10.

Pre-activation basic blocks (BN -> ReLU -> 3×3 conv -> BN -> ReLU -> [dropout] -> 3×3
conv) in three groups of widths 16k, 32k, 64k (k = ``widen_factor``) with strides 1, 2, 2
and (depth − 4)/6 blocks per group, after a 16-channel 3×3 stem; then BN -> ReLU ->
global average pool -> linear head. A block whose width or stride changes applies its
first BN-ReLU to the input and feeds the result to both branches, with a 1×1 projection
shortcut. This is the structure (and initialisation) of the widely used PyTorch port
``xternalz/WideResNet-pytorch`` of the authors' Torch code; WRN-28-10 with 10 classes has
36,479,194 parameters (36.5M as in the paper's Table).

BatchNorm uses PyTorch's momentum convention with the standard value 0.1 (the Torch
original's default; TF ports write it as decay 0.9).

Shapes: input (B, in_channels, H, W), H, W ≥ 4 (32 for CIFAR); output (B, num_classes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_int, check_nonnegative, check_positive
from ._layers import check_norm, norm2d

__all__ = ["WideBasicBlock", "WideResNet", "wrn28_10"]


class WideBasicBlock(nn.Module):
    """Pre-activation block. (B, in_planes, H, W) -> (B, out_planes, H/stride, W/stride)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, dropout: float = 0.0, *,
                 norm: str = "batch", bn_momentum: float = 0.1):
        super().__init__()
        bias = norm == "none"
        self.bn1 = norm2d(norm, in_planes, bn_momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=bias)
        self.bn2 = norm2d(norm, out_planes, bn_momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=bias)
        self.dropout = dropout
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.conv_shortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(act)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        shortcut = x if self.equal_in_out else self.conv_shortcut(act)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-depth-k. Input (B, in_channels, H, W) -> logits (B, num_classes).

    Args:
        depth: total depth, 6n + 4 (28 -> 4 blocks per group).
        widen_factor: k; group widths are 16k, 32k, 64k.
        num_classes: number of logits.
        in_channels: 3 for CIFAR/SVHN, 1 for Fashion-MNIST.
        dropout: dropout probability between the two convolutions of a block (0.0 default,
            as in the SAM/Eigen-SAM CIFAR experiments; the WRN paper also used 0.3).
        norm: ``"batch"`` (standard), ``"group"`` or ``"none"``/``None`` (BatchNorm-free;
            convolutions then get biases).
        bn_momentum: BatchNorm momentum, PyTorch convention (0.1 standard).

    Initialisation (as the reference port): convolutions Kaiming-normal (fan_out, ReLU),
    norm weights 1 and biases 0, linear bias 0 (weight PyTorch default).
    """

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 in_channels: int = 3, dropout: float = 0.0, norm: str | None = "batch",
                 bn_momentum: float = 0.1):
        super().__init__()
        depth = check_int("depth", depth, minimum=10)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth must be 6n + 4 (10, 16, 22, 28, ...), got depth={depth}")
        widen_factor = check_int("widen_factor", widen_factor)
        num_classes = check_int("num_classes", num_classes)
        in_channels = check_int("in_channels", in_channels)
        dropout = check_nonnegative("dropout", dropout)
        if dropout >= 1:
            raise ValueError(f"dropout must be < 1, got dropout={dropout}")
        norm = check_norm(norm)
        bn_momentum = check_positive("bn_momentum", bn_momentum)
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.depth, self.widen_factor, self.norm = depth, widen_factor, norm
        kw = dict(norm=norm, bn_momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1,
                               bias=norm == "none")
        self.block1 = self._group(widths[0], widths[1], n, 1, dropout, kw)
        self.block2 = self._group(widths[1], widths[2], n, 2, dropout, kw)
        self.block3 = self._group(widths[2], widths[3], n, 2, dropout, kw)
        self.bn1 = norm2d(norm, widths[3], bn_momentum=bn_momentum)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    @staticmethod
    def _group(in_planes, out_planes, n, stride, dropout, kw) -> nn.Sequential:
        return nn.Sequential(*[
            WideBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                           stride if i == 0 else 1, dropout, **kw)
            for i in range(n)])

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)                              # (B, 16, H, W)
        out = self.block1(out)                           # (B, 16k, H, W)
        out = self.block2(out)                           # (B, 32k, H/2, W/2)
        out = self.block3(out)                           # (B, 64k, H/4, W/4)
        out = F.relu(self.bn1(out))
        out = torch.flatten(self.pool(out), 1)           # (B, 64k)
        return self.fc(out)                              # (B, num_classes)


def wrn28_10(num_classes: int = 10, in_channels: int = 3, **kwargs) -> WideResNet:
    """WRN-28-10: 36,479,194 parameters for 10 classes."""
    return WideResNet(28, 10, num_classes=num_classes, in_channels=in_channels, **kwargs)
