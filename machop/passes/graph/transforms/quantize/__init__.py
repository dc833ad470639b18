"""Quantization: signed fixed point (``integer``) and Deep Compression weight sharing (``kmeans``).

``quantize_transform_pass(graph, pass_args)`` applies a MASE-style
``[passes.quantize]`` table. The parametrizations it adds (`FixedPoint`,
`KMeansWeight`) and the codes view the Huffman coder reads (`weight_codes`)
live in `machop.nn`, as does the 1-D k-means (`machop.nn.kmeans`).
"""

from .config import IntegerConfig, KMeansConfig, QuantizeArgs, parse_quantize_args
from .quantize import check_quantize_args, quantize_transform_pass

__all__ = [
    "IntegerConfig",
    "KMeansConfig",
    "QuantizeArgs",
    "check_quantize_args",
    "parse_quantize_args",
    "quantize_transform_pass",
]
