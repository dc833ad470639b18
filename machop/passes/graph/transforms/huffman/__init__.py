"""Deep Compression §4 as passes: ``huffman_encode``, ``huffman_decode`` and ``huffman`` (both, bit-exact check).

The file they write, ``.mchz`` (container, Huffman codec, model coding), is
`machop.ir.mchz`, on the floor below the passes; its names are re-exported here.
"""

from machop.ir.mchz import (
    CompressedFileError,
    EncodedStream,
    HuffmanTable,
    code_lengths,
    codec,
    decode,
    decode_model,
    encode,
    encode_model,
)
from .passes import (
    DEFAULT_FILENAME,
    HuffmanArgs,
    check_decode_args,
    check_encode_args,
    dense_copy,
    huffman_decode_pass,
    huffman_encode_pass,
    huffman_pass,
    parse_huffman_args,
)
from machop.ir.mchz import load_compressed

__all__ = [
    "CompressedFileError",
    "DEFAULT_FILENAME",
    "EncodedStream",
    "HuffmanArgs",
    "check_decode_args",
    "check_encode_args",
    "dense_copy",
    "HuffmanTable",
    "code_lengths",
    "codec",
    "decode",
    "decode_model",
    "encode",
    "encode_model",
    "huffman_decode_pass",
    "huffman_encode_pass",
    "huffman_pass",
    "load_compressed",
    "parse_huffman_args",
]
