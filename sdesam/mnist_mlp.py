"""Figure 2's problem: a GeLU MLP on MNIST as a ``ModuleProblem`` — one builder for every
experiment on it (Figure 2, the weak-error and moment studies, the causal chain, benchmarks).

Preprocessing (one, everywhere): pixels/255, then standardised with the training set's
mean and standard deviation over all pixels (0.1307, 0.3081), flattened to 784 inputs.
The paper does not state its preprocessing; standardised inputs keep the pre-activations
O(1) under PyTorch's default initialisation, and this is the common MNIST pipeline.

``dataset="synthetic"`` gives MNIST-shaped random data (Gaussian inputs, uniform labels)
for development, tests and timing where MNIST is absent; problems built on it are named
``mnist-mlp-synthetic``, never mistaken for MNIST results.
"""
from __future__ import annotations

import torch

from ._checks import check_choice, check_int
from .models import MLP
from .problem import ModuleProblem

__all__ = ["mnist_mlp_problem", "MNIST_MEAN", "MNIST_STD"]

#: mean and std of MNIST's 60,000 training images over all pixels, in [0, 1] units
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def _data(dataset: str, data_dir, n_synthetic: int):
    """(train inputs (n, 784) standardised, train labels, test inputs, test labels)."""
    if dataset == "synthetic":
        g = torch.Generator().manual_seed(0)
        n = n_synthetic + 10_000
        x, y = torch.randn(n, 784, generator=g), torch.randint(10, (n,), generator=g)
        return x[:n_synthetic], y[:n_synthetic], x[n_synthetic:], y[n_synthetic:]
    from .data import load_dataset
    train, test = load_dataset("mnist", data_dir)
    mean, std = train.mean[0], train.std[0]

    def prep(images):
        return (images.reshape(images.shape[0], -1).float() / 255.0 - mean) / std

    return prep(train.images), train.labels, prep(test.images), test.labels


def mnist_mlp_problem(*, hidden: int = 784, n_train: int | None = None, batch_size: int = 128,
                      dtype: str = "float32", device="cpu", dataset: str = "mnist", data_dir=None,
                      subset_seed: int = 0, init_seed: int = 0, test: bool = True, **problem_kwargs) -> ModuleProblem:
    """The 784-``hidden``-10 exact-GeLU MLP (``sdesam.models.MLP``, initialised by
    ``torch.manual_seed(init_seed)``) with cross-entropy on MNIST.

    Args:
        hidden: hidden width (784: the paper's Figure 2 network, d = 623,290).
        n_train: None for all 60,000 training images in their file order; else the first
            ``n_train`` of a fixed permutation (seed ``subset_seed``).
        batch_size: B.
        dtype, device: of the parameters and data.
        dataset: ``"mnist"`` or ``"synthetic"`` (see the module docstring).
        data_dir: where MNIST lives or is cached (``sdesam.data``).
        test: attach the 10,000 test images (for test metrics).
        problem_kwargs: passed to ``ModuleProblem`` (e.g. ``block_memory``).
    """
    check_choice("dataset", dataset, {"mnist", "synthetic"})
    check_choice("dtype", dtype, {"float32", "float64"})
    hidden = check_int("hidden", hidden, 1)
    X, Y, Xt, Yt = _data(dataset, data_dir, n_synthetic=n_train or 60_000)
    if n_train is not None:
        n_train = check_int("n_train", n_train, 1)
        if n_train > X.shape[0]:
            raise ValueError(f"n_train={n_train} exceeds the {X.shape[0]} training images")
        perm = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(subset_seed))[:n_train]
        X, Y = X[perm], Y[perm]
    torch.manual_seed(init_seed)
    model = MLP(784, (hidden,), 10, activation="gelu")
    name = "mnist-mlp" if dataset == "mnist" else "mnist-mlp-synthetic"
    return ModuleProblem(model, "cross_entropy", X, Y, batch_size, test=(Xt, Yt) if test else None,
                         dtype=getattr(torch, dtype), device=device, name=f"{name}-{hidden}", **problem_kwargs)
