"""What a file handed to ``--load`` is, read from its own bytes: its load type, and the model it records.

- a ``.mchz`` compressed file starts with its 8-byte magic (`machop.ir.mchz.format.MAGIC`);
- anything ``torch.save`` wrote is a zip whose ``data.pkl`` record says the rest:
  ``format = "machop.mz"`` / ``"machop.pt"`` (machop's own files), a
  ``state_dict`` key (a Lightning checkpoint, ``pl``), else a plain state dict (``pt``).

The pickle is read op by op (`pickletools`), never unpickled; the archive is
checked first as every machop reader checks it (`check_archive`). A file's
``structure`` record (machop files, and Lightning checkpoints machop wrote)
names its registry model and data set, which the command line then need not.
"""

from __future__ import annotations

import json
import os
import pickletools
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from machop.config import Config, ConfigError
from machop.datasets import DATASETS
from machop.files import BadFileError, open_regular
from machop.ir.mchz import CompressedFileError, read_header
from machop.ir.mchz.format import MAGIC
from machop.ir.serialize import check_archive
from machop.models import MODELS

ZIP_MAGIC = b"PK\x03\x04"
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING"}
_MEMO_OPS = {"BINPUT", "LONG_BINPUT", "PUT", "MEMOIZE"}


@dataclass(frozen=True)
class FileFacts:
    """What `peek` found: the load type, and the registry model and data set the file records (None: none)."""

    load_type: str
    model: str | None = None
    dataset: str | None = None
    plain: bool = False  # a torch.save file with no machop record and no state_dict key: a guess at "pt"


def _pickle_facts(data: bytes) -> tuple[set[str], dict[str, str]]:
    """(every string of the pickle, key → the string stored right after it) without running the pickle."""
    strings: set[str] = set()
    after: dict[str, str] = {}
    last: str | None = None
    for op, arg, _ in pickletools.genops(data):
        if op.name in _MEMO_OPS:
            continue
        if op.name in _STRING_OPS:
            text = arg.decode("latin-1") if isinstance(arg, bytes) else arg
            strings.add(text)
            if last is not None and last not in after:
                after[last] = text
            last = text
        else:
            last = None
    return strings, after


def _structure_facts(text: object) -> tuple[str | None, str | None]:
    """(model, data set) a ``structure`` JSON record names; (None, None) if it names none or is not one."""
    try:
        s = json.loads(text) if isinstance(text, str) and len(text) < (16 << 20) else None
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(s, dict):
        return None, None
    model = s.get("model") if isinstance(s.get("model"), str) else None
    info = s.get("dataset_info")
    dataset = info.get("name") if isinstance(info, dict) and isinstance(info.get("name"), str) else None
    return model, dataset


def peek(path: str | os.PathLike) -> FileFacts:
    """The load type (``huffman``, ``mz``, ``pt`` or ``pl``) of the file at ``path`` and the model it records.

    Raises `BadFileError` (one line naming the file) for a file that is
    none of them, missing, a folder or not a regular file.
    """
    path = Path(path)
    with open_regular(path) as f:
        head = f.read(len(MAGIC))
        if head == MAGIC:
            f.close()
            try:
                structure = read_header(path).get("structure")
            except CompressedFileError as e:
                raise BadFileError(str(e)) from None
            return FileFacts("huffman", *_structure_facts(json.dumps(structure)))
        if not head.startswith(ZIP_MAGIC):
            raise BadFileError(f"{path} is not a file machop reads: neither a .mchz compressed file nor a torch.save "
                               "file (a Lightning .ckpt, a .pt state dict or a machop .mz)")
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        check_archive(f, path, size)
        f.seek(0)
        try:
            archive = zipfile.ZipFile(f)
            record = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
            strings, after = _pickle_facts(archive.read(record))
        except Exception as e:  # check_archive passed, so only a pickle it could not tell from a good one
            raise BadFileError(f"{path} is not a readable PyTorch weights file ({type(e).__name__})") from None
    for fmt in ("mz", "pt"):
        if after.get("format") == f"machop.{fmt}":
            return FileFacts(fmt, *_structure_facts(after.get("structure")))
    if "state_dict" in strings:
        return FileFacts("pl", *_structure_facts(after.get("machop_structure")))
    return FileFacts("pt", plain=True)


NAMES = {"huffman": "a .mchz compressed file", "mz": "a machop .mz file", "pt": "a .pt state dict",
         "pl": "a Lightning checkpoint"}


def resolve_load(config: Config, given: set[str]) -> Config:
    """``config`` with ``load_type`` read from the file, and ``model``/``dataset`` from the file when not ``given``.

    ``given``: the config keys the command line or the TOML file set. A
    ``load_type`` given that disagrees with the file is a ConfigError naming
    both (a ``pt`` reader takes machop files and plain state dicts, ``pl``
    Lightning checkpoints, ``huffman`` .mchz files). Where the file is
    not what any reader takes, or only looks like a plain state dict, a
    given ``load_type``'s reader reports what is wrong with it instead.
    """
    if config.load_name is None:
        return config
    asked = config.load_type
    try:
        facts = peek(config.load_name)
    except (BadFileError, FileNotFoundError, OSError) as e:
        if asked is not None and Path(config.load_name).is_file():
            return config  # the reader of the type asked for says what is wrong with the file, in its words
        raise ConfigError("load_name", str(e).splitlines()[0]) from None
    readable = {"huffman": {"huffman"}, "mz": {"mz", "pt"}, "pt": {"pt"}, "pl": {"pl"}}[facts.load_type]
    if asked is not None and asked not in readable and not facts.plain:
        raise ConfigError("load_type", f"is {asked!r}, but {config.load_name} is {NAMES[facts.load_type]} "
                                       f"(load type {facts.load_type!r}); drop --load-type to use the file's own")
    changes: dict = {"load_type": asked or facts.load_type}
    if "model" not in given and facts.model in MODELS:
        changes["model"] = facts.model
    if "dataset" not in given and facts.dataset in DATASETS:
        changes["dataset"] = facts.dataset
    return replace(config, **changes)
