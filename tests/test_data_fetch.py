"""The one-time Fashion-MNIST fetch (apt-get download + dpkg-deb -x + SHA-256), with both
tools replaced by stubs on PATH: a good package, a corrupt one, none; and no apt at all."""
import gzip
import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from sdesam.data import CorruptDatasetError, DatasetNotFoundError, load_dataset, load_fashion_mnist
from sdesam.data import fashion_mnist as fashion_module

from .test_data_idx import NAMES, idx_bytes

APT_GET = """#!/bin/sh
# stub: `apt-get download PACKAGE` writes a .deb into the working directory
echo "apt-get $*" >> "$STUB_LOG"
[ "$STUB_MODE" = nothing ] && { echo "E: Unable to locate package $2" >&2; exit 100; }
: > "$2_0.0~git20200523.55506a9-1_all.deb"
"""
DPKG_DEB = """#!/bin/sh
# stub: `dpkg-deb -x DEB DIR` unpacks the prepared files under DIR
echo "dpkg-deb $*" >> "$STUB_LOG"
mkdir -p "$3/usr/share/datasets/fashion-mnist"
cp "$STUB_FILES"/* "$3/usr/share/datasets/fashion-mnist/"
"""


def fashion_files(directory: Path, seed=0, n_train=20, n_test=10):
    """Four small gzipped IDX files (Fashion-MNIST's names) and the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              rng.integers(0, 10, n_test, dtype=np.uint8)]
    directory.mkdir(parents=True)
    for name, array in zip(NAMES, arrays):
        (directory / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array, 0x08), mtime=0))
    return arrays


@pytest.fixture
def stub_apt(tmp_path, monkeypatch):
    """apt-get / dpkg-deb stubs first on PATH; the package's digests are those of the
    prepared files (the real package was fetched once by hand, see docs/data.md)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("apt-get", APT_GET), ("dpkg-deb", DPKG_DEB)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    files = tmp_path / "package-files"
    arrays = fashion_files(files)
    digests = {f"{name}.gz": hashlib.sha256((files / f"{name}.gz").read_bytes()).hexdigest() for name in NAMES}
    monkeypatch.setattr(fashion_module, "PACKAGE_SHA256", digests)
    monkeypatch.setattr(fashion_module, "DEBIAN_DIR", Path("/usr/share/datasets/fashion-mnist"))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STUB_FILES", str(files))
    monkeypatch.setenv("STUB_LOG", str(tmp_path / "calls.log"))
    monkeypatch.setenv("STUB_MODE", "good")
    if (fashion_module.DEBIAN_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian's dataset-fashion-mnist is installed here: no fetch would happen")
    return tmp_path, files, arrays


def test_good_package_is_fetched_verified_and_cached(stub_apt, capsys, monkeypatch):
    tmp_path, _, arrays = stub_apt
    root = tmp_path / "data"
    splits = load_fashion_mnist(root)
    for got, want in zip(splits, arrays):
        assert torch.equal(got, torch.from_numpy(want.astype(np.int64 if want.ndim == 1 else np.uint8)))
    log = (tmp_path / "calls.log").read_text().splitlines()
    assert log[0] == "apt-get download dataset-fashion-mnist" and log[1].startswith("dpkg-deb -x ")
    err = capsys.readouterr().err
    assert "apt-get download" in err and "dataset-fashion-mnist" in err and str(root) in err
    # cached in torchvision's layout; the temporary folder is gone
    assert sorted(p.name for p in root.iterdir()) == ["FashionMNIST"]
    assert sorted(p.name for p in (root / "FashionMNIST" / "raw").iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    # the second load reads the cache and runs nothing
    monkeypatch.setenv("STUB_MODE", "nothing")
    train, _ = load_dataset("fashion_mnist", root)
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 2 and len(train) == 20


def test_corrupt_package_leaves_nothing_in_the_cache(stub_apt):
    tmp_path, files, _ = stub_apt
    data = bytearray((files / "t10k-labels-idx1-ubyte.gz").read_bytes())
    data[-1] ^= 1
    (files / "t10k-labels-idx1-ubyte.gz").write_bytes(bytes(data))
    root = tmp_path / "data"
    with pytest.raises(CorruptDatasetError, match=r"t10k-labels-idx1-ubyte.gz: SHA-256 is .*nothing was cached"):
        load_fashion_mnist(root)
    assert list(root.iterdir()) == []               # no cache, no temporary folder


def test_no_package_names_the_fetch_tried(stub_apt, monkeypatch):
    tmp_path, _, _ = stub_apt
    monkeypatch.setenv("STUB_MODE", "nothing")
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist(root)
    message = str(info.value)
    assert "Tried to fetch it: `apt-get download dataset-fashion-mnist` exited with status 100" in message
    assert "Unable to locate package" in message and str(root / "FashionMNIST" / "raw") in message
    assert list(root.iterdir()) == []


def test_without_apt_the_clear_error_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_module, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(DatasetNotFoundError, match=r"needs apt-get and dpkg-deb, which this machine lacks"):
        load_fashion_mnist(tmp_path / "data")
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_fashion_mnist(tmp_path / "data", download=False)

