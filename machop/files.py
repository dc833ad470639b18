"""Files machop reads and writes: atomic writes, and the error for a file that cannot be used.

A reader (or an interrupted run) never sees half a file: everything is
written to a temporary file beside its target, fsynced, then renamed over
it; the temporary file is removed on any failure, an interruption included.
"""

from __future__ import annotations

import os
import pickletools
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


class BadFileError(ValueError):
    """A file handed to machop that it cannot use (corrupt, foreign, too large); ``str(err)`` is one line naming it."""


class NoSuchFile(BadFileError, FileNotFoundError):
    """The path names nothing (also a FileNotFoundError)."""


class IsADirectory(BadFileError, IsADirectoryError):
    """The path names a directory (also an IsADirectoryError)."""


def why(e: BaseException) -> str:
    """``Type: first line of its message`` (at most 300 characters) of an exception, for a one-line refusal."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading, refused unless it is a regular file (never blocks on a FIFO).

    Raises `NoSuchFile`, `IsADirectory` or `BadFileError` ("is not a regular
    file (a character device)", for /dev/zero), each one line naming the path.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise NoSuchFile(f"no such file: {path}") from None
    except IsADirectoryError:
        raise IsADirectory(f"{path} is a directory") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise BadFileError(f"cannot open {path}: {getattr(e, 'strerror', None) or e}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectory(f"{path} is a directory")
        kind = ("character device" if stat.S_ISCHR(mode) else "block device" if stat.S_ISBLK(mode)
                else "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "special file")
        raise BadFileError(f"{path} is not a regular file (a {kind})")
    return os.fdopen(fd, "rb")


_HEAVY_OPS = {"REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "INST", "OBJ", "BINPERSID", "PERSID"}  # a tensor, an object
_CONTAINER_OPS = {"EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "LIST", "DICT", "FROZENSET", "TUPLE", "TUPLE1", "TUPLE2",
                  "TUPLE3"}


def pickle_cost(data: bytes, limit: int) -> int:
    """Estimated bytes of the objects ``data`` unpickles to, read op by op without running anything.

    A call or object costs 1 KiB (a view of a stored tensor takes about
    0.6 KiB), a container 128 bytes, anything else its argument plus 64
    bytes. Stops, returning more than ``limit``, as soon as ``limit`` is
    passed. ValueError if the pickle is malformed or any length it claims
    runs past its end, so a pickle that passes never makes the unpickler
    allocate more than is there.
    """
    cost = 0
    for op, arg, _ in pickletools.genops(data):
        if op.name in _HEAVY_OPS:
            cost += 1024
        elif op.name in _CONTAINER_OPS:
            cost += 128
        else:
            cost += 64 + (len(arg) if isinstance(arg, (bytes, bytearray, str)) else 0)
        if cost > limit:
            break
    return cost


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object] | bytes | str) -> Path:
    """Write ``path`` via a temporary file beside it, fsync, then ``os.replace``.

    ``write`` is the content (bytes, or str as UTF-8) or a function that
    writes into the open binary file. The file gets the usual permissions
    (0666 less the umask), not mkstemp's private 0600. An OSError (a full
    disk) names ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, str):
                write = write.encode()
            f.write(write) if isinstance(write, bytes) else write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (None, tmp):
            e.filename = str(path)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def output_problem(path: str | os.PathLike, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or a ``folder``) could not be written, or None; creates nothing.

    Checked before a run starts: the path must not be a folder (or, for a
    folder, a file), the first part of it that exists must be a folder, and
    that folder must be writable.
    """
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            return f"{path} is a file, not a folder"
        if not folder and path.is_dir():
            return f"{path} is a folder, not a file"
    parent = path if folder and path.exists() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create {path}: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot write in {parent}: permission denied"
    return None
