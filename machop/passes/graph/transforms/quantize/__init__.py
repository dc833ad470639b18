"""Quantization: signed fixed point (``integer``) and Deep Compression weight sharing (``kmeans``).

``quantize_transform_pass(graph, pass_args)`` applies a MASE-style
``[passes.quantize]`` table; `weight_codes` / `load_weight_codes` expose a
quantized weight as ``codebook[codes] * mask`` for the Huffman coder.
"""

from .codes import WeightCodes, fixed_point_grid, load_weight_codes, quantizer_of, weight_codes
from .config import IntegerConfig, KMeansConfig, QuantizeArgs, parse_quantize_args
from .fixed_point import FixedPoint, quantize_fixed_point
from .kmeans import KMeans1DResult, kmeans_1d
from .quantize import quantize_transform_pass
from .shared_weight import KMeansWeight

__all__ = [
    "FixedPoint",
    "IntegerConfig",
    "KMeans1DResult",
    "KMeansConfig",
    "KMeansWeight",
    "QuantizeArgs",
    "WeightCodes",
    "fixed_point_grid",
    "kmeans_1d",
    "load_weight_codes",
    "parse_quantize_args",
    "quantize_fixed_point",
    "quantize_transform_pass",
    "quantizer_of",
    "weight_codes",
]
