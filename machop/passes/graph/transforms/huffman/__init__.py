"""Deep Compression §4: canonical Huffman coding and the compressed model file (``.mchz``).

- `codec`: canonical Huffman over integer numpy arrays (vectorised encode/decode);
- `format`: the container (magic, version, CRC-checked JSON header and sections), see FORMAT.md;
- `model`: a model's quantized sparse weights as Huffman-coded values + relative positions;
- `passes`: ``huffman_encode``, ``huffman_decode`` and ``huffman`` (both, with a bit-exact check).
"""

from .codec import EncodedStream, HuffmanTable, code_lengths, decode, encode
from .format import CompressedFileError
from .model import decode_model, encode_model
from .passes import (
    DEFAULT_FILENAME,
    HuffmanArgs,
    check_decode_args,
    check_encode_args,
    dense_copy,
    huffman_decode_pass,
    huffman_encode_pass,
    huffman_pass,
    load_compressed,
    parse_huffman_args,
)

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
