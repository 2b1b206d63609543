"""The train/test arrays that every file loader returns, and their validation."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .errors import CorruptDatasetError

__all__ = ["DataSplits"]


class DataSplits(NamedTuple):
    """A dataset as four tensors, all on the CPU.

    Attributes:
        train_images: uint8, shape (N_train, H, W) for MNIST-style sets or
            (N_train, 3, H, W) for colour sets; pixel values 0..255.
        train_labels: int64, shape (N_train,), class indices 0..num_classes-1.
        test_images: uint8, shape (N_test, ...) as ``train_images``.
        test_labels: int64, shape (N_test,).
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


def checked_pair(images, labels, *, image_shape, num_classes, images_source, labels_source=None):
    """Validate one split given as numpy arrays and return it as (uint8, int64) tensors.

    Args:
        images: array of shape (N,) + image_shape, dtype uint8.
        labels: integer array-like of shape (N,), values in 0..num_classes-1.
        images_source, labels_source: the files they came from (the same file when
            ``labels_source`` is None), named in errors.
    """
    labels_source = images_source if labels_source is None else labels_source
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != tuple(image_shape):
        raise CorruptDatasetError(
            images_source,
            f"images must be uint8 of shape (N, {', '.join(map(str, image_shape))}), "
            f"got {images.dtype} of shape {images.shape}",
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise CorruptDatasetError(
            labels_source, f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}"
        )
    if len(labels) != len(images):
        raise CorruptDatasetError(
            labels_source, f"{len(labels)} labels for {len(images)} images (from {images_source})"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptDatasetError(
            labels_source,
            f"labels must lie in 0..{num_classes - 1}, found {labels.min()}..{labels.max()}",
        )
    return (
        torch.from_numpy(np.ascontiguousarray(images)),
        torch.from_numpy(labels.astype(np.int64)),
    )


def check_label_counts(labels: torch.Tensor, expected, *, dataset: str, source) -> None:
    """Require ``bincount(labels) == expected`` (guards against swapped or mixed-up files)."""
    counts = torch.bincount(labels, minlength=len(expected)).tolist()
    if counts != list(expected):
        raise CorruptDatasetError(
            source,
            f"labels per class are {counts}, but the standard {dataset} split has {list(expected)} "
            "(a different dataset's files, e.g. MNIST and Fashion-MNIST swapped, or a modified copy)",
        )
