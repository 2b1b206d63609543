"""Fashion-MNIST: 60,000 training and 10,000 test images of clothing, 28×28, 10 classes.

Searched, in order: the data directory ``root`` itself, torchvision's layout
``root/FashionMNIST/raw``, and Debian's ``/usr/share/datasets/fashion-mnist`` (package
``dataset-fashion-mnist``). Each must hold the four IDX files (plain or ``.gz``), which
have the same names as MNIST's: keep the two datasets in different directories.

When none is complete and ``download=True``, on a machine with apt (no root needed):

1. ``apt-get download dataset-fashion-mnist`` into a temporary folder inside ``root``;
2. ``dpkg-deb -x`` of the downloaded ``.deb`` there;
3. the SHA-256 of the four ``.gz`` files checked against ``PACKAGE_SHA256`` (the files of
   version 0.0~git20200523.55506a9-1) — all four before any is kept;
4. the files copied atomically to ``root/FashionMNIST/raw`` (the cache; later calls find
   them there) and the temporary folder removed.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import DatasetNotFoundError
from .fetch import announce, install_verified, missing_tools, run_tool
from .idx import IDX_FILE_NAMES, load_idx_splits
from .paths import ENV_VAR, find_complete_set, resolve_data_dir
from .splits import DataSplits, check_label_counts

__all__ = ["load_fashion_mnist"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_PACKAGE = "dataset-fashion-mnist"
#: SHA-256 of the files in dataset-fashion-mnist 0.0~git20200523.55506a9-1.
PACKAGE_SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
TRAIN_COUNTS = (6000,) * 10
TEST_COUNTS = (1000,) * 10

_APT_TIMEOUT_S = 900


def load_fashion_mnist(data_dir=None, download: bool = True) -> DataSplits:
    """Load Fashion-MNIST.

    Args:
        data_dir: the data directory; default ``$SDESAM_DATA``, else ``~/.cache/sdesam``.
        download: allow fetching Debian's package with ``apt-get download`` when no copy
            is found (see the module docstring).

    Returns:
        DataSplits: uint8 images (60000, 28, 28) and (10000, 28, 28), pixel values 0..255;
        int64 labels in 0..9 (T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt,
        Sneaker, Bag, Ankle boot). Full-size sets must have 6000 / 1000 images per class.

    Raises:
        DatasetNotFoundError: no directory holds the four files and the fetch was refused,
            impossible (no apt) or failed (the message names the command and its error).
        CorruptDatasetError: a file is malformed, a fetched file fails its checksum (then
            nothing is cached), or the label counts are not Fashion-MNIST's.
    """
    root = resolve_data_dir(data_dir)
    cache = root / "FashionMNIST" / "raw"
    directories = [root, cache, DEBIAN_DIR]
    files, partial = find_complete_set(directories, IDX_FILE_NAMES)
    if files is None:
        if not download:
            raise DatasetNotFoundError("fashion_mnist", directories,
                                       _advice(root, "Not downloaded: download=False"), notes=partial)
        files = _fetch_debian_package(root, cache, directories, partial)
    splits = load_idx_splits(files)
    if len(splits.train_labels) == sum(TRAIN_COUNTS):
        check_label_counts(splits.train_labels, TRAIN_COUNTS, dataset="Fashion-MNIST training",
                           source=files[IDX_FILE_NAMES[1]])
    if len(splits.test_labels) == sum(TEST_COUNTS):
        check_label_counts(splits.test_labels, TEST_COUNTS, dataset="Fashion-MNIST test",
                           source=files[IDX_FILE_NAMES[3]])
    return splits


def _advice(root: Path, reason: str) -> str:
    return (f"{reason}\nPut the IDX files {', '.join(IDX_FILE_NAMES)} (plain or .gz) in {root} or "
            f"{root / 'FashionMNIST' / 'raw'} (choose the directory with data_dir=... or "
            f"{ENV_VAR}), or on Debian run `apt-get install {DEBIAN_PACKAGE}`.")


def _fetch_debian_package(root: Path, cache: Path, searched, partial) -> dict[str, Path]:
    """apt-get download + dpkg-deb -x into a temporary folder, verify, cache; the four
    cached paths by IDX name."""
    def not_found(reason: str):
        return DatasetNotFoundError("fashion_mnist", searched,
                                    _advice(root, f"Tried to fetch it: {reason}"), notes=partial)

    absent = missing_tools("apt-get", "dpkg-deb")
    if absent:
        raise not_found(f"`apt-get download {DEBIAN_PACKAGE}` needs {' and '.join(absent)}, "
                        "which this machine lacks (not Debian/Ubuntu)")
    root.mkdir(parents=True, exist_ok=True)
    announce(f"Fashion-MNIST not found; fetching Debian's package {DEBIAN_PACKAGE} with "
             f"`apt-get download` from this machine's apt sources, to cache it in {cache}")
    with tempfile.TemporaryDirectory(dir=root, prefix=".fashion-mnist-") as tmp:
        tmp = Path(tmp)
        failure = run_tool(["apt-get", "download", DEBIAN_PACKAGE], _APT_TIMEOUT_S, cwd=tmp)
        debs = sorted(tmp.glob(f"{DEBIAN_PACKAGE}_*.deb"))
        if failure is None and not debs:
            failure = f"`apt-get download {DEBIAN_PACKAGE}` left no {DEBIAN_PACKAGE}_*.deb"
        if failure is None:
            failure = run_tool(["dpkg-deb", "-x", str(debs[0]), str(tmp / "root")], _APT_TIMEOUT_S)
        if failure is not None:
            raise not_found(failure)
        unpacked = tmp / "root" / DEBIAN_DIR.relative_to("/")
        installed = install_verified({name: unpacked / name for name in PACKAGE_SHA256},
                                     PACKAGE_SHA256, cache, origin=debs[0].name)
    announce(f"Fashion-MNIST cached in {cache} (SHA-256 of the four files checked)")
    return {name: installed[name + ".gz"] for name in IDX_FILE_NAMES}
