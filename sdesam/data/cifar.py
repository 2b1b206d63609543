"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches.

Each batch file is a Python-2 pickle of a dict with ``b"data"`` (uint8, shape (n, 3072):
the red, green and blue 32×32 planes of each image, row-major) and the labels
(``b"labels"`` for CIFAR-10; ``b"fine_labels"`` and ``b"coarse_labels"`` for CIFAR-100).
They are read with the restricted unpickler.

Searched, in the data directory ``root``: the extracted folder
(``root/cifar-10-batches-py`` or ``root/cifar-100-python``), then ``root`` itself, then
the official archive (``root/cifar-10-python.tar.gz`` or ``root/cifar-100-python.tar.gz``),
whose MD5 is checked before its expected members are read into memory (nothing is
written to disk, so member paths cannot escape).
"""
from __future__ import annotations

import hashlib
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._checks import check_choice
from .errors import CorruptDatasetError, DatasetNotFoundError
from .paths import ENV_VAR, find_complete_set, resolve_data_dir
from .safe_pickle import safe_loads
from .splits import DataSplits, checked_pair

__all__ = ["load_cifar10", "load_cifar100"]


@dataclass(frozen=True)
class _CifarFormat:
    name: str
    folder: str
    archive: str
    md5: str
    train: tuple
    test: tuple


CIFAR10 = _CifarFormat(
    "cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
    tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
)
CIFAR100 = _CifarFormat(
    "cifar100", "cifar-100-python", "cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85", ("train",), ("test",),
)


def load_cifar10(data_dir=None) -> DataSplits:
    """Load CIFAR-10.

    Returns:
        DataSplits: uint8 images (50000, 3, 32, 32) and (10000, 3, 32, 32), RGB, 0..255;
        int64 labels in 0..9.

    Raises:
        DatasetNotFoundError: neither the batch files nor the archive were found.
        CorruptDatasetError: a file is malformed, or the archive's MD5 differs.
        UnsafePickleError: a batch names a global other than numpy array reconstruction.
    """
    return _load(CIFAR10, resolve_data_dir(data_dir), "labels", 10)


def load_cifar100(data_dir=None, labels: str = "fine") -> DataSplits:
    """Load CIFAR-100.

    Args:
        labels: ``"fine"`` (100 classes, the usual benchmark) or ``"coarse"`` (20 superclasses).

    Returns:
        DataSplits: uint8 images (50000, 3, 32, 32) and (10000, 3, 32, 32), RGB, 0..255;
        int64 labels in 0..99 (fine) or 0..19 (coarse).
    """
    check_choice("labels", labels, ("fine", "coarse"))
    num_classes = 100 if labels == "fine" else 20
    return _load(CIFAR100, resolve_data_dir(data_dir), f"{labels}_labels", num_classes)


def _load(fmt: _CifarFormat, root: Path, label_key: str, num_classes: int) -> DataSplits:
    names = fmt.train + fmt.test
    directories = [root / fmt.folder, root]
    files, partial = find_complete_set(directories, names, suffixes=("",))
    archive = root / fmt.archive
    if files is not None:
        blobs = {name: (str(path), _read(path)) for name, path in files.items()}
    elif archive.is_file():
        blobs = _read_archive(archive, fmt)
    else:
        advice = (
            f"Put the official archive {fmt.archive} (CIFAR page: "
            f"https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted folder "
            f"{fmt.folder}/ in {root} (choose the directory with data_dir=... or {ENV_VAR})."
        )
        raise DatasetNotFoundError(fmt.name, [*directories, archive], advice, notes=partial)
    parsed = {
        name: _parse_batch(data, source, label_key, num_classes)
        for name, (source, data) in blobs.items()
    }
    train = [torch.cat(parts) for parts in zip(*(parsed[name] for name in fmt.train))]
    test = [torch.cat(parts) for parts in zip(*(parsed[name] for name in fmt.test))]
    return DataSplits(*train, *test)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CorruptDatasetError(path, f"cannot be read ({exc})") from exc


def _read_archive(archive: Path, fmt: _CifarFormat) -> dict:
    """Check the archive's MD5, then read the expected members (only) into memory."""
    md5 = hashlib.md5(usedforsecurity=False)
    with open(archive, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
    if md5.hexdigest() != fmt.md5:
        raise CorruptDatasetError(
            archive, f"MD5 is {md5.hexdigest()}, the official {fmt.archive} has {fmt.md5}"
        )
    wanted = {f"{fmt.folder}/{name}": name for name in fmt.train + fmt.test}
    blobs = {}
    try:
        with tarfile.open(archive, mode="r|gz") as tar:  # one sequential pass
            for member in tar:
                member_name = member.name.removeprefix("./")
                if member_name not in wanted:
                    continue
                source = f"{archive}:{member_name}"
                if not member.isfile() or wanted[member_name] in blobs:
                    raise CorruptDatasetError(source, "is not a single regular file in the archive")
                blobs[wanted[member_name]] = (source, tar.extractfile(member).read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise CorruptDatasetError(archive, f"is not a readable tar.gz archive ({exc})") from exc
    missing = [member for member, name in wanted.items() if name not in blobs]
    if missing:
        raise CorruptDatasetError(archive, f"lacks the members {', '.join(missing)}")
    return blobs


def _parse_batch(data: bytes, source: str, label_key: str, num_classes: int):
    """One batch file's bytes → (uint8 images (n, 3, 32, 32), int64 labels (n,))."""
    obj = safe_loads(data, source=source, encoding="bytes")
    if not isinstance(obj, dict):
        raise CorruptDatasetError(source, f"expected a pickled dict, got {type(obj).__name__}")
    batch = {key.decode("latin-1") if isinstance(key, bytes) else key: value for key, value in obj.items()}
    for key in ("data", label_key):
        if key not in batch:
            raise CorruptDatasetError(
                source, f"has no key {key!r} (keys: {', '.join(map(str, batch))})"
            )
    images = batch["data"]
    if not isinstance(images, np.ndarray) or images.ndim != 2 or images.shape[1] != 3 * 32 * 32:
        got = f"shape {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise CorruptDatasetError(source, f"'data' must be an array of shape (n, 3072), got {got}")
    return checked_pair(
        images.reshape(-1, 3, 32, 32), batch[label_key],
        image_shape=(3, 32, 32), num_classes=num_classes, images_source=source,
    )
