"""Hostile data set files: every size a file claims is checked before anything is allocated; one-line ValueErrors.

IDX (MNIST, Fashion-MNIST): a gzip bomb, headers claiming huge dimensions
over small or sparse files, truncated and over-long data. CIFAR-10 batches:
a pickle naming ``os.system``, an oversize batch, a pickle claiming a huge
byte string, an array whose shape claims more than its bytes, a pickle of
millions of small objects. Also what is not a regular file (a directory,
``/dev/zero``, a FIFO), which must be refused without reading.
"""

from __future__ import annotations

import gzip
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from machop.datasets import MaseDataModule
from machop.datasets.cifar import MAX_BATCH_BYTES, RefusedPickleError, load_cifar_batch
from machop.datasets.idx import MAX_IDX_BYTES, read_idx


def idx(shape: tuple[int, ...], data: bytes, claimed: tuple[int, ...] | None = None) -> bytes:
    dims = claimed or shape
    return bytes([0, 0, 0x08, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def gzip_bomb(claimed: tuple[int, ...], zeros: int) -> bytes:
    """``zeros`` zero bytes after an IDX header, gzipped (about 1000:1), written without holding them in memory."""
    import io
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip container
    out = io.BytesIO()
    out.write(comp.compress(idx((), b"", claimed=claimed)))
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.write(comp.compress(chunk))
    out.write(comp.flush())
    return out.getvalue()


def sparse(path: Path, head: bytes, size: int) -> Path:
    """A file of ``size`` bytes (all but ``head`` a hole: no disk, no time)."""
    with path.open("wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def one_line(err: pytest.ExceptionInfo, path: Path, expected: str) -> None:
    msg = str(err.value)
    assert isinstance(err.value, ValueError), repr(err.value)
    assert "\n" not in msg and str(path) in msg and expected in msg, msg


# (id, maker of the file at a path, expected)
IDX_CASES = [
    ("gzip-bomb-over-the-ceiling", lambda p: p.write_bytes(gzip_bomb((60_000, 28_000, 28), 8 << 20)),
     "more than the 1024 MiB machop reads from one file"),
    ("gzip-bomb-over-the-ratio", lambda p: p.write_bytes(gzip_bomb((200_000, 28, 28), 8 << 20)),
     "refused as a gzip bomb"),
    ("gzip-more-than-claimed", lambda p: p.write_bytes(gzip.compress(idx((2, 28, 28), bytes(2 * 784) + bytes(50_000_000)))),
     "more data follows the 1584 bytes its header claims"),
    ("gzip-less-than-claimed", lambda p: p.write_bytes(gzip.compress(idx((2, 28, 28), bytes(700), claimed=(2, 28, 28)))),
     "IDX data truncated: 700 of 1568 bytes present"),
    ("gzip-cut-short", lambda p: p.write_bytes(gzip.compress(idx((2, 28, 28), bytes(2 * 784)))[:-12]),
     "corrupt gzip data"),
    ("gzip-trailing-garbage", lambda p: p.write_bytes(gzip.compress(idx((2,), bytes(2))) + b"garbage!"),
     "corrupt gzip data"),
    ("huge-dims-small-file", lambda p: p.write_bytes(idx((2, 28, 28), bytes(1568), claimed=(4_000_000_000, 28, 28))),
     "more than the 1024 MiB"),
    ("255-dims-small-file", lambda p: p.write_bytes(idx((), b"", claimed=(2**32 - 1,) * 255)), "more than the 1024 MiB"),
    ("huge-dims-sparse-file", lambda p: sparse(p, idx((), b"", claimed=(3_000_000, 28, 28)), 16 + 3_000_000 * 784),
     "more than the 1024 MiB"),
    ("dims-larger-than-sparse-file", lambda p: sparse(p, idx((), b"", claimed=(1_000_000, 28, 28)), 500 << 20),
     "IDX size mismatch: header says 784000016 bytes"),
    ("truncated-plain", lambda p: p.write_bytes(idx((3, 4), bytes(11))), "IDX size mismatch"),
    ("longer-plain", lambda p: p.write_bytes(idx((3, 4), bytes(13))), "IDX size mismatch"),
    ("truncated-header", lambda p: p.write_bytes(bytes([0, 0, 8, 3, 0, 0])), "IDX header truncated"),
    ("bad-type-byte", lambda p: p.write_bytes(bytes([0, 0, 0x42, 1, 0, 0, 0, 0])), "not an IDX file"),
    ("empty", lambda p: p.write_bytes(b""), "not an IDX file"),
]


@pytest.mark.parametrize("case", IDX_CASES, ids=[c[0] for c in IDX_CASES])
def test_hostile_idx(case, tmp_path):
    _, make, expected = case
    path = tmp_path / "train-images-idx3-ubyte"
    make(path)
    with pytest.raises(ValueError) as err:
        read_idx(path)
    one_line(err, path, expected)


def test_idx_ceiling_is_above_real_data():
    assert MAX_IDX_BYTES >= 60_000 * 28 * 28 * 10  # ten times MNIST's training images


# --------------------------------------------------------------------------- CIFAR-10


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def shape_lie() -> bytes:
    """A uint8 array pickled as (2, 3072) whose shape is rewritten to claim (1_000_000, 3072)."""
    raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}, protocol=3)
    i = raw.find(b"K\x02M\x00\x0c\x86")
    assert i > 0
    return raw[:i] + b"J" + struct.pack("<i", 1_000_000) + raw[i + 2:]


# (id, file bytes or maker(path), expected)
CIFAR_CASES = [
    ("os-system", None, "refusing to load global"),
    ("oversize-batch", lambda p: sparse(p, b"\x80\x03}q", MAX_BATCH_BYTES + 1), "more than the 64 MiB of a CIFAR-10 batch"),
    ("binbytes8-claims-1-tib", b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc", "not a CIFAR-10 batch"),
    ("binunicode-claims-2-gib", b"\x80\x03X" + struct.pack("<I", 2**31) + b"abc", "not a CIFAR-10 batch"),
    ("shape-claims-more-than-bytes", shape_lie(), "not a CIFAR-10 batch"),
    ("millions-of-lists", b"\x80\x02](" + b"]" * 2_000_000 + b"e.", "would build objects of more than"),
    ("global-with-newline", b"\x80\x04\x8c\x05os\nxx\x94\x8c\x06system\x94\x93.", "refusing to load global 'os\\nxx.system'"),
    ("labels-not-integers", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": ["a", "b"]}, protocol=3),
     "b'labels' must be 2 integers"),
    ("labels-wrong-count", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, protocol=3),
     "b'labels' must be a list of 2 integers"),
    ("data-float", pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, protocol=3),
     "b'data' must be a uint8 array"),
    ("empty", b"", "not a CIFAR-10 batch"),
]


