"""Size and sparsity figures of a graph's Conv2d and Linear weights."""

from __future__ import annotations

import torch
from torch import nn

from machop.ir import MaseGraph


def weight_stats(graph: MaseGraph) -> dict:
    """``{"params", "weights", "nonzero_weights", "sparsity", "dense_bytes"}``.

    ``params`` counts every parameter of the dense model (weights and biases,
    parametrized tensors by their effective value); ``dense_bytes`` is that at
    fp32, the baseline of every compression ratio.
    """
    params = weights = nonzero = 0
    for qualname, module in graph.model.named_modules():
        if ".parametrizations." in f".{qualname}.":
            continue  # masks, codebooks: storage details of the tensor they parametrize
        names = {n for n, _ in module.named_parameters(recurse=False)} | set(getattr(module, "parametrizations", {}))
        for name in names:
            t = getattr(module, name)
            params += t.numel()
            if name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear)):
                weights += t.numel()
                nonzero += int(torch.count_nonzero(t.detach()))
    return {
        "params": params,
        "weights": weights,
        "nonzero_weights": nonzero,
        "sparsity": 1 - nonzero / weights if weights else 0.0,
        "dense_bytes": 4 * params,
    }
