"""Reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

An IDX file is: two zero bytes, a type code, the number of dimensions k, then k
big-endian uint32 sizes, then the values in C order, big-endian. Type codes: 0x08
uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64.
"""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from .errors import CorruptDatasetError
from .splits import DataSplits, checked_pair

__all__ = ["read_idx", "load_idx_splits", "IDX_FILE_NAMES"]

#: The four files of MNIST and Fashion-MNIST (each may also carry a ``.gz`` suffix).
IDX_FILE_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_TYPE_CODES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorruptDatasetError(path, f"cannot be read ({exc})") from exc
    if raw[:2] == b"\x1f\x8b":  # gzip magic; an IDX file starts with two zero bytes
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise CorruptDatasetError(
                path, f"is not a complete gzip stream ({type(exc).__name__}: {exc})"
            ) from exc
    return raw


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzip detected from its content, not its name).

    Returns:
        A writable array of the stored shape, in native byte order (uint8 for MNIST).

    Raises:
        CorruptDatasetError: bad magic number or type code, a header shorter than its
            dimension count, or a body whose length differs from the product of the
            dimensions times the item size (truncated or with trailing bytes).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise CorruptDatasetError(path, f"is {len(raw)} bytes long, too short for an IDX header")
    if raw[0] != 0 or raw[1] != 0:
        raise CorruptDatasetError(
            path, f"bad IDX magic number 0x{raw[:4].hex()} (must start with two zero bytes)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _TYPE_CODES:
        raise CorruptDatasetError(path, f"unknown IDX type code 0x{code:02x}")
    if ndim == 0:
        raise CorruptDatasetError(path, "IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptDatasetError(
            path, f"truncated IDX header: {ndim} dimensions need {header} bytes, file has {len(raw)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _TYPE_CODES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        kind = "truncated" if body < expected else "has trailing bytes"
        raise CorruptDatasetError(
            path, f"{kind}: shape {shape} of {dtype.name} needs {expected} data bytes, found {body}"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)



def load_idx_splits(files) -> DataSplits:
    """Read the four MNIST-style IDX files.

    Args:
        files: mapping from each name in :data:`IDX_FILE_NAMES` to its path.

    Returns:
        DataSplits with uint8 images of shape (N, 28, 28) and int64 labels in 0..9.
    """
    train_x, train_y, test_x, test_y = (Path(files[name]) for name in IDX_FILE_NAMES)
    pairs = [
        checked_pair(read_idx(x), read_idx(y), image_shape=(28, 28), num_classes=10,
                     images_source=x, labels_source=y)
        for x, y in ((train_x, train_y), (test_x, test_y))
    ]
    return DataSplits(*pairs[0], *pairs[1])
