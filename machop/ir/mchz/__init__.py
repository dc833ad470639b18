"""The ``.mchz`` compressed model file (Deep Compression §4), on the ir floor below the passes.

- `format`: the container (magic, version, CRC-checked JSON header and sections), see FORMAT.md;
- `codec`: canonical Huffman over integer numpy arrays (vectorised encode/decode);
- `model`: a model's quantized sparse weights as Huffman-coded values + relative positions
  (inside the live rows, columns or kernels of a layer whose pruning left whole ones dead).

The huffman passes (`machop.passes.graph.transforms.huffman`) write and read it
through this package; `machop.load_compressed` opens a file with it.
"""

from .codec import EncodedStream, HuffmanTable, code_lengths, decode, encode
from .format import VERSION, VERSIONS, CompressedFileError
from .model import (
    FORMAT_NAME,
    decode_model,
    encode_model,
    file_header,
    gap_decode,
    gap_encode,
    load_compressed,
    read_file,
    read_header,
)

__all__ = [
    "CompressedFileError",
    "EncodedStream",
    "FORMAT_NAME",
    "HuffmanTable",
    "VERSION",
    "VERSIONS",
    "code_lengths",
    "decode",
    "decode_model",
    "encode",
    "encode_model",
    "file_header",
    "gap_decode",
    "gap_encode",
    "load_compressed",
    "read_file",
    "read_header",
]
