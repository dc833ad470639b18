"""`shrunk_like`: the architecture of a shrunk model, from the original model and a file of the shrunk one.

A file holds no code, and machop's loaders build a registry model with its
original shapes; a shrunk model's file records its smaller shapes only in its
tensors. `shrunk_like` resizes the convolution, Linear and batch-norm
layers of a fresh model to those shapes, so `load_graph(path, model=...)`
(or `load_compressed`, with a state dict or another file of the same model)
can check the architecture and load it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from machop.ir import MaseGraph
from machop.ir.serialize import base_signature, read_checkpoint, signature_of

from .channels import _CONV, _NORM


def _shapes(source) -> dict[str, list[int]]:
    if isinstance(source, (str, os.PathLike)):
        state, structure, _ = read_checkpoint(source, "pt")
        signature = signature_of(state)
        signature = base_signature(signature, structure) if structure else signature
    elif isinstance(source, dict):
        signature = signature_of(source)
    else:
        signature = source
    return {key: list(shape) for key, shape, _ in signature}


def shrunk_like(model: nn.Module | MaseGraph, source) -> nn.Module:
    """``model`` (changed in place and returned) with every Conv/Linear/BatchNorm resized to ``source``'s shapes.

    ``source``: a file written by `save_graph` (``pt`` or ``mz``), a state
    dict, or a ``[[key, shape, dtype], ...]`` signature. New tensors are
    zeros: load the file into the result. Layers the source does not list
    are left alone.
    """
    root = model.model if isinstance(model, MaseGraph) else model
    shapes = _shapes(source)
    for q, m in list(root.named_modules()):
        key = f"{q}.weight".lstrip(".")
        if key not in shapes or not isinstance(m, (*_CONV, nn.Linear, *_NORM)):
            continue
        shape = shapes[key]
        has_bias = f"{q}.bias".lstrip(".") in shapes
        w = m.weight
        if list(w.shape) == shape and (m.bias is not None) == has_bias:
            continue
        kw = {"device": w.device, "dtype": w.dtype}
        if isinstance(m, nn.Linear):
            new = type(m)(shape[1], shape[0], bias=has_bias, **kw)
        elif isinstance(m, _NORM):
            new = type(m)(shape[0], eps=m.eps, momentum=m.momentum, affine=m.affine,
                          track_running_stats=m.track_running_stats, **kw)
        else:
            depthwise = m.groups == m.in_channels == m.out_channels and m.groups > 1
            groups = shape[0] if depthwise else m.groups
            new = type(m)(shape[1] * groups, shape[0], m.kernel_size, stride=m.stride, padding=m.padding,
                          dilation=m.dilation, groups=groups, bias=has_bias, padding_mode=m.padding_mode, **kw)
        new.train(m.training)
        with torch.no_grad():
            for p in new.parameters():
                p.zero_()
        parent, _, name = q.rpartition(".")
        root.get_submodule(parent)._modules[name] = new
    return model
