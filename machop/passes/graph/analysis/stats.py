"""Size and sparsity figures of a graph: the numbers every report and ratio starts from."""

from __future__ import annotations

import torch
from torch import nn

from machop.ir import MaseGraph

INDEX_BITS = 5  # relative-index width of the sparse-storage estimate (Deep Compression's fc setting)


def _layer_bits(module: nn.Module, weight: torch.Tensor) -> tuple[int, int]:
    """(non-zero weights, estimated bits) of one Conv2d/Linear weight in sparse, quantized storage."""
    from machop.passes.graph.transforms.quantize import weight_codes

    codes = weight_codes(module)
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
    """Per Conv2d/Linear layer: ``name``, ``weights``, ``nonzero``, ``estimated_bits``."""
    rows = []
    for node in graph.layer_nodes():
        module = graph.module_of(node)
        weight = module.weight.detach()
        nonzero, bits = _layer_bits(module, weight)
        rows.append({"name": node.name, "weights": weight.numel(), "nonzero": nonzero, "estimated_bits": bits})
    return rows


def dense_parameter_count(model: nn.Module) -> int:
    """Float parameters of the dense model: weights and biases, not buffers.

    A parametrized tensor counts once, at its original shape; parameters of
    parametrizations (k-means centroids) and of modules inserted by passes
    (any `rebuildable` class) do not count.
    """
    from machop.ir.serialize import REBUILDABLE

    total = 0
    for qualname, module in model.named_modules():
        if ".parametrizations" in f".{qualname}" or type(module).__name__ in REBUILDABLE:
            continue
        tensors = [p for p in module._parameters.values() if p is not None]
        plists = getattr(module, "parametrizations", None)
        if isinstance(plists, nn.ModuleDict):
            tensors += [plist.original for plist in plists.values()]
        total += sum(t.numel() for t in tensors if t.is_floating_point())
    return total


def weight_stats(graph: MaseGraph) -> dict:
    """``params``, ``weights``, ``nonzero_weights``, ``sparsity``, ``dense_bytes``, ``estimated_bytes``, ``layers``.

    ``params`` counts every parameter of the dense model (weights and biases,
    parametrized tensors by their effective shape); ``dense_bytes`` is that at
    fp32, the baseline of every compression ratio. ``estimated_bytes`` is the
    storage before entropy coding: each Conv2d/Linear weight as its non-zero
    values (32 bits, or the quantizer's bits plus its fp32 codebook) plus a
    5-bit relative index per value when the layer is sparse; every other
    parameter at fp32. Buffers (batch-norm statistics) are not counted.
    """
    layers = layer_stats(graph)
    params = dense_parameter_count(graph.model)
    weights = sum(r["weights"] for r in layers)
    nonzero = sum(r["nonzero"] for r in layers)
    return {
        "params": params,
        "weights": weights,
        "nonzero_weights": nonzero,
        "sparsity": 1 - nonzero / weights if weights else 0.0,
        "dense_bytes": 4 * params,
        # every parameter but the layer weights stays fp32
        "estimated_bytes": (sum(r["estimated_bits"] for r in layers) + 32 * (params - weights)) / 8,
        "layers": layers,
    }
