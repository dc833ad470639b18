"""Quantization: signed fixed point (``integer``) and Deep Compression weight sharing (``kmeans``).

``quantize_transform_pass(graph, pass_args)`` applies a MASE-style
``[passes.quantize]`` table. The parametrizations it adds (`FixedPoint`,
`KMeansWeight`) and the codes view the Huffman coder reads (`weight_codes`)
live in `machop.nn`.
"""

from .config import IntegerConfig, KMeansConfig, QuantizeArgs, parse_quantize_args
from .kmeans import KMeans1DResult, kmeans_1d
from .quantize import check_quantize_args, quantize_transform_pass

__all__ = [
    "IntegerConfig",
    "KMeans1DResult",
    "KMeansConfig",
    "QuantizeArgs",
    "check_quantize_args",
    "kmeans_1d",
    "parse_quantize_args",
    "quantize_transform_pass",
]
