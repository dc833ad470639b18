"""Where data set files come from: finding them, downloading them, reading them into memory.

Search order for a source (``fashion_mnist``, ``mnist`` or ``cifar10``; the
colourised sets read their grayscale source's files):

1. ``data_dir`` when given (the files in it, or in ``data_dir/<source>``), nothing else;
2. otherwise ``$MACHOP_DATA_DIR/<source>``, then ``$MACHOP_DATA_DIR`` when the variable is set,
   then the source's default folder: ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``), ``~/.cache/machop/mnist``, ``~/.cache/machop/cifar10``.

MNIST and CIFAR-10 are downloaded from their official addresses (MD5-checked,
written atomically) into ``data_dir``, else ``$MACHOP_DATA_DIR/<source>``, else
the default folder, when they are missing and `locate` is asked to download.
Without a network that fails within seconds with a `DatasetNotFoundError`.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from .cifar import BATCH_DIR, find_cifar_dir, load_cifar_split
from .colored import colorize
from .idx import IDX_FILES, has_idx_files, load_idx_split
from .registry import get_dataset_spec

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 10.0
MAX_DOWNLOAD_BYTES = 512 << 20
"""The most one download may write (the largest official file, CIFAR-10's archive, is 163 MiB)."""
ENV_VAR = "MACHOP_DATA_DIR"


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where machop looked; the message says how to get them."""

    def __str__(self) -> str:  # FileNotFoundError would prefix "[Errno ...]" when given errno args
        return self.args[0] if self.args else ""


class DownloadError(OSError):
    """A download failed or its checksum did not match."""


class Splits(NamedTuple):
    """A data set in memory: uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)`` per split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor


@dataclass(frozen=True)
class Download:
    """Official files of a source: base URL, file name → MD5, and whether it is a tar.gz to unpack."""

    base_url: str
    files: dict[str, str]
    unpack: bool = False


@dataclass(frozen=True)
class Source:
    """One family of files on disk and how to find, fetch and read it."""

    name: str
    default_dir: Callable[[], Path]
    find: Callable[[Path], Path | None]  # folder holding the files, given a candidate folder
    read: Callable[[Path, str], tuple[torch.Tensor, torch.Tensor]]  # (folder, "train"|"test") -> images, labels
    what: str  # the files, for messages
    how: str  # how to get them, for messages
    download: Download | None = None


def _cache_dir(name: str) -> Callable[[], Path]:
    return lambda: Path.home() / ".cache" / "machop" / name


def _find_idx(d: Path) -> Path | None:
    return d if has_idx_files(d) else None


_IDX_WHAT = ", ".join(f"{s}[.gz]" for pair in IDX_FILES.values() for s in pair)

SOURCES: dict[str, Source] = {
    "fashion_mnist": Source(
        "fashion_mnist",
        lambda: Path("/usr/share/datasets/fashion-mnist"),
        _find_idx,
        load_idx_split,
        what=_IDX_WHAT,
        how="install them with `apt-get install dataset-fashion-mnist`, "
        f"or put them in a folder given as data_dir or ${ENV_VAR}",
    ),
    "mnist": Source(
        "mnist",
        _cache_dir("mnist"),
        _find_idx,
        load_idx_split,
        what=_IDX_WHAT,
        how="download them from https://ossci-datasets.s3.amazonaws.com/mnist/ "
        f"into a folder given as data_dir or ${ENV_VAR}",
        download=Download(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            {
                "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
            },
        ),
    ),
    "cifar10": Source(
        "cifar10",
        _cache_dir("cifar10"),
        find_cifar_dir,
        load_cifar_split,
        what=f"{BATCH_DIR}/data_batch_1..5, test_batch",
        how="download and unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz "
        f"into a folder given as data_dir or ${ENV_VAR}",
        download=Download(
            "https://www.cs.toronto.edu/~kriz/",
            {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
            unpack=True,
        ),
    ),
}


def candidate_dirs(source: Source, data_dir: str | os.PathLike | None) -> list[Path]:
    """Folders searched for ``source``, in order (see the module docstring)."""
    if data_dir is not None:
        return [Path(data_dir).expanduser(), Path(data_dir).expanduser() / source.name]
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(env).expanduser() / source.name, Path(env).expanduser()]
    return dirs + [source.default_dir()]


