"""Fully connected classifier: the paper's Figure 2 model (784-784-10, exact GeLU).

``MLP`` is a plain ``nn.Sequential`` of ``nn.Linear`` layers with one elementwise
activation module between consecutive layers and nothing else (no flatten, no dropout,
no normalisation), so code that special-cases "Sequential stacks of Linear + elementwise
activation" (fast per-example / Hessian-vector kernels) can recognise it with::

    isinstance(m, nn.Sequential) and all(isinstance(c, (nn.Linear, *ACTIVATION_TYPES))
                                         for c in m)
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .._checks import check_choice, check_int

__all__ = ["MLP", "ACTIVATIONS", "ACTIVATION_TYPES", "make_activation"]

#: activation name -> module factory. ``"gelu"`` is the exact (erf) GeLU of the paper.
ACTIVATIONS = {
    "gelu": lambda: nn.GELU(approximate="none"),
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}

#: module types that ``MLP`` may contain besides ``nn.Linear``.
ACTIVATION_TYPES = (nn.GELU, nn.ReLU, nn.Tanh, nn.Softplus)


def make_activation(name: str) -> nn.Module:
    """A fresh elementwise activation module by name (see ``ACTIVATIONS``)."""
    check_choice("activation", name, ACTIVATIONS)
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Multilayer perceptron ``Linear -> act -> ... -> Linear`` as a pure ``nn.Sequential``.

    Input (B, in_features) floats — flatten images yourself (MNIST: (B, 784)); output
    (B, num_classes) logits. The default is the paper's Figure 2 network 784-784-10 with
    the exact erf GeLU: 784·784 + 784 + 784·10 + 10 = 623,290 parameters.

    Args:
        in_features: input dimension (784 for MNIST / Fashion-MNIST).
        hidden: widths of the hidden layers, e.g. ``(784,)``; ``()`` gives a linear model.
        num_classes: output dimension.
        activation: ``"gelu"`` (exact erf GeLU), ``"relu"``, ``"tanh"`` or ``"softplus"``.
        bias: whether the linear layers have biases.

    Initialisation: PyTorch's default ``nn.Linear`` init (Kaiming-uniform with a=√5,
    uniform biases), deterministic under ``torch.manual_seed``. Layer ``i`` is ``self[i]``
    (Linear at even indices, activation at odd ones).
    """

    def __init__(self, in_features: int = 784, hidden: Sequence[int] = (784,),
                 num_classes: int = 10, activation: str = "gelu", bias: bool = True):
        in_features = check_int("in_features", in_features)
        num_classes = check_int("num_classes", num_classes)
        if isinstance(hidden, int) and not isinstance(hidden, bool):
            hidden = (hidden,)
        hidden = tuple(check_int("hidden", h) for h in hidden)
        check_choice("activation", activation, ACTIVATIONS)
        widths = (in_features, *hidden, num_classes)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(make_activation(activation))
            layers.append(nn.Linear(a, b, bias=bias))
        super().__init__(*layers)
        self.in_features = in_features
        self.hidden = hidden
        self.num_classes = num_classes
        self.activation = activation

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, hidden={self.hidden}, "
                f"num_classes={self.num_classes}, activation={self.activation!r}")
