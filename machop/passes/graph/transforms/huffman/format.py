"""The ``.mchz`` container: magic, version, a CRC-protected JSON header, CRC-protected sections.

Layout (all integers little-endian; see FORMAT.md for the full description)::

    offset  size  field
    0       8     magic  b"\\x89MCZ\\r\\n\\x1a\\n"
    8       2     version (uint16) = 1
    10      2     flags (uint16) = 0
    12      4     header length H (uint32)
    16      4     CRC32 of bytes 0..15 followed by the H header bytes
    20      H     header: zlib-compressed UTF-8 JSON object, with "sections": [{"name", "length", "crc32"}, ...]
    20+H    ...   the sections, back to back in header order, nothing after the last one

Every byte of the file is covered by a check: the fixed fields and the header by
the header CRC (the version is compared first, so a file of another version is
named as such), each section by its own CRC32, and the total size by the section
lengths. Reading never unpickles or evaluates anything.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

from machop.files import atomic_write

MAGIC = b"\x89MCZ\r\n\x1a\n"  # 8 bytes, PNG-style: catches text-mode transfers
VERSION = 1
_PREFIX = struct.Struct("<8sHHII")  # magic, version, flags, header length, header crc
PREFIX_SIZE = _PREFIX.size  # 20
MAX_HEADER_BYTES = 1 << 28


class CompressedFileError(ValueError):
    """A compressed file that cannot be used (truncated, altered, other version or architecture).

    ``str(err)`` is one line.
    """


def pack_container(header: dict, sections: list[tuple[str, bytes]]) -> bytes:
    """Serialise ``header`` (JSON-able dict, without ``sections``) and named sections to bytes."""
    if "sections" in header:
        raise ValueError("header key 'sections' is reserved for the container")
    names = [name for name, _ in sections]
    if len(set(names)) != len(names):
        raise ValueError("section names must be unique")
    table = [{"name": name, "length": len(data), "crc32": zlib.crc32(data)} for name, data in sections]
    text = json.dumps({**header, "sections": table}, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(text)} bytes is too large")
    head = zlib.compress(text, 9)
    fixed = struct.pack("<8sHHI", MAGIC, VERSION, 0, len(head))
    crc = zlib.crc32(head, zlib.crc32(fixed))
    return b"".join([fixed, struct.pack("<I", crc), head, *(data for _, data in sections)])


def unpack_container(data: bytes | bytearray | memoryview, name: str = "compressed file") -> tuple[dict, dict[str, bytes]]:
    """Check and split a container; returns ``(header, {section name: bytes})``.

    Raises `CompressedFileError` (one line, prefixed with ``name``) for a file
    that is truncated, has trailing bytes, another magic or version, or any
    byte that does not match its CRC.
    """
    data = memoryview(data).cast("B")
    size = len(data)
    if size < PREFIX_SIZE:
        if bytes(data[: len(MAGIC)]) != MAGIC[:size]:
            raise CompressedFileError(f"{name}: not a machop compressed file (bad magic)")
        raise CompressedFileError(f"{name}: truncated ({size} bytes, the fixed header alone is {PREFIX_SIZE})")
    magic, version, flags, head_len, head_crc = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise CompressedFileError(f"{name}: not a machop compressed file (bad magic)")
    if version != VERSION:
        raise CompressedFileError(f"{name}: format version {version} is not supported (this machop reads version {VERSION})")
    if head_len > size - PREFIX_SIZE:
        raise CompressedFileError(f"{name}: truncated (header of {head_len} bytes, file has {size} bytes)")
    head = data[PREFIX_SIZE : PREFIX_SIZE + head_len]
    if zlib.crc32(head, zlib.crc32(data[:16])) != head_crc:
        raise CompressedFileError(f"{name}: header CRC mismatch (the file is corrupt)")
    if flags != 0:  # covered by the CRC: only a writer from the future sets it
        raise CompressedFileError(f"{name}: unknown flags {flags:#06x}")
    try:
        inflate = zlib.decompressobj()
        text = inflate.decompress(head, MAX_HEADER_BYTES)
        if inflate.unconsumed_tail or not inflate.eof or inflate.unused_data:
            raise ValueError("header is not one complete zlib stream within the size limit")
        header = json.loads(text.decode("utf-8"))
        table = header.pop("sections")
        entries = [(str(e["name"]), int(e["length"]), int(e["crc32"])) for e in table]
    except (ValueError, KeyError, TypeError, AttributeError, zlib.error) as e:
        raise CompressedFileError(f"{name}: malformed header ({type(e).__name__})") from None
    offset = PREFIX_SIZE + head_len
    expected = offset + sum(length for _, length, _ in entries)
    if any(length < 0 for _, length, _ in entries):
        raise CompressedFileError(f"{name}: malformed header (negative section length)")
    if size < expected:
        raise CompressedFileError(f"{name}: truncated ({size} bytes, sections end at {expected})")
    if size > expected:
        raise CompressedFileError(f"{name}: {size - expected} unexpected trailing bytes")
    sections: dict[str, bytes] = {}
    for sec_name, length, crc in entries:
        chunk = data[offset : offset + length]
        if zlib.crc32(chunk) != crc:
            raise CompressedFileError(f"{name}: section {sec_name!r} CRC mismatch (the file is corrupt)")
        if sec_name in sections:
            raise CompressedFileError(f"{name}: malformed header (section {sec_name!r} repeated)")
        sections[sec_name] = bytes(chunk)
        offset += length
    return header, sections


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    return atomic_write(path, data)


def read_container(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    """`unpack_container` of the file at ``path`` (FileNotFoundError if there is none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return unpack_container(path.read_bytes(), name=str(path))
