"""The IDX file format of MNIST and Fashion-MNIST (gzipped or not).

An IDX file is: two zero bytes, a type byte (0x08 = uint8, ...), the number of
dimensions ``d``, then ``d`` big-endian uint32 sizes and the row-major data.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from machop.files import open_regular

_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# file stems of a split: (images, labels)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

MAX_IDX_BYTES = 1 << 30
"""The most data one IDX file may hold (MNIST's training images: 47 MB; EMNIST's largest: 550 MB)."""
MAX_GZIP_RATIO = 64
"""A gzipped IDX file may hold at most this many times its size, or `GZIP_FLOOR` bytes if more."""
GZIP_FLOOR = 64 << 20
_CHUNK = 1 << 20


def _read_exactly(stream: BinaryIO, out: memoryview, path: Path, what: str) -> None:
    """Fill ``out`` from ``stream`` in chunks; ValueError if the stream ends first."""
    done = 0
    while done < len(out):
        n = stream.readinto(out[done : done + _CHUNK])
        if not n:
            raise ValueError(f"{path}: IDX {what} truncated: {done} of {len(out)} bytes present")
        done += n


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip, told apart by content) into a numpy array.

    The header is read first and every size it claims is checked before
    anything is allocated: a plain file must be exactly as long as its
    header says; a gzipped one is decompressed only up to the size its
    header claims (and refused if less or more data is there), within
    `MAX_IDX_BYTES` and `MAX_GZIP_RATIO` times its compressed size.
    """
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        gz = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        stream: BinaryIO = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        try:
            return _read_idx_stream(stream, path, size, gz)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
        finally:
            if gz:
                stream.close()


def _read_idx_stream(stream: BinaryIO, path: Path, size: int, gz: bool) -> np.ndarray:
    head = stream.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {head.hex()})")
    dtype, ndim = _DTYPES[head[2]], head[3]
    dims = stream.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise ValueError(f"{path}: IDX header truncated")
    shape = struct.unpack(f">{ndim}I", dims)
    header = 4 + 4 * ndim
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_IDX_BYTES:
        raise ValueError(f"{path}: IDX header claims shape {shape} ({nbytes} bytes), more than the "
                         f"{MAX_IDX_BYTES >> 20} MiB machop reads from one file")
    if not gz and header + nbytes != size:
        raise ValueError(
            f"{path}: IDX size mismatch: header says {header + nbytes} bytes for shape {shape}, file has {size}"
        )
    if gz and header + nbytes > max(GZIP_FLOOR, MAX_GZIP_RATIO * size):
        raise ValueError(f"{path}: IDX header claims shape {shape} ({nbytes} bytes) from {size} bytes of gzip "
                         f"data, more than {MAX_GZIP_RATIO} times that; refused as a gzip bomb")
    out = np.empty(shape, dtype=dtype)
    _read_exactly(stream, memoryview(out.reshape(-1).view(np.uint8)), path, "data")
    if gz and stream.read(1):
        raise ValueError(f"{path}: IDX size mismatch: more data follows the {header + nbytes} bytes "
                         f"its header claims for shape {shape}")
    return out


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` or ``directory/stem.gz``, whichever exists (plain first)."""
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def has_idx_files(directory: Path) -> bool:
    """Whether all four MNIST-style files are in ``directory``."""
    return all(find_idx_file(directory, s) for pair in IDX_FILES.values() for s in pair)


def load_idx_split(directory: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 1, H, W)`` uint8 and labels ``(N,)`` int64 of the ``train`` or ``test`` split."""
    directory = Path(directory)
    paths = [find_idx_file(directory, s) for s in IDX_FILES[split]]
    if None in paths:
        raise FileNotFoundError(f"{directory}: missing {' / '.join(IDX_FILES[split])} [.gz]")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{paths[0]}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ValueError(f"{paths[1]}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} images but {len(labels)} labels in the {split} split")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))
