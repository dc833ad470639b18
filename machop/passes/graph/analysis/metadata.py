"""Node metadata: ``init_metadata`` and ``add_common_metadata`` (MASE's first two analysis passes).

Each node gets ``node.meta["mase"] = {"common": {...}, "software": {...}}``.
``common`` holds ``mase_op`` (conv2d, linear, relu, ...), ``mase_type``
(module_related_func, builtin_func, placeholder, output, ...), the shapes and
dtypes of the node's tensor inputs and outputs on one dummy batch, and the
number of parameters of the module it calls.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from machop.config import ConfigError, NoOptions, from_dict, join, pass_path
from machop.ir import MaseGraph

logger = logging.getLogger(__name__)

_MODULE_OPS: dict[type[nn.Module], str] = {
    nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Linear: "linear", nn.BatchNorm1d: "batch_norm1d",
    nn.BatchNorm2d: "batch_norm2d", nn.ReLU: "relu", nn.MaxPool2d: "max_pool2d",
    nn.AvgPool2d: "avg_pool2d", nn.AdaptiveAvgPool2d: "adaptive_avg_pool2d", nn.Flatten: "flatten",
    nn.Dropout: "dropout", nn.Softmax: "softmax", nn.Identity: "identity",
}
_FUNCTION_OPS = {
    torch.flatten: "flatten", operator.add: "add", torch.add: "add", torch.relu: "relu",
    nn.functional.relu: "relu", operator.mul: "mul", torch.cat: "cat", operator.getitem: "getitem",
    torch.nn.functional.adaptive_avg_pool2d: "adaptive_avg_pool2d", torch.nn.functional.max_pool2d: "max_pool2d",
}


def mase_op(graph: MaseGraph, node: fx.Node) -> str:
    """The MASE operator name of a node (``conv2d``, ``linear``, ``relu``, ``add``, ...)."""
    if node.op == "call_module":
        module = graph.module_of(node)
        for cls, name in _MODULE_OPS.items():
            if type(module) is cls:
                return name
        return type(module).__name__.lower()
    if node.op in ("call_function", "call_method"):
        return _FUNCTION_OPS.get(node.target, getattr(node.target, "__name__", str(node.target)))
    return node.op


@dataclass
class CommonMetadataArgs:
    """``add_common_metadata``: ``dummy_input`` (a notebook may pass a batch; default ``graph.dummy_input``),
    or MASE's ``dummy_in``: the same, or a dict from each placeholder's name (``x``) to its tensor."""

    dummy_input: Any = None
    dummy_in: Any = None

    def validate(self, path: str) -> None:
        if self.dummy_input is not None and self.dummy_in is not None:
            raise ConfigError(join(path, "dummy_in"), "give dummy_input or MASE's dummy_in, not both")


def _inputs(graph: MaseGraph, dummy: Any, path: str) -> tuple:
    """The positional inputs of one forward pass: a dict (MASE's ``dummy_in``) is ordered by placeholder name."""
    if isinstance(dummy, dict):
        names = [n.name for n in graph.nodes if n.op == "placeholder"]
        missing = [n for n in names if n not in dummy]
        unknown = sorted(set(dummy) - set(names), key=str)
        if missing or unknown:
            what = f"no tensor for input {missing[0]!r}" if missing else f"{unknown[0]!r} is no input of the model"
            raise ConfigError(join(path, "dummy_in"), f"{what}; its inputs are {', '.join(names)}")
        return tuple(dummy[n] for n in names)
    return tuple(dummy) if isinstance(dummy, (tuple, list)) else (dummy,)


def init_metadata(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Give every node an empty ``mase`` metadata dict with its op and type."""
    from_dict(NoOptions, pass_args, pass_path(graph.context.step, "passes.init_metadata"))
    for node in graph.nodes:
        node.meta["mase"] = {"common": {}, "software": {}}
        common = node.meta["mase"]["common"]
        common["mase_op"] = mase_op(graph, node)
        common["mase_type"] = {"call_module": "module_related_func", "call_function": "builtin_func"}.get(node.op, node.op)
    return graph, {"nodes": len(list(graph.nodes))}


def _describe(tm) -> dict | list | None:
    """Shape and dtype of ``tensor_meta`` (a TensorMetadata, or a tuple of them)."""
    if hasattr(tm, "shape") and hasattr(tm, "dtype"):
        return {"shape": list(tm.shape), "dtype": str(tm.dtype).removeprefix("torch.")}
    if isinstance(tm, (tuple, list)):
        return [_describe(t) for t in tm]
    return None


def add_common_metadata(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Record tensor shapes (from ``graph.dummy_input``) and parameter counts per node.

    ``pass_args`` may hold ``dummy_input`` or MASE's ``dummy_in`` (a dict by
    input name, as MASE's ``add_common_metadata_analysis_pass`` takes it);
    else ``graph.dummy_input`` is used.
    """
    path = pass_path(graph.context.step, "passes.add_common_metadata")
    args = from_dict(CommonMetadataArgs, pass_args, path)
    given = args.dummy_input if args.dummy_input is not None else args.dummy_in
    dummy = given if given is not None else graph.dummy_input
    if dummy is None:
        raise ValueError("add_common_metadata needs a dummy input: MaseGraph(model, dummy_input=...)")
    if any("mase" not in n.meta for n in graph.nodes):
        init_metadata(graph)
    was_training = graph.model.training
    graph.model.eval()
    with torch.no_grad():
        ShapeProp(graph.model).propagate(*_inputs(graph, dummy, path))
    graph.model.train(was_training)
    total = 0
    for node in graph.nodes:
        common = node.meta["mase"]["common"]
        common["args"] = [_describe(a.meta.get("tensor_meta")) if isinstance(a, fx.Node) else None for a in node.args]
        result = _describe(node.meta.get("tensor_meta"))
        common["results"] = result if isinstance(result, list) else [result] if result else []
        module = graph.module_of(node)
        common["num_params"] = sum(p.numel() for p in module.parameters()) if module is not None else 0
        total += common["num_params"]
    return graph, {"num_params": total}
