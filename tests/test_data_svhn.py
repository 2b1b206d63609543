"""SVHN from small .mat files in the official layout (X: 32x32x3xN uint8, y: Nx1, 10 = digit 0)."""
import numpy as np
import pytest
import scipy.io
import torch

from sdesam.data import CorruptDatasetError, DatasetNotFoundError, load_dataset, load_svhn


def write_mat(path, n, seed, **override):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
    y[0, 0] = 10  # make sure the digit 0 is present
    variables = {"X": X, "y": y, **override}
    scipy.io.savemat(path, {k: v for k, v in variables.items() if v is not None})
    return X, y


def test_svhn_layout_and_labels(tmp_path):
    X, y = write_mat(tmp_path / "train_32x32.mat", 7, 0)
    Xt, yt = write_mat(tmp_path / "test_32x32.mat", 4, 1)
    splits = load_svhn(tmp_path)
    assert splits.train_images.shape == (7, 3, 32, 32) and splits.train_images.dtype == torch.uint8
    assert splits.test_labels.dtype == torch.int64
    n, c, h, w = 5, 2, 7, 30  # element by element: out[n, c, h, w] = X[h, w, c, n]
    assert splits.train_images[n, c, h, w] == X[h, w, c, n]
    np.testing.assert_array_equal(splits.test_images.numpy(), Xt.transpose(3, 2, 0, 1))
    assert splits.train_labels[0] == 0
    np.testing.assert_array_equal(splits.train_labels.numpy(), y[:, 0] % 10)
    assert splits.train_labels.max() <= 9
    train, test = load_dataset("svhn", tmp_path)
    assert train.images.shape == (7, 3, 32, 32) and test.num_classes == 10


def test_svhn_extra_and_subfolder(tmp_path):
    folder = tmp_path / "svhn"
    folder.mkdir()
    X, _ = write_mat(folder / "train_32x32.mat", 3, 0)
    write_mat(folder / "test_32x32.mat", 2, 1)
    Xe, ye = write_mat(folder / "extra_32x32.mat", 4, 2)
    splits = load_svhn(tmp_path, extra=True)
    assert splits.train_images.shape == (7, 3, 32, 32)
    np.testing.assert_array_equal(splits.train_images[3:].numpy(), Xe.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(splits.train_labels[3:].numpy(), ye[:, 0] % 10)
    assert load_svhn(tmp_path).train_images.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("override,problem", [
    ({"y": None}, "no variable 'y'"),
    ({"X": np.zeros((32, 32, 1, 3), np.uint8)}, "shape \\(32, 32, 3, N\\)"),
    ({"X": np.zeros((32, 32, 3, 3), np.float64)}, "must be uint8"),
    ({"y": np.zeros((3, 1), np.uint8)}, "1..10"),
    ({"y": np.ones((2, 1), np.uint8)}, "N = 3"),
])
def test_svhn_malformed(tmp_path, override, problem):
    write_mat(tmp_path / "train_32x32.mat", 3, 0, **override)
    write_mat(tmp_path / "test_32x32.mat", 2, 1)
    with pytest.raises(CorruptDatasetError, match=problem) as info:
        load_svhn(tmp_path)
    assert str(tmp_path / "train_32x32.mat") in str(info.value)


def test_svhn_unreadable_and_missing(tmp_path):
    write_mat(tmp_path / "train_32x32.mat", 3, 0)
    data = (tmp_path / "train_32x32.mat").read_bytes()
    (tmp_path / "test_32x32.mat").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptDatasetError, match="MATLAB") as info:
        load_svhn(tmp_path)
    assert str(tmp_path / "test_32x32.mat") in str(info.value)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks test_32x32.mat") as info:
        load_svhn(tmp_path)
    assert str(tmp_path / "svhn") in str(info.value)
