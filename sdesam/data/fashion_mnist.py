"""Fashion-MNIST: 60,000 training and 10,000 test images of clothing, 28×28, 10 classes.

Searched, in order: the data directory ``root`` itself, torchvision's layout
``root/FashionMNIST/raw``, and Debian's ``/usr/share/datasets/fashion-mnist`` (package
``dataset-fashion-mnist``). Each must hold the four IDX files (plain or ``.gz``), which
have the same names as MNIST's: keep the two datasets in different directories.
"""
from __future__ import annotations

from pathlib import Path

from .errors import DatasetNotFoundError
from .idx import IDX_FILE_NAMES, load_idx_splits
from .paths import ENV_VAR, find_complete_set, resolve_data_dir
from .splits import DataSplits, check_label_counts

__all__ = ["load_fashion_mnist"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
TRAIN_COUNTS = (6000,) * 10
TEST_COUNTS = (1000,) * 10


def load_fashion_mnist(data_dir=None) -> DataSplits:
    """Load Fashion-MNIST.

    Args:
        data_dir: the data directory; default ``$SDESAM_DATA``, else ``~/.cache/sdesam``.

    Returns:
        DataSplits: uint8 images (60000, 28, 28) and (10000, 28, 28), pixel values 0..255;
        int64 labels in 0..9 (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
        Sneaker, Bag, Ankle boot). Full-size sets must have 6000 / 1000 images per class.

    Raises:
        DatasetNotFoundError: no directory holds the four files.
        CorruptDatasetError: a file is malformed or the label counts are not Fashion-MNIST's.
    """
    root = resolve_data_dir(data_dir)
    directories = [root, root / "FashionMNIST" / "raw", DEBIAN_DIR]
    files, partial = find_complete_set(directories, IDX_FILE_NAMES)
    if files is None:
        advice = (
            f"Put the IDX files {', '.join(IDX_FILE_NAMES)} (plain or .gz) in {root} or "
            f"{root / 'FashionMNIST' / 'raw'} (choose the directory with data_dir=... or "
            f"{ENV_VAR}), or on Debian run `apt-get install dataset-fashion-mnist`."
        )
        raise DatasetNotFoundError("fashion_mnist", directories, advice, notes=partial)
    splits = load_idx_splits(files)
    if len(splits.train_labels) == sum(TRAIN_COUNTS):
        check_label_counts(splits.train_labels, TRAIN_COUNTS, dataset="Fashion-MNIST training",
                           source=files[IDX_FILE_NAMES[1]])
    if len(splits.test_labels) == sum(TEST_COUNTS):
        check_label_counts(splits.test_labels, TEST_COUNTS, dataset="Fashion-MNIST test",
                           source=files[IDX_FILE_NAMES[3]])
    return splits
