"""Models for the sdesam experiments.

* ``MLP`` — the paper's Figure 2 network 784-784-10 with exact GeLU (pure ``nn.Sequential``).
* ``resnet18`` / ``resnet34`` / ``resnet50`` — CIFAR ResNets (BatchNorm, GroupNorm or none).
* ``WideResNet`` / ``wrn28_10`` — WRN-28-10.
* ``SimpleCNN`` — the 6-layer CNN of the paper's Figure 1 (Jastrzebski et al.).
* ``VisionTransformer`` / ``build_vit_b16`` / ``vit_tiny`` — ViT-B/16 fine-tuning with
  torchvision-compatible weights; torchvision itself is optional.
* ``build_model(name, num_classes, in_channels=None, **kwargs)`` — all of them by name.
"""
from .mlp import ACTIVATIONS, MLP
from .registry import MODEL_NAMES, build_model, count_parameters
from .resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50
from .simple_cnn import SimpleCNN
from .vit import (
                  LoadReport,
                  VisionTransformer,
                  build_vit_b16,
                  convert_torchvision_state_dict,
                  interpolate_pos_embedding,
                  load_state_dict_file,
                  load_torchvision_weights,
                  vit_b16,
                  vit_tiny,
)
from .wide_resnet import WideResNet, wrn28_10

__all__ = [
    "MLP", "ACTIVATIONS",
    "ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50",
    "WideResNet", "wrn28_10",
    "SimpleCNN",
    "VisionTransformer", "vit_b16", "vit_tiny", "build_vit_b16", "LoadReport",
    "convert_torchvision_state_dict", "interpolate_pos_embedding", "load_state_dict_file",
    "load_torchvision_weights",
    "MODEL_NAMES", "build_model", "count_parameters",
]
