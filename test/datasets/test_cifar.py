"""CIFAR-10 batches written here in the official format, and the restricted unpickler."""

import dataclasses
import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

import machop.datasets.sources as sources
from machop.datasets import DatasetNotFoundError, MaseDataModule
from machop.datasets.cifar import RefusedPickleError, load_cifar_batch, restricted_load
from machop.datasets.sources import load_splits, locate


def batch_bytes(n: int, seed: int, protocol: int = 3) -> tuple[bytes, np.ndarray, list[int]]:
    """A pickled batch as in cifar-10-batches-py: dict with bytes keys, uint8 (N, 3072) data, int labels."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    d = {b"batch_label": b"training batch", b"labels": labels, b"data": data, b"filenames": [b"x.png"] * n}
    return pickle.dumps(d, protocol=protocol), data, labels


def write_cifar(directory, n=8):
    folder = directory / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    expected = []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        raw, data, labels = batch_bytes(n, seed=i)
        (folder / name).write_bytes(raw)
        expected.append((data, labels))
    return folder, expected


def test_batch_layout(tmp_path):
    raw, data, labels = batch_bytes(4, seed=0)
    (tmp_path / "b").write_bytes(raw)
    images, y = load_cifar_batch(tmp_path / "b")
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.uint8 and y.tolist() == labels
    # channel c, row r, column k sits at c*1024 + r*32 + k of a row
    for n, c, r, k in [(0, 0, 0, 0), (1, 1, 5, 7), (3, 2, 31, 31), (2, 2, 10, 0)]:
        assert images[n, c, r, k] == data[n, c * 1024 + r * 32 + k]


def test_old_numpy_module_name(tmp_path):
    # the official files come from numpy 1.x, which spells the module numpy.core.multiarray
    raw, data, _ = batch_bytes(2, seed=1, protocol=3)
    assert b"numpy._core.multiarray\n" in raw
    old = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert np.array_equal(restricted_load(old)[b"data"], data)


def test_cifar_splits_and_datamodule(tmp_path):
    _, expected = write_cifar(tmp_path)
    splits = load_splits("cifar10", tmp_path)
    assert splits.train_images.shape == (40, 3, 32, 32) and splits.test_images.shape == (8, 3, 32, 32)
    # the five training batches are concatenated in order
    assert torch.equal(splits.train_images[8:16].reshape(8, -1), torch.from_numpy(expected[1][0]))
    assert splits.test_labels.tolist() == expected[5][1]

    dm = MaseDataModule("cifar10", batch_size=16, data_dir=str(tmp_path), seed=3)
    assert dm.augment  # on by default for cifar10
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    dm2 = MaseDataModule("cifar10", batch_size=16, data_dir=str(tmp_path), seed=3)
    assert torch.equal(next(iter(dm2.train_dataloader()))[0], x)  # same seed, same batch and crops
    plain = MaseDataModule("cifar10", batch_size=16, data_dir=str(tmp_path), seed=3, augment=False)
    assert not torch.equal(next(iter(plain.train_dataloader()))[0], x)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    raw = pickle.dumps({b"data": _Evil(marker), b"labels": []})
    assert b"system" in raw
    (tmp_path / "data_batch_1").write_bytes(raw)
    with pytest.raises(RefusedPickleError, match="refusing to load global (posix|os|nt).system"):
        load_cifar_batch(tmp_path / "data_batch_1")
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        restricted_load(pickle.dumps(eval))
    assert not marker.exists()


def test_refuses_object_arrays():
    raw = pickle.dumps({b"data": np.array([1, "a"], dtype=object)}, protocol=3)
    with pytest.raises(RefusedPickleError, match="object dtype"):
        restricted_load(raw)


def test_not_a_batch(tmp_path):
    (tmp_path / "b").write_bytes(pickle.dumps({b"data": [1, 2]}, protocol=3))
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        load_cifar_batch(tmp_path / "b")
    (tmp_path / "t").write_bytes(b"\x80\x03}q")
    with pytest.raises(ValueError, match="not a CIFAR-10 batch"):
        load_cifar_batch(tmp_path / "t")


def test_cifar_download_and_unpack(tmp_path, monkeypatch):
    src = tmp_path / "src"
    write_cifar(src)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        info = tarfile.TarInfo("elsewhere.txt")  # members outside the batch folder are not extracted
        tar.addfile(info, io.BytesIO(b""))
    archive = buf.getvalue()
    cifar = sources.SOURCES["cifar10"]
    md5s = {"cifar-10-python.tar.gz": hashlib.md5(archive).hexdigest()}
    fake = dataclasses.replace(cifar, download=dataclasses.replace(cifar.download, files=md5s))
    monkeypatch.setitem(sources.SOURCES, "cifar10", fake)
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(archive))
    target = tmp_path / "target"
    assert locate("cifar10", target, download=True) == target / "cifar-10-batches-py"
    assert sorted(p.name for p in target.iterdir()) == ["cifar-10-batches-py"]  # archive removed


def test_missing_cifar(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise OSError("no route to host (test)")

    monkeypatch.setattr(sources.urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetNotFoundError, match=r"cifar10: no cifar-10-batches-py/data_batch_1..5, test_batch in .*"
                       r"download failed: .*no route to host.*cifar-10-python.tar.gz"):
        locate("cifar10", tmp_path, download=True)
    assert sorted(tmp_path.iterdir()) == []  # no partial download left
