"""The ``.mchz`` container: magic, version, a CRC-protected JSON header, CRC-protected sections.

Layout (all integers little-endian; see FORMAT.md for the full description)::

    offset  size  field
    0       8     magic  b"\\x89MCZ\\r\\n\\x1a\\n"
    8       2     version (uint16) = 3 (1 and 2 are read too)
    10      2     flags (uint16) = 0
    12      4     header length H (uint32), at most MAX_HEADER_BYTES
    16      4     CRC32 of bytes 0..15 followed by the H header bytes
    20      H     header: UTF-8 JSON object, with "sections": [{"name", "length", "crc32"}, ...], compressed:
                  versions 2 and 3 as a raw deflate stream with the preset dictionary HEADER_DICTIONARY,
                  version 1 as a zlib stream
    20+H    ...   the sections, back to back in header order, nothing after the last one

Every byte of the file is covered by a check: the fixed fields and the header by
the header CRC (the version is compared first, so a file of another version is
named as such), each section by its own CRC32, and the total size by the section
lengths. Reading never unpickles or evaluates anything.

A file is read in this order, and nothing more is read (or allocated) than
what the checks so far allow: the path must be a regular file (``os.fstat``
of the open file; a directory, FIFO or device is refused without reading);
the 20-byte prefix (magic, version, ``H <= MAX_HEADER_BYTES``, ``20 + H <=``
file size); the ``H`` header bytes and their CRC; the header inflated to at
most `MAX_HEADER_BYTES`, then read as untrusted JSON (`machop.ir.untrusted`:
its bracket nesting counted on the text, at most `MAX_HEADER_DEPTH`, before it
is parsed; no NaN/Infinity, no duplicate key), its section table checked
against `SECTION_TABLE`; the file size must then be exactly what the
section table claims; only then are the sections read, each checked by its CRC.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path
from typing import Callable

from machop.files import BadFileError, atomic_write, open_regular
from machop.ir.untrusted import Anything, Int, JsonLimits, ListOf, Obj, Str, load_untrusted

MAGIC = b"\x89MCZ\r\n\x1a\n"  # 8 bytes, PNG-style: catches text-mode transfers
VERSION = 3  # what the writer writes
VERSIONS = (1, 2, 3)  # what a reader reads
_PREFIX = struct.Struct("<8sHHII")  # magic, version, flags, header length, header crc
PREFIX_SIZE = _PREFIX.size  # 20
# The header JSON, inflated, is at most 2 MiB (and so is its compressed form, H): real headers are 6 kB
# (lenet5) to 37 kB (resnet18, 123 tensors). json.loads of 2 MiB of the worst text (e.g. "[[]],[[]],...")
# makes ~70 MB of Python objects; 4 MiB would make ~140 MB.
MAX_HEADER_BYTES = 2 << 20
MAX_HEADER_DEPTH = 32  # JSON nesting (a model header nests ~8 deep)
MAX_SECTIONS = 1 << 16
# Versions 2 and 3 deflate the header with this preset dictionary (zlib's zdict; deflate's window reaches back into it):
# the keys, class names and values nearly every header holds, the likeliest last. A header of a few kB then
# costs no literal for its first "parametrizations" or "KMeansWeight". Part of the format: never change it
# within a version (FORMAT.md lists it byte for byte).
HEADER_DICTIONARY = (
    b'"global","kernelwise","channelwise","l2-norm","random","feature-map-l1-norm","channel_how":{},"channel_dim":-1,'
    b'{"name":"conv1_act_prune","user":"conv1","arg":0,"class":"ActivationPrune","spec":{"channel_dim":1,"stages":'
    b'[{"scope":"local","granularity":"elementwise","method":"l1-norm","target":0.3,"rank":"magnitude","sparsity":0.3,'
    b'"seed":0}],"channel_how":{}}},{"name":"fc1_data_in_quantizer","user":"fc1","arg":0,"class":"FixedPoint",'
    b'"image_size":[32,32]},"class":"ResNet18","VGG7","LeNet300","colored_mnist","cifar10","mnist",'
    b'"ActivationPrune","spec":{"width":8,"frac_width":4}},"FixedPoint","channel_mask","act_prune",'
    b'"module":"lstm","tensor":"weight_hh_l0","in_proj_weight","out_proj","bias","running_mean","running_var",'
    b'"num_batches_tracked",[],"int64"],"codebook":"float16"}},"bfloat16","Compact","spec":{"dtype":"float16"}}]},'
    b'"kind":"integer","kmeans","codebook_size":256,"nnz":"1.weight","features.0","classifier.","conv2d","linear",'
    b'{"format":"machop.huffman","structure":{"model":"lenet5","dataset_info":{"name":"fashion_mnist",'
    b'"num_classes":10,"in_channels":1,"image_size":[28,28]},"class":"LeNet5","ties":[],"inserted":[],'
    b'"parametrizations":[{"module":"conv1","tensor":"weight","chain":[{"class":"WeightMask","spec":{"how":'
    b'{"scope":"local","granularity":"elementwise","method":"l1-norm","target":0.9}}},{"class":"KMeansWeight",'
    b'"spec":{"bits":5}}]}]},"tensors":[["conv1.bias",[20],"float32"],'
    b'["conv1.parametrizations.weight.original",[20,1,5,5],"float32"],["conv1.parametrizations.weight.0.mask",'
    b'[20,1,5,5],"bool"],["conv1.parametrizations.weight.1.centroids",[256],"float32"],'
    b'["conv1.parametrizations.weight.1.index",[20,1,5,5],"uint8"],["conv1.parametrizations.weight.1.mask",'
    b'[20,1,5,5],"bool"],["conv1.parametrizations.bias.original",[20],"float32"],'
    b'"raw":["conv1.bias","fc1.bias"],"aliases":{},"index_bits":5,"dense_params":431080,"layers":[{"name":"fc1",'
    b'"shape":[500,800],"kind":"kmeans","bits":5,"codebook_size":32,"nnz":2000,"values":{"count":2000,'
    b'"nbits":10000,"block":1024,"sync_base":4000,"sync_width":8,"symbols":[[0,32]],"lengths":"55555555555555555555'
    b'555555555555"},"gaps":{"count":2000,"nbits":10000,"block":1024,"sync_base":4000,"sync_width":9,'
    b'"symbols":[[0,32]],"lengths":"4444555555555555666666777777772"}}],'
    b'"sections":[{"name":"raw","length":2000,"crc32":1000},{"name":"layer:fc1","length":20000,"crc32":'
)


class CompressedFileError(BadFileError):
    """A compressed file that cannot be used (truncated, altered, other version or architecture).

    A `ValueError` (via `machop.files.BadFileError`); ``str(err)`` is one line,
    prefixed with the file's name.
    """


def deflate_header(text: bytes, version: int = VERSION) -> bytes:
    """The header bytes ``H`` of a file of ``version`` holding JSON ``text``."""
    if version == 1:
        return zlib.compress(text, 9)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)
    return packer.compress(text) + packer.flush()


def inflate_header(head: bytes, version: int = VERSION) -> bytes:
    """The JSON text of header bytes ``H`` (no limits: for tools and tests; readers use `unpack_header`)."""
    if version == 1:
        return zlib.decompress(head)
    inflate = zlib.decompressobj(-15, zdict=HEADER_DICTIONARY)
    return inflate.decompress(head) + inflate.flush()


def pack_container(header: dict, sections: list[tuple[str, bytes]], version: int = VERSION) -> bytes:
    """Serialise ``header`` (JSON-able dict, without ``sections``) and named sections to bytes."""
    if "sections" in header:
        raise ValueError("header key 'sections' is reserved for the container")
    names = [name for name, _ in sections]
    if len(set(names)) != len(names):
        raise ValueError("section names must be unique")
    table = [{"name": name, "length": len(data), "crc32": zlib.crc32(data)} for name, data in sections]
    text = json.dumps({**header, "sections": table}, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(text) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(text)} bytes is too large (the limit is {MAX_HEADER_BYTES})")
    head = deflate_header(text, version)
    fixed = struct.pack("<8sHHI", MAGIC, version, 0, len(head))
    crc = zlib.crc32(head, zlib.crc32(fixed))
    return b"".join([fixed, struct.pack("<I", crc), head, *(data for _, data in sections)])


# --------------------------------------------------------------------------- reading


# The header as untrusted JSON: within these limits, the section table of this schema (`machop.ir.untrusted`).
HEADER_LIMITS = JsonLimits(max_bytes=MAX_HEADER_BYTES, max_depth=MAX_HEADER_DEPTH, max_key=1 << 14,
                           max_string=MAX_HEADER_BYTES)
SECTION_TABLE = Obj(
    required={"sections": ListOf(Obj({"name": Str(max_len=1 << 14), "length": Int(0, (1 << 63) - 1),
                                      "crc32": Int(0, (1 << 32) - 1)}), max_len=MAX_SECTIONS)},
    rest=Anything(),
)


def _parse_header(head: bytes, name: str, version: int = VERSION) -> tuple[dict, list[tuple[str, int, int]]]:
    """(header without "sections", [(section name, length, crc32)]) of the compressed header bytes."""
    inflate = zlib.decompressobj() if version == 1 else zlib.decompressobj(-15, zdict=HEADER_DICTIONARY)
    try:
        text = inflate.decompress(head, MAX_HEADER_BYTES)
    except zlib.error:
        raise CompressedFileError(f"{name}: malformed header (not a {'zlib' if version == 1 else 'deflate'} stream)") from None
    if inflate.unconsumed_tail:
        raise CompressedFileError(f"{name}: malformed header (inflates to more than {MAX_HEADER_BYTES} bytes)")
    if not inflate.eof or inflate.unused_data:
        raise CompressedFileError(f"{name}: malformed header (not one complete {'zlib' if version == 1 else 'deflate'} stream)")
    header = load_untrusted(text, SECTION_TABLE, name, "header", HEADER_LIMITS,
                            fail=lambda problem: CompressedFileError(f"{name}: malformed header ({problem})"))
    table = header.pop("sections")
    entries, seen = [], set()
    for e in table:
        if e["name"] in seen:
            raise CompressedFileError(f"{name}: malformed header (section {e['name']!r} repeated)")
        seen.add(e["name"])
        entries.append((e["name"], e["length"], e["crc32"]))
    return header, entries


def _read_head(read: Callable[[int], bytes], size: int, name: str) -> tuple[dict, list[tuple[str, int, int]], int, int]:
    """Check the prefix and header; ``read(n)`` returns the next (up to) ``n`` bytes, ``size`` the total.

    Returns ``(header, section entries, offset of the first section, version)``; the
    file size is checked against the section table, nothing of the sections is read.
    """
    prefix = read(PREFIX_SIZE)
    if prefix[: len(MAGIC)] != MAGIC[: len(prefix)]:
        raise CompressedFileError(f"{name}: not a machop compressed file (bad magic)")
    if len(prefix) < PREFIX_SIZE:
        raise CompressedFileError(f"{name}: truncated ({size} bytes, the fixed header alone is {PREFIX_SIZE})")
    magic, version, flags, head_len, head_crc = _PREFIX.unpack(prefix)
    if version not in VERSIONS:
        raise CompressedFileError(f"{name}: format version {version} is not supported "
                                  f"(this machop reads versions {', '.join(map(str, VERSIONS))})")
    if head_len > size - PREFIX_SIZE:
        raise CompressedFileError(f"{name}: truncated (header of {head_len} bytes, file has {size} bytes)")
    if head_len > MAX_HEADER_BYTES:
        raise CompressedFileError(f"{name}: malformed header ({head_len} bytes, the limit is {MAX_HEADER_BYTES})")
    head = read(head_len)
    if len(head) != head_len:
        raise CompressedFileError(f"{name}: truncated (header of {head_len} bytes, {len(head)} read)")
    if zlib.crc32(head, zlib.crc32(prefix[:16])) != head_crc:
        raise CompressedFileError(f"{name}: header CRC mismatch (the file is corrupt)")
    if flags != 0:  # covered by the CRC: only a writer from the future sets it
        raise CompressedFileError(f"{name}: unknown flags {flags:#06x}")
    header, entries = _parse_header(head, name, version)
    offset = PREFIX_SIZE + head_len
    expected = offset + sum(length for _, length, _ in entries)
    if size < expected:
        raise CompressedFileError(f"{name}: truncated ({size} bytes, sections end at {expected})")
    if size > expected:
        raise CompressedFileError(f"{name}: {size - expected} unexpected trailing bytes")
    return header, entries, offset, version


def _read_sections(read: Callable[[int], bytes], entries: list[tuple[str, int, int]], name: str) -> dict[str, bytes]:
    sections: dict[str, bytes] = {}
    for sec_name, length, crc in entries:
        chunk = read(length)
        if len(chunk) != length:  # the file shrank while it was read
            raise CompressedFileError(f"{name}: truncated (section {sec_name!r} has {len(chunk)} of {length} bytes)")
        if zlib.crc32(chunk) != crc:
            raise CompressedFileError(f"{name}: section {sec_name!r} CRC mismatch (the file is corrupt)")
        sections[sec_name] = bytes(chunk)
    if read(1):  # the file grew while it was read
        raise CompressedFileError(f"{name}: unexpected trailing bytes")
    return sections


def _memory_reader(data: bytes | bytearray | memoryview) -> tuple[Callable[[int], bytes], int]:
    view = memoryview(data).cast("B")
    at = 0

    def read(n: int) -> bytes:
        nonlocal at
        chunk = view[at : at + n]
        at += len(chunk)
        return bytes(chunk)

    return read, len(view)


def unpack_header(
    data: bytes | bytearray | memoryview, name: str = "compressed file"
) -> tuple[dict, list[tuple[str, int, int]]]:
    """The checked header of a container in memory and its section table ``[(name, length, crc32)]``.

    Checks everything but the sections' CRCs (the size must match the table).
    """
    read, size = _memory_reader(data)
    header, entries, _, _ = _read_head(read, size, name)
    return header, entries


def version_of(data: bytes | bytearray | memoryview) -> int:
    """The format version of a container in memory (read it with `unpack_header` / `unpack_container` first)."""
    return struct.unpack_from("<H", data, len(MAGIC))[0]


def unpack_container(data: bytes | bytearray | memoryview, name: str = "compressed file") -> tuple[dict, dict[str, bytes]]:
    """Check and split a container; returns ``(header, {section name: bytes})``.

    Raises `CompressedFileError` (one line, prefixed with ``name``) for a file
    that is truncated, has trailing bytes, another magic or version, or any
    byte that does not match its CRC.
    """
    read, size = _memory_reader(data)
    header, entries, _, _ = _read_head(read, size, name)
    return header, _read_sections(read, entries, name)


class ContainerFile:
    """An open ``.mchz`` file whose prefix and header are checked: ``header``, ``entries``, ``size``, ``version``.

    ``read_sections()`` then reads and checks the sections. Use as a context
    manager (closes the file). Opening refuses (`machop.files.open_regular`),
    each with one line: a missing path (*no such file*, `NoSuchFile`, also a
    `FileNotFoundError`), a directory (*is a directory*), anything that is not
    a regular file (*not a regular file*: FIFOs, devices such as /dev/zero,
    sockets; opened non-blocking, never read).
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None):
        self.path = Path(path)
        self.name = name = str(path) if name is None else name
        self._file = open_regular(self.path)
        try:
            size = os.fstat(self._file.fileno()).st_size
            self.header, self.entries, self.offset, self.version = _read_head(self._read, size, name)
            self.size = size
        except BaseException:
            self._file.close()
            raise

    def _read(self, n: int) -> bytes:
        try:
            return self._file.read(n)
        except OSError as e:
            raise CompressedFileError(f"{self.name}: cannot read ({e.strerror or type(e).__name__})") from None

    def read_sections(self) -> dict[str, bytes]:
        """The sections, each checked by its CRC (read once the header and file size are known to agree)."""
        return _read_sections(self._read, self.entries, self.name)

    def read_all(self) -> bytes:
        """The whole file as bytes (``size`` of them, as the header claims), for `unpack_container`."""
        try:
            self._file.seek(0)
        except OSError as e:
            raise CompressedFileError(f"{self.name}: cannot read ({e.strerror or type(e).__name__})") from None
        data = self._read(self.size)
        if len(data) != self.size:
            raise CompressedFileError(f"{self.name}: truncated while it was read")
        if self._read(1):
            raise CompressedFileError(f"{self.name}: unexpected trailing bytes (it grew while it was read)")
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ContainerFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_container_header(
    path: str | os.PathLike, name: str | None = None
) -> tuple[dict, list[tuple[str, int, int]]]:
    """The checked container header of the file at ``path`` and its section table; sections are not read.

    Cheap: reads the 20-byte prefix and the (bounded) header only. Raises
    `CompressedFileError` (one line) for anything that is not a readable
    ``.mchz`` file whose size matches its header.
    """
    with ContainerFile(path, name) as f:
        return f.header, f.entries


def write_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    return atomic_write(path, data)


def read_container(path: str | os.PathLike, name: str | None = None) -> tuple[dict, dict[str, bytes]]:
    """`unpack_container` of the file at ``path``, read in the order of the checks (see the module docstring).

    A missing file raises `machop.files.NoSuchFile` (also a FileNotFoundError).
    """
    with ContainerFile(path, name) as f:
        return f.header, f.read_sections()
