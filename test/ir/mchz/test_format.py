"""The .mchz container: every single-byte change and every truncation of a small file is refused."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from machop.ir.mchz.format import (
    MAGIC,
    PREFIX_SIZE,
    VERSION,
    VERSIONS,
    CompressedFileError,
    deflate_header,
    inflate_header,
    pack_container,
    read_container,
    unpack_container,
    write_atomic,
)


@pytest.fixture(scope="module")
def small() -> bytes:
    return pack_container({"format": "test", "n": [1, 2]}, [("a", bytes(range(40))), ("empty", b""), ("b", b"\x00\xff")])


def test_round_trip(small):
    header, sections = unpack_container(small)
    assert header == {"format": "test", "n": [1, 2]}
    assert sections == {"a": bytes(range(40)), "empty": b"", "b": b"\x00\xff"}
    assert small[:8] == MAGIC and len(MAGIC) == 8
    assert struct.unpack_from("<H", small, 8)[0] == VERSION


def test_every_single_byte_change_is_refused(small):
    """All 255 alternative values of every byte: magic, version, flags, lengths, CRCs, header, sections."""
    data = bytearray(small)
    refused = 0
    for i in range(len(data)):
        original = data[i]
        for value in range(256):
            if value == original:
                continue
            data[i] = value
            with pytest.raises(CompressedFileError) as err:
                unpack_container(bytes(data))
            assert "\n" not in str(err.value)
            refused += 1
        data[i] = original
    assert refused == 255 * len(small)


def test_every_truncation_and_any_extension_is_refused(small):
    for cut in range(len(small)):
        with pytest.raises(CompressedFileError, match="truncated|bad magic"):
            unpack_container(small[:cut])
    with pytest.raises(CompressedFileError, match="trailing"):
        unpack_container(small + b"\x00")


def test_other_version_is_named(small):
    data = bytearray(small)
    struct.pack_into("<H", data, 8, VERSION + 1)
    with pytest.raises(CompressedFileError, match=f"version {VERSION + 1} is not supported"):
        unpack_container(bytes(data))


def test_not_a_container():
    with pytest.raises(CompressedFileError, match="bad magic"):
        unpack_container(b"PK\x03\x04" + bytes(100))
    with pytest.raises(CompressedFileError, match="truncated"):
        unpack_container(b"")  # an empty file: what an interrupted copy leaves


def test_header_crc_covers_a_consistent_forgery(small):
    """Re-writing the header with a valid JSON but without fixing the CRC is caught."""
    head_len = struct.unpack_from("<I", small, 12)[0]
    text = inflate_header(small[PREFIX_SIZE : PREFIX_SIZE + head_len]).replace(b'"test"', b'"TEST"')
    head = deflate_header(text)
    fixed = small[:12] + struct.pack("<I", len(head)) + small[16:PREFIX_SIZE]
    with pytest.raises(CompressedFileError, match="header CRC"):
        unpack_container(fixed + head + small[PREFIX_SIZE + head_len :])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("head", [b'{"sections": 3}', b"[1]", None, b'{"sections": []}x', b"\xff", b"zlib"])
def test_malformed_header_with_valid_crc_is_refused(head, version):
    """What a foreign writer could produce: valid CRC, but not one stream (zlib in version 1, raw deflate with the
    preset dictionary in version 2) of a JSON object with sections."""
    if head is None:  # not compressed at all
        head = b'{"sections": []}'
    elif head == b"zlib":  # the other version's stream
        head = deflate_header(b'{"sections": []}', 2 if version == 1 else 1)
    elif head.endswith(b"x"):  # one stream, then more
        head = deflate_header(head[:-1], version) + b"x"
    else:
        head = deflate_header(head, version)
    fixed = struct.pack("<8sHHI", MAGIC, version, 0, len(head))
    data = fixed + struct.pack("<I", zlib.crc32(head, zlib.crc32(fixed))) + head
    with pytest.raises(CompressedFileError, match="malformed"):
        unpack_container(data)


@pytest.mark.parametrize("version", VERSIONS)
def test_both_versions_round_trip(version):
    data = pack_container({"format": "test", "parametrizations": [1]}, [("a", b"xy")], version=version)
    assert struct.unpack_from("<H", data, 8)[0] == version
    assert unpack_container(data) == ({"format": "test", "parametrizations": [1]}, {"a": b"xy"})


def test_preset_dictionary_shrinks_a_model_header():
    text = (b'{"format":"machop.huffman","structure":{"model":"lenet5","dataset_info":{"name":"fashion_mnist",'
            b'"num_classes":10,"in_channels":1,"image_size":[28,28]},"class":"LeNet5","ties":[],"inserted":[]}}')
    assert len(deflate_header(text, 2)) < len(deflate_header(text, 1)) // 3
    assert inflate_header(deflate_header(text, 2), 2) == text


def test_reserved_and_duplicate_names():
    with pytest.raises(ValueError, match="reserved"):
        pack_container({"sections": 1}, [])
    with pytest.raises(ValueError, match="unique"):
        pack_container({}, [("a", b""), ("a", b"")])


def test_write_atomic_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "model.mchz"
    data = pack_container({"x": 1}, [("s", np.arange(10, dtype=np.uint8).tobytes())])
    write_atomic(target, data)
    assert target.read_bytes() == data and os.listdir(target.parent) == ["model.mchz"]
    assert read_container(target)[0] == {"x": 1}
    with pytest.raises(FileNotFoundError):
        read_container(tmp_path / "missing.mchz")


def test_format_md_lists_the_dictionary_byte_for_byte():
    from pathlib import Path

    from machop.ir.mchz.format import HEADER_DICTIONARY

    text = (Path(__file__).resolve().parents[3] / "machop/ir/mchz/FORMAT.md").read_text()
    block = text.split("## 8. The header dictionary (versions 2 and 3)")[1].split("```\n")[1]
    assert block.replace("\n", "").encode() == HEADER_DICTIONARY
    assert f"{len(HEADER_DICTIONARY)} bytes" in text
