"""The IDX loader and the MNIST source on small files written here in the real format."""

import dataclasses
import gzip
import hashlib
import io
import struct
import urllib.error

import numpy as np
import pytest
import torch

import machop.datasets.sources as sources
from machop.datasets import DatasetNotFoundError, MaseDataModule
from machop.datasets.colored import PALETTE
from machop.datasets.idx import read_idx
from machop.datasets.sources import DownloadError, fetch, load_splits, locate

NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file, header written by hand: 0, 0, type 0x08 (uint8), ndim, big-endian uint32 sizes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist(n_train=50, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    return {
        ("train", "images"): rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        ("train", "labels"): rng.integers(0, 10, n_train, dtype=np.uint8),
        ("test", "images"): rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        ("test", "labels"): rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_mnist(directory, arrays, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        data = idx_bytes(arr)
        if gz:
            (directory / (NAMES[key] + ".gz")).write_bytes(gzip.compress(data))
        else:
            (directory / NAMES[key]).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = idx_bytes(arr)
    path = tmp_path / "x"
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.dtype == np.uint8 and np.array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(idx_bytes(np.zeros((3, 4), np.uint8))[:-1])
    with pytest.raises(ValueError, match="size mismatch"):
        read_idx(short)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loads_from_data_dir(tmp_path, gz):
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays, gz=gz)
    splits = load_splits("mnist", tmp_path)
    assert splits.train_images.shape == (50, 1, 28, 28) and splits.train_images.dtype == torch.uint8
    assert splits.test_images.shape == (20, 1, 28, 28)
    assert splits.train_labels.dtype == torch.int64
    assert np.array_equal(splits.train_images[:, 0].numpy(), arrays[("train", "images")])
    assert np.array_equal(splits.test_labels.numpy(), arrays[("test", "labels")])


def test_data_dir_subfolder_and_env_var(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist", fake_mnist())
    assert locate("mnist", tmp_path) == tmp_path / "mnist"
    monkeypatch.setenv("MACHOP_DATA_DIR", str(tmp_path))
    assert locate("mnist") == tmp_path / "mnist"


def test_colored_mnist(tmp_path):
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays)
    splits = load_splits("colored_mnist", tmp_path)
    assert splits.train_images.shape == (50, 3, 28, 28)
    i = 7
    label = int(arrays[("train", "labels")][i])
    gray = arrays[("train", "images")][i].astype(np.int64)
    for c, value in enumerate(PALETTE[(label + i) % 10]):
        assert np.array_equal(splits.train_images[i, c].numpy(), (gray * value + 127) // 255)


def test_datamodule_on_small_mnist(tmp_path):
    write_mnist(tmp_path, fake_mnist())
    dm = MaseDataModule("mnist", batch_size=8, data_dir=str(tmp_path), val_fraction=0.2, test_limit=15)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (40, 10, 15)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (8,)


def _no_network(*args, **kwargs):
    raise urllib.error.URLError("network unreachable (test)")


def test_missing_mnist_error_names_places_and_remedy(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.urllib.request, "urlopen", _no_network)
    dm = MaseDataModule("mnist", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError) and "\n" not in msg
    assert str(tmp_path / "nowhere") in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert "download failed" in msg and "network unreachable" in msg and "MACHOP_DATA_DIR" in msg
    with pytest.raises(DatasetNotFoundError, match="no train-images"):
        dm.setup()  # setup never downloads


def test_download_checks_md5(tmp_path, monkeypatch):
    payload = b"some bytes"
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    fetch("https://example.invalid/f", tmp_path / "f", hashlib.md5(payload).hexdigest())
    assert (tmp_path / "f").read_bytes() == payload
    with pytest.raises(DownloadError, match="MD5"):
        fetch("https://example.invalid/g", tmp_path / "g", "0" * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]  # nothing half-written left behind


def test_mnist_download(tmp_path, monkeypatch):
    """The download path end to end, against a fake server holding real-format files."""
    served = {}
    for key, arr in fake_mnist().items():
        served[NAMES[key] + ".gz"] = gzip.compress(idx_bytes(arr))
    md5s = {name: hashlib.md5(data).hexdigest() for name, data in served.items()}
    mnist = sources.SOURCES["mnist"]
    fake = dataclasses.replace(mnist, download=dataclasses.replace(mnist.download, files=md5s))
    monkeypatch.setitem(sources.SOURCES, "mnist", fake)
    urls = []

    def urlopen(url, timeout):
        urls.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources.urllib.request, "urlopen", urlopen)
    monkeypatch.setenv("MACHOP_DATA_DIR", str(tmp_path))
    assert locate("mnist", download=True) == tmp_path / "mnist"
    assert all(u.startswith("https://ossci-datasets.s3.amazonaws.com/mnist/") for u in urls) and len(urls) == 4
    assert len(load_splits("mnist").train_labels) == 50


def test_official_mnist_checksums():
    files = sources.SOURCES["mnist"].download.files
    assert files["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert files["t10k-labels-idx1-ubyte.gz"] == "ec29112dd5afa0611ce80d1b7f02629c"
