"""Models for the sdesam experiments.

* ``MLP`` — the paper's Figure 2 network 784-784-10 with exact GeLU (pure ``nn.Sequential``).
* ``resnet18`` / ``resnet34`` / ``resnet50`` — CIFAR ResNets (BatchNorm, GroupNorm or none).
* ``WideResNet`` / ``wrn28_10`` — WRN-28-10.
* ``SimpleCNN`` — the 6-layer CNN of the paper's Figure 1 (Jastrzebski et al.).
"""
from .mlp import ACTIVATIONS, MLP
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .simple_cnn import SimpleCNN
from .wide_resnet import WideResNet, wrn28_10

__all__ = [
    "MLP", "ACTIVATIONS",
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
    "WideResNet", "wrn28_10",
    "SimpleCNN",
]
