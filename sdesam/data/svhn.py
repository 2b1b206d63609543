"""SVHN, cropped digits: 73,257 training, 26,032 test (and 531,131 extra) 32×32 RGB images.

Read from the official MATLAB files ``train_32x32.mat``, ``test_32x32.mat`` (and
optionally ``extra_32x32.mat``) with ``scipy.io.loadmat`` — no pickle involved. Each holds
``X`` (uint8, shape (32, 32, 3, N)) and ``y`` (shape (N, 1), values 1..10, where 10 is the
digit 0). Searched in the data directory ``root`` and in ``root/svhn``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from .errors import CorruptDatasetError, DatasetNotFoundError
from .paths import ENV_VAR, find_complete_set, resolve_data_dir
from .splits import DataSplits, checked_pair

__all__ = ["load_svhn"]

TRAIN_FILE, TEST_FILE, EXTRA_FILE = "train_32x32.mat", "test_32x32.mat", "extra_32x32.mat"


def load_svhn(data_dir=None, extra: bool = False) -> DataSplits:
    """Load SVHN (cropped digits).

    Args:
        data_dir: the data directory; default ``$SDESAM_DATA``, else ``~/.cache/sdesam``.
        extra: append the 531,131 "extra" images to the training set.

    Returns:
        DataSplits: uint8 images (N, 3, 32, 32), RGB, 0..255; int64 labels in 0..9 equal to
        the digit shown (the files' label 10 becomes 0).

    Raises:
        DatasetNotFoundError: the files are missing.
        CorruptDatasetError: a file is not a readable MATLAB v5 file or lacks ``X``/``y``.
    """
    root = resolve_data_dir(data_dir)
    names = (TRAIN_FILE, TEST_FILE, EXTRA_FILE) if extra else (TRAIN_FILE, TEST_FILE)
    directories = [root, root / "svhn"]
    files, partial = find_complete_set(directories, names, suffixes=("",))
    if files is None:
        advice = (
            f"Put the official files {', '.join(names)} (SVHN page: "
            f"http://ufldl.stanford.edu/housenumbers/, format 2) in {root} or {root / 'svhn'} "
            f"(choose the directory with data_dir=... or {ENV_VAR})."
        )
        raise DatasetNotFoundError("svhn", directories, advice, notes=partial)
    train = _read_mat(files[TRAIN_FILE])
    if extra:
        train = tuple(torch.cat(parts) for parts in zip(train, _read_mat(files[EXTRA_FILE])))
    return DataSplits(*train, *_read_mat(files[TEST_FILE]))


def _read_mat(path: Path):
    """One .mat file → (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except (ValueError, TypeError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise CorruptDatasetError(
            path, f"is not a readable MATLAB v5 file ({type(exc).__name__}: {exc})"
        ) from exc
    for key in ("X", "y"):
        if key not in mat:
            raise CorruptDatasetError(path, f"has no variable {key!r}")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise CorruptDatasetError(
            path, f"'X' must be uint8 of shape (32, 32, 3, N), got {x.dtype} of shape {x.shape}"
        )
    if y.ndim not in (1, 2) or y.size != x.shape[3] or (y.ndim == 2 and 1 not in y.shape):
        raise CorruptDatasetError(path, f"'y' must have shape (N, 1) with N = {x.shape[3]}, got {y.shape}")
    y = y.reshape(-1)
    if not np.issubdtype(y.dtype, np.integer) and not np.array_equal(y, np.round(y)):
        raise CorruptDatasetError(path, f"'y' must hold integers, got {y.dtype}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 1 or y.max() > 10):
        raise CorruptDatasetError(path, f"'y' must lie in 1..10 (10 = digit 0), found {y.min()}..{y.max()}")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) → (N, C, H, W)
    return checked_pair(images, y % 10, image_shape=(3, 32, 32), num_classes=10, images_source=path)
