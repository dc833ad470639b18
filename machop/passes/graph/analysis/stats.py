"""Size and sparsity figures of a graph: the numbers every report and ratio starts from."""

from __future__ import annotations

import torch

from machop.ir import MaseGraph
from machop.nn import Weight, dense_parameter_count, nonzero_parameter_count, weight_codes

INDEX_BITS = 5  # relative-index width of the sparse-storage estimate (Deep Compression's fc setting)


def _weight_bits(w: Weight, weight: torch.Tensor) -> tuple[int, int]:
    """(non-zero weights, estimated bits) of one weight in sparse, quantized storage."""
    codes = weight_codes(w.module, w.tensor_name)
    nonzero = int(torch.count_nonzero(weight))
    stored = int(codes.mask.sum()) if codes is not None else nonzero
    value_bits = codes.bits if codes is not None else 32
    bits = stored * value_bits
    if stored < weight.numel():
        bits += stored * INDEX_BITS
    if codes is not None and codes.kind == "kmeans":
        bits += 32 * codes.codebook.numel()
    return nonzero, bits


def layer_stats(graph: MaseGraph) -> list[dict]:
    """Per compressible weight: ``name``, ``kind``, ``shape``, ``weights``, ``nonzero``, ``estimated_bits``."""
    rows = []
    for w in graph.weights():
        weight = w.value()
        nonzero, bits = _weight_bits(w, weight)
        rows.append({"name": w.name, "kind": w.kind.name, "shape": list(weight.shape), "weights": weight.numel(),
                     "nonzero": nonzero,
                     "estimated_bits": bits})
    return rows


def weight_stats(graph: MaseGraph) -> dict:
    """``params``, ``nonzero_params``, ``weights``, ``nonzero_weights``, ``sparsity``, ``dense_bytes``,
    ``estimated_bytes``, ``layers``.

    ``params`` counts every parameter of the dense model (weights, biases,
    batch norm; a tied tensor once; parametrized tensors at their original
    shape) and ``nonzero_params`` its non-zero effective values;
    ``dense_bytes`` is ``params`` at fp32, the baseline of every compression
    ratio; after a shrink, those of the model before it
    (``graph.context.original_params``), so a ratio means one thing all along. ``weights``/``sparsity`` are over the compressible weights.
    ``estimated_bytes`` is the storage before entropy coding: each
    compressible weight as its non-zero values (32 bits, or the quantizer's
    bits plus its fp32 codebook) plus a 5-bit relative index per value when
    the weight is sparse; every other parameter at fp32. Buffers (batch-norm
    statistics) are not counted.
    """
    layers = layer_stats(graph)
    params = dense_parameter_count(graph.model)
    weights = sum(r["weights"] for r in layers)
    nonzero = sum(r["nonzero"] for r in layers)
    return {
        "params": params,
        "nonzero_params": nonzero_parameter_count(graph.model),
        "weights": weights,
        "nonzero_weights": nonzero,
        "sparsity": 1 - nonzero / weights if weights else 0.0,
        "dense_bytes": 4 * (graph.context.original_params or params),
        # every parameter but the compressible weights stays fp32
        "estimated_bytes": (sum(r["estimated_bits"] for r in layers) + 32 * (params - weights)) / 8,
        "layers": layers,
    }
