"""The 6-layer "SimpleCNN" of the paper's Figure 1 (Jastrzebski et al.).

Source. The Eigen-SAM paper (Sec. 4.3) trains "a 6-layer SimpleCNN model, as used in
Jastrzebski et al. (2021); Deng et al. (2024)" on CIFAR-10 and gives no further details.
The SimpleCNN of Jastrzebski and co-authors is ``build_simple_cnn`` in their public code
``kudkudak/dnn_sharpest_directions`` (``src/models/simple_cnn.py``, Keras; root config
``src/configs/simple_cnn_configs.py``), the model the later "break-even point" (ICLR 2020)
and "catastrophic Fisher explosion" (ICML 2021) papers reuse under the same name. With
its root configuration (n_filters=32, kernel_size=3, n_dense=128, no BatchNorm, no
dropout, ReLU, Glorot-uniform weights, zero biases) it has exactly six weight layers:

    conv 3×3 "same"  3 -> 32,   ReLU
    conv 3×3 "valid" 32 -> 32,  ReLU,  max-pool 2
    conv 3×3 "same"  32 -> 64,  ReLU
    conv 3×3 "valid" 64 -> 64,  ReLU,  max-pool 2
    dense 64·6·6 = 2304 -> 128, ReLU
    dense 128 -> num_classes

(CIFAR 32×32: 32 -> 30 -> 15 -> 13 -> 6.) 361,898 parameters for 10 classes.

Choices we had to make. (1) The PyTorch code of the 2021 paper was not found in the
sources we could search, so the Keras definition above is the reference; its options
(``kernel_size``, ``n_filters``, ``n_dense``, ``bn``, ``dropout``, ``activation``) are all
exposed, e.g. the "medium" config is ``kernel_size=5, n_filters=100``. (2) Keras flattens
channels-last; we flatten PyTorch's (C, H, W) order — only a fixed permutation of the
dense layer's input weights, irrelevant for a freshly initialised model. (3) Glorot
(Xavier) uniform weights and zero biases, as Keras defaults, not PyTorch's defaults.
(4) With ``bn=True`` BatchNorm follows every conv/dense layer before its activation, as
in the Keras code (``bn5`` after the first dense layer included).
"""
from __future__ import annotations

from torch import nn

from .._checks import check_choice, check_int, check_nonnegative
from .mlp import ACTIVATIONS, make_activation

__all__ = ["SimpleCNN"]


def _spatial_after(image_size: int, k: int) -> int:
    s = image_size            # conv1 "same"
    s = s - k + 1             # conv2 "valid"
    s = s // 2                # max-pool 2
    s = s - k + 1             # conv3 "same", conv4 "valid"
    return s // 2             # max-pool 2


class SimpleCNN(nn.Sequential):
    """SimpleCNN as a ``nn.Sequential``: input (B, in_channels, S, S) -> logits (B, num_classes).

    Args:
        num_classes: number of logits.
        in_channels: 3 for CIFAR, 1 for (Fashion-)MNIST.
        image_size: S, the input height = width (32 for CIFAR, 28 for MNIST); fixes the
            dense layer's input size 2·n_filters·s², s = ((S−k+1)//2 − k + 1)//2.
        n_filters: channels of the first two convolutions (the last two have twice).
        kernel_size: odd convolution kernel size (3 standard; 5 in the "medium" config).
        n_dense: width of the hidden dense layer.
        bn: add BatchNorm after every conv / hidden dense layer (default off, as used).
        dropout: dropout probability after the hidden dense layer (default 0).
        activation: ``"relu"`` (standard), or ``"gelu"``, ``"tanh"``, ``"softplus"``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                 n_filters: int = 32, kernel_size: int = 3, n_dense: int = 128,
                 bn: bool = False, dropout: float = 0.0, activation: str = "relu"):
        num_classes = check_int("num_classes", num_classes)
        in_channels = check_int("in_channels", in_channels)
        image_size = check_int("image_size", image_size)
        f = check_int("n_filters", n_filters)
        k = check_int("kernel_size", kernel_size)
        if k % 2 == 0:
            raise ValueError(f"kernel_size must be odd ('same' padding), got kernel_size={k}")
        n_dense = check_int("n_dense", n_dense)
        dropout = check_nonnegative("dropout", dropout)
        if dropout >= 1:
            raise ValueError(f"dropout must be < 1, got dropout={dropout}")
        check_choice("activation", activation, ACTIVATIONS)
        s = _spatial_after(image_size, k)
        if s < 1:
            raise ValueError(f"image_size={image_size} is too small for kernel_size={k}: "
                             "the feature map vanishes before the dense layers")

        def conv(cin, cout, same):
            block = [nn.Conv2d(cin, cout, k, padding=k // 2 if same else 0)]
            if bn:
                block.append(nn.BatchNorm2d(cout))
            block.append(make_activation(activation))
            return block

        layers = [*conv(in_channels, f, True), *conv(f, f, False), nn.MaxPool2d(2),
                  *conv(f, 2 * f, True), *conv(2 * f, 2 * f, False), nn.MaxPool2d(2),
                  nn.Flatten(), nn.Linear(2 * f * s * s, n_dense)]
        if bn:
            layers.append(nn.BatchNorm1d(n_dense))
        layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(n_dense, num_classes))
        super().__init__(*layers)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.image_size = image_size
