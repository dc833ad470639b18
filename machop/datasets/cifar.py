"""CIFAR-10 from its official python batches, read without trusting pickle.

The batches (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``) are
pickled dicts ``{b"data": uint8 ndarray (N, 3072), b"labels": [int], ...}``.
A pickle can name any importable callable, so they are read with
`RestrictedUnpickler`, which resolves only the three globals numpy needs to
rebuild a plain array and refuses everything else (and object dtypes).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from machop.files import BadFileError, open_regular, pickle_cost, why


try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


MAX_BATCH_BYTES = 64 << 20
"""The largest batch file machop reads (the official batches are 31,035,704 and 31,035,526 bytes)."""
PICKLE_COST_PER_BYTE = 4
"""The objects a batch unpickles to may take at most this many times its size (estimated before unpickling)."""


class RefusedPickleError(pickle.UnpicklingError, BadFileError):
    """A data file named a global (code) that a data file has no business naming.

    Also a ValueError: bad input, reported in one line like any other.
    """


def _plain_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise RefusedPickleError(f"refusing object dtype {dtype} in a data file")
    return dtype


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else.

    Allowed globals: ``numpy.core.multiarray._reconstruct`` (also spelt
    ``numpy._core.multiarray`` by numpy 2), ``numpy.ndarray`` and
    ``numpy.dtype`` (object dtypes refused). Any other global raises
    `RefusedPickleError` (a ``pickle.UnpicklingError``).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _plain_dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            what = f"{module}.{name}"
            what = what if what.isprintable() and len(what) <= 200 else repr(what[:200])  # one line, whatever it says
            raise RefusedPickleError(f"refusing to load global {what}: not a numpy array part") from None


def restricted_load(file: BinaryIO | bytes) -> Any:
    """``pickle.load(file, encoding="bytes")`` through `RestrictedUnpickler`."""
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    return RestrictedUnpickler(file, encoding="bytes").load()


def read_batch_bytes(path: Path, limit: int = MAX_BATCH_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (checked before reading; one-line errors)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise ValueError(f"{path}: {size} bytes, more than the {limit >> 20} MiB of a CIFAR-10 batch")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: grew past {limit >> 20} MiB while being read")
    return data


def load_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file → images ``(N, 3, 32, 32)`` uint8, labels ``(N,)`` int64.

    The file is read into memory (at most `MAX_BATCH_BYTES`), its pickle
    scanned without running it (`pickle_cost`: every length it claims is
    present, its objects stay within `PICKLE_COST_PER_BYTE` times its size),
    then unpickled by `RestrictedUnpickler`; numpy refuses an array whose
    shape claims more than its bytes. Every error is one line naming the file
    (a ValueError; a refused global is a `RefusedPickleError`, also one).
    """
    path = Path(path)
    raw = read_batch_bytes(path)
    limit = PICKLE_COST_PER_BYTE * max(len(raw), 1 << 20)
    try:
        cost = pickle_cost(raw, limit)
    except Exception as e:  # truncated or not a pickle at all
        raise ValueError(f"{path}: not a CIFAR-10 batch ({why(e)})") from None
    if cost > limit:
        raise ValueError(f"{path}: not a CIFAR-10 batch (its pickle would build objects of more than "
                         f"{limit >> 20} MiB from {len(raw)} bytes)")
    try:
        batch = restricted_load(raw)
    except RefusedPickleError as e:
        raise RefusedPickleError(f"{path}: {e}") from None
    except Exception as e:  # truncated or not a pickle at all, an array shape its bytes do not fill
        raise ValueError(f"{path}: not a CIFAR-10 batch ({why(e)})") from None
    del raw
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: not a CIFAR-10 batch (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be a uint8 array (N, 3072), got {getattr(data, 'shape', type(data).__name__)}")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != data.shape[0]:
        raise ValueError(f"{path}: b'labels' must be a list of {data.shape[0]} integers")
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError, OverflowError) as e:
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers ({type(e).__name__})") from None
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}")
    # rows are 1024 red, 1024 green, 1024 blue values, each 32x32 row-major
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def find_cifar_dir(directory: Path) -> Path | None:
    """The folder holding the batches: ``directory/cifar-10-batches-py`` or ``directory`` itself."""
    for d in (directory / BATCH_DIR, directory):
        if all((d / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return d
    return None


def load_cifar_split(directory: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``train`` (five batches, in order) or ``test`` split from a batch folder."""
    directory = Path(directory)
    names = TRAIN_BATCHES if split == "train" else (TEST_BATCH,)
    parts = [load_cifar_batch(directory / name) for name in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