@pytest.mark.parametrize("case", CIFAR_CASES, ids=[c[0] for c in CIFAR_CASES])
def test_hostile_cifar_batch(case, tmp_path):
    _, content, expected = case
    path = tmp_path / "data_batch_1"
    marker = tmp_path / "pwned"
    if content is None:
        path.write_bytes(pickle.dumps({b"data": _System(marker), b"labels": []}))
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)
    with pytest.raises(ValueError) as err:
        load_cifar_batch(path)
    one_line(err, path, expected)
    assert not marker.exists()


def test_refused_pickle_is_a_value_error_and_an_unpickling_error(tmp_path):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": _System(tmp_path / "pwned"), b"labels": []}))
    with pytest.raises(RefusedPickleError) as err:
        load_cifar_batch(path)
    assert isinstance(err.value, ValueError) and isinstance(err.value, pickle.UnpicklingError)
    assert not (tmp_path / "pwned").exists()


def test_hostile_cifar_folder_through_the_data_module(tmp_path):
    """What ch transform does with a data_dir of hostile batches: a ValueError (one line), nothing run."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _System(tmp_path / "pwned"), b"labels": []}))
    dm = MaseDataModule("cifar10", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="refusing to load global (posix|os|nt).system") as err:
        dm.setup()
    assert "\n" not in str(err.value) and not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- not regular files


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


PATH_CASES = [
    ("directory", lambda d: d, "is a directory"),
    ("dev-zero", lambda d: Path("/dev/zero"), "/dev/zero is not a regular file"),
    ("fifo", _fifo, "is not a regular file"),
]


@pytest.mark.parametrize("reader", [read_idx, load_cifar_batch], ids=["idx", "cifar"])
@pytest.mark.parametrize("case", PATH_CASES, ids=[c[0] for c in PATH_CASES])
def test_not_a_regular_file(case, reader, tmp_path):
    _, make, expected = case
    path = make(tmp_path)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail(f"reading {path} blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(ValueError) as err:
            reader(path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    one_line(err, path, expected)


@pytest.mark.parametrize("reader", [read_idx, load_cifar_batch], ids=["idx", "cifar"])
def test_missing_file(reader, tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*missing"):
        reader(tmp_path / "missing")


# --------------------------------------------------------------------------- memory


MEASURE = textwrap.dedent("""
    import resource, sys
    from machop.datasets.idx import read_idx
    from machop.datasets.cifar import load_cifar_batch
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for reader, path in zip(sys.argv[1::2], sys.argv[2::2]):
        try:
            (read_idx if reader == "idx" else load_cifar_batch)(path)
            print("READ", path)
        except ValueError as e:
            print("REFUSED", e)
    print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
""")


def test_small_bombs_refused_within_memory_ceiling(tmp_path):
    """Small files claiming (or inflating to) gigabytes are refused, peak RSS growing less than 100 MB."""
    files = {
        ("idx", "bomb.gz"): gzip_bomb((1_000, 1_000, 1_000), 64 << 20),  # 1 GB claimed, 64 MB of zeros: 65 KB
        ("idx", "more.gz"): gzip_bomb((2, 28, 28), 64 << 20),  # header honest, 64 MB follow it
        ("cifar", "lists"): b"\x80\x02](" + b"]" * 4_000_000 + b"e.",  # 4 MB: 200+ MB of empty lists
        ("cifar", "binbytes"): b"\x80\x04\x8e" + struct.pack("<Q", 2**34) + bytes(1000),
    }
    argv = []
    for (reader, name), data in files.items():
        (tmp_path / name).write_bytes(data)
        argv += [reader, str(tmp_path / name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True, env=env, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sum(line.startswith("REFUSED") for line in lines) == len(files), out.stdout
    assert int(lines[-1].split()[1]) / 1024 < 100, out.stdout


def test_download_cut_off_past_its_limit(tmp_path, monkeypatch):
    import io

    import machop.datasets.sources as sources

    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(bytes(3 << 20)))
    with pytest.raises(sources.DownloadError, match="more than 1 MiB") as err:
        sources.fetch("https://example.invalid/endless", tmp_path / "f", "0" * 32, limit=1 << 20)
    assert "\n" not in str(err.value) and sorted(tmp_path.iterdir()) == []  # nothing half-written left behind
