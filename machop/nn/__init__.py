"""machop's core: the torch-only building blocks a compressed model is made of.

- `WeightMask` (prune), `KMeansWeight` (weight sharing), `FixedPoint`
  (fixed point): parametrizations of a weight; `Compact`: rounds a bias or
  other side tensor to float16/bfloat16; `ActivationPrune`: a module
  inserted in front of a layer;
- `weight_codes` / `load_weight_codes`: a quantized weight as
  ``codebook[codes] * mask``, what the Huffman coder stores;
- `LAYERS` (`layers`): the one registry of layer kinds: weights, channel
  dimensions, slicing (`sliced`), MACs, and how every op passes channels;
- `compressible_weights`: every weight of a model that machop compresses
  (`KINDS`, and parameters the graph uses directly), each once, with every
  site a tied or reused weight lives at; `uncompressed_parameters`: the rest;
- `MixturePrior`: soft weight-sharing's Gaussian mixture prior over the kept weights;
- `kmeans_1d`: exact 1-D k-means, the clustering behind weight sharing;
- `REBUILDABLE`: the classes a saved file may name;
- `baked_state` / `load_baked`: a compressed model's weights as plain tensors, for a plain model of its class.

It imports nothing else of machop; everything else builds on it.
"""

from .activation import ActivationPrune
from .bake import baked_state, inserted_modules, load_baked, unparametrized_copy
from .compact import FLOAT_FORMATS, SHORT_FLOATS, Compact, round_to
from .codes import WeightCodes, fixed_point_grid, load_weight_codes, quantizer_of, weight_codes
from .finite import NonFiniteError, first_non_finite, require_finite
from .fixed_point import MAX_FRAC_WIDTH, MAX_WIDTH, FixedPoint, fixed_point_codes, fixed_point_range, quantize_fixed_point
from .kmeans import KMeans1DResult, kmeans_1d
from .masks import WeightMask, apply_mask, get_mask
from .prior import MixturePrior
from .ranking import group_scores, lowest_k_mask, prune_count
from .rebuild import REBUILDABLE, has_compression, is_rebuildable, rebuild, rebuildable, spec_of
from .shared_weight import KMeansWeight, index_dtype
from .layers import (
    KIND_NAMES,
    KINDS,
    LAYERS,
    PARAMETER,
    LayerKind,
    channels,
    compressed_kind,
    flow_of,
    function_flow,
    is_depthwise,
    kind_of,
    macs,
    method_flow,
    module_flow,
    reads_channels,
    recorded_channels,
    resizable,
    sliced,
    zero_padded,
)
from .weights import (
    Weight,
    bake,
    chain,
    compressible_weights,
    dense_parameter_count,
    fold_foreign_parametrizations,
    has_tensor,
    module_paths,
    most_specific,
    nonzero_parameter_count,
    register,
    stored,
    tensor_sites,
    tied_tensors,
    uncompressed_parameters,
)

__all__ = [
    "baked_state", "inserted_modules", "load_baked", "unparametrized_copy",
    "NonFiniteError", "first_non_finite", "require_finite",
    "ActivationPrune", "Compact", "FLOAT_FORMATS", "FixedPoint", "KIND_NAMES", "KINDS", "LAYERS", "PARAMETER", "KMeans1DResult", "KMeansWeight", "LayerKind", "MAX_FRAC_WIDTH",
    "MAX_WIDTH", "MixturePrior", "REBUILDABLE", "Weight", "WeightCodes", "WeightMask", "apply_mask", "bake", "chain",
    "compressible_weights", "dense_parameter_count", "fixed_point_codes", "fixed_point_grid", "fixed_point_range",
    "get_mask", "group_scores", "has_compression", "has_tensor", "index_dtype", "is_rebuildable", "kind_of", "kmeans_1d", "load_weight_codes", "nonzero_parameter_count",
    "lowest_k_mask", "module_paths", "most_specific", "prune_count", "quantize_fixed_point", "quantizer_of", "rebuild", "rebuildable", "register", "round_to", "SHORT_FLOATS",
    "spec_of", "stored", "tensor_sites", "tied_tensors", "uncompressed_parameters", "fold_foreign_parametrizations", "weight_codes", "channels",
    "compressed_kind", "flow_of", "function_flow", "is_depthwise", "macs", "method_flow", "module_flow",
    "reads_channels", "recorded_channels", "resizable", "sliced", "zero_padded",
]
