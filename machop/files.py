"""Files machop reads and writes: atomic writes, and the error for a file that cannot be used.

A reader (or an interrupted run) never sees half a file: everything is
written to a temporary file beside its target, fsynced, then renamed over
it; the temporary file is removed on any failure, an interruption included.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


class BadFileError(ValueError):
    """A file handed to machop that it cannot use (corrupt, foreign, too large); ``str(err)`` is one line naming it."""


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