def download_dir(source: Source, data_dir: str | os.PathLike | None) -> Path:
    """Where a download of ``source`` goes."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() / source.name if env else source.default_dir()


def fetch(url: str, dest: Path, md5: str, timeout: float = DOWNLOAD_TIMEOUT_S, limit: int = MAX_DOWNLOAD_BYTES) -> None:
    """Download ``url`` to ``dest`` atomically, checking its MD5; `DownloadError` on any failure.

    At most ``limit`` bytes are written: a server sending more is cut off
    (and the partial file removed) before it can fill the disk.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.md5()
    written = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, part.open("wb") as f:
            while chunk := response.read(1 << 20):
                written += len(chunk)
                if written > limit:
                    raise DownloadError(f"{url}: more than {limit >> 20} MiB, larger than any official file")
                digest.update(chunk)
                f.write(chunk)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except OSError as e:  # URLError, HTTPError, timeouts, disk errors
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: {getattr(e, 'reason', None) or e}") from None
    if digest.hexdigest() != md5:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: MD5 {digest.hexdigest()} does not match the official {md5}")
    os.replace(part, dest)


def _download(source: Source, target: Path) -> None:
    spec = source.download
    assert spec is not None
    for name, md5 in spec.files.items():
        dest = target / name
        if not dest.is_file():
            logger.info("downloading %s%s to %s", spec.base_url, name, dest)
            fetch(spec.base_url + name, dest, md5)
        if spec.unpack:
            with tarfile.open(dest, "r:gz") as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(BATCH_DIR + "/") and m.isfile()]
                tar.extractall(target, members=members, filter="data")
            dest.unlink()


def locate(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Path:
    """The folder holding the files of data set ``name`` (downloading them if allowed and possible)."""
    source = SOURCES[get_dataset_spec(name).source]
    dirs = candidate_dirs(source, data_dir)
    for d in dirs:
        found = source.find(d)
        if found is not None:
            return found
    failure = ""
    if download and source.download is not None:
        target = download_dir(source, data_dir)
        try:
            _download(source, target)
        except (OSError, tarfile.TarError) as e:
            failure = f"; download failed: {e}"
        else:
            found = source.find(target)
            if found is not None:
                return found
            failure = f"; the download did not produce them in {target}"
    where = ", ".join(str(d) for d in dict.fromkeys(dirs))
    raise DatasetNotFoundError(f"{name}: no {source.what} in {where}{failure}; {source.how}")


def _stamp(directory: Path) -> tuple:
    """Names, sizes and mtimes of a folder's files: a cache key that changes when the files do."""
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file())


@functools.lru_cache(maxsize=4)
def _read_source(source_name: str, directory: Path, stamp: tuple) -> Splits:
    """The files of a source as they are (shared by a set and its colourised variant)."""
    source = SOURCES[source_name]
    return Splits(*source.read(directory, "train"), *source.read(directory, "test"))


@functools.lru_cache(maxsize=4)
def _read(name: str, directory: Path, stamp: tuple) -> Splits:
    spec = get_dataset_spec(name)
    raw = _read_source(spec.source, directory, stamp)
    parts = []
    for split, (images, labels) in zip(("train", "test"), (raw[:2], raw[2:])):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= spec.info.num_classes):
            raise ValueError(f"{directory}: {split} labels outside 0..{spec.info.num_classes - 1}")
        if tuple(images.shape[1:]) != (1 if spec.colored else spec.info.in_channels, *spec.info.image_size):
            raise ValueError(f"{directory}: {split} images of shape {tuple(images.shape[1:])} do not fit {name}")
        parts += [colorize(images, labels) if spec.colored else images, labels]
    logger.info("loaded %s from %s: %d train, %d test", name, directory, len(parts[1]), len(parts[3]))
    return Splits(*parts)


def load_splits(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> Splits:
    """Both splits of data set ``name`` as uint8 tensors (cached per process; never modify them in place)."""
    directory = locate(name, data_dir, download)
    return _read(name, directory, _stamp(directory))
