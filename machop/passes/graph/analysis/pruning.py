"""``add_pruning_metadata``: per-layer pruning figures, in node metadata and as a JSON report.

It reads only the model (prune masks, inserted `ActivationPrune` modules,
effective weights), so it can run any time after pruning, also on a graph
loaded from a file. Per Conv2d/Linear node it writes
``graph.meta(node)["software"]["prune"]``:

- ``kind``: ``conv2d`` | ``linear``; ``module``: the qualified module name;
- ``weight`` / ``activation``: None, or ``{scope, granularity, method,
  target, achieved}``; ``achieved`` is the fraction the mask prunes (for
  activations: of each sample's input values, channel mask and per-sample
  stages together);
- ``params`` / ``nonzero_params``: weight + bias entries, and how many of
  the effective values are non-zero;
- ``macs_dense``: multiply-accumulates of the layer for one sample;
  ``macs_effective``: ``macs_dense × weight density × input density``, the
  weight density being the non-zero fraction of the effective weight and the
  input density ``1 - achieved`` of activation pruning (1 without). This
  counts the MACs a sparse kernel could skip if the two sparsities were
  independent; zeros in the data itself (e.g. after ReLU) are not counted.
  MACs need an input shape: ``graph.dummy_input`` or, failing that,
  ``graph.context.dataset_info``; without either they are None.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from machop.config import from_dict
from machop.ir.graph import MaseGraph
from machop.passes.graph.transforms.prune.activation_methods import ActivationPrune
from machop.passes.graph.transforms.prune.masks import WeightMask, get_mask
from machop.passes.graph.transforms.prune.ranking import prune_count

logger = logging.getLogger(__name__)


@dataclass
class PruningMetadataArgs:
    """``add_pruning_metadata`` takes no options."""


def _sample_input(graph: MaseGraph) -> torch.Tensor | None:
    x = graph.dummy_input
    if isinstance(x, torch.Tensor):
        return x[:1]
    info = graph.context.dataset_info
    if info is not None:
        return torch.zeros(1, info.in_channels, *info.image_size)
    return None


class _ShapeRecorder(fx.Interpreter):
    def __init__(self, module: fx.GraphModule, names: set[str]):
        super().__init__(module)
        self.names = names
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names:
            args, _ = self.fetch_args_kwargs_from_env(n)
            self.shapes[n.name] = (tuple(args[0].shape), tuple(out.shape))
        return out


def layer_shapes(graph: MaseGraph, nodes: list[fx.Node]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shape (batch 1) of each node in ``nodes``; empty if no input shape is known."""
    x = _sample_input(graph)
    if x is None:
        logger.info("no dummy_input or dataset_info: MACs are not reported")
        return {}
    device = next(iter(graph.model.parameters()), torch.empty(0)).device
    recorder = _ShapeRecorder(graph.model, {n.name for n in nodes})
    was_training = graph.model.training
    graph.model.eval()
    try:
        with torch.no_grad():
            recorder.run(x.to(device))
    except Exception as e:  # a report must not break a pipeline; say why the MACs are missing
        logger.warning("shape inference for MACs failed (%s: %s); MACs are not reported", type(e).__name__, e)
        return {}
    finally:
        graph.model.train(was_training)
    return recorder.shapes


def _summarise(parts: list[dict]) -> dict:
    def joined(key: str) -> str:
        return " + ".join(dict.fromkeys(str(p.get(key)) for p in parts))

    targets = [p["target"] for p in parts if p.get("target") is not None]
    return {
        "scope": joined("scope"),
        "granularity": joined("granularity"),
        "method": joined("method"),
        "target": max(targets) if targets else None,
    }


def _weight_entry(module: nn.Module) -> dict | None:
    mask = get_mask(module)
    if mask is None:
        return None
    hows = [p.how for p in module.parametrizations["weight"] if isinstance(p, WeightMask) and p.how]
    entry = _summarise(hows) if hows else {"scope": None, "granularity": None, "method": None, "target": None}
    entry["achieved"] = 1.0 - int(torch.count_nonzero(mask)) / mask.numel()
    return entry


def _activation_entry(act: ActivationPrune, in_shape: tuple[int, ...] | None) -> dict:
    parts = ([act.channel_how] if act.channel_mask is not None else []) + list(act.stages)
    entry = _summarise(parts)
    cm = act.channel_mask
    channel = 0.0 if cm is None else 1.0 - int(torch.count_nonzero(cm)) / cm.numel()
    if in_shape is not None:
        n = math.prod(in_shape[1:])
        pruned = max([round(channel * n)] + [prune_count(s["sparsity"], n) for s in act.stages])
        entry["achieved"] = pruned / n
    else:  # without the input size the per-sample rounding is unknown
        entry["achieved"] = max([channel] + [s["sparsity"] for s in act.stages])
    return entry


def _macs(module: nn.Module, shapes: tuple | None) -> int | None:
    if shapes is None:
        return None
    _, out_shape = shapes
    out = math.prod(out_shape[1:])
    if isinstance(module, nn.Conv2d):
        return out * (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return out * module.in_features


def collect_pruning_info(graph: MaseGraph) -> dict:
    """``{"layers": {node name: entry}, "totals": {...}}`` for every Conv2d/Linear node (see module doc)."""
    nodes = graph.layer_nodes()
    shapes = layer_shapes(graph, nodes)
    layers: dict[str, dict] = {}
    totals = {"params": 0, "nonzero_params": 0, "weights": 0, "nonzero_weights": 0,
              "macs_dense": 0 if shapes else None, "macs_effective": 0.0 if shapes else None}
    for node in nodes:
        module = graph.module_of(node)
        with torch.no_grad():
            weight = module.weight.detach()
            bias = module.bias.detach() if module.bias is not None else torch.zeros(0)
        nonzero_w = int(torch.count_nonzero(weight))
        source = node.args[0] if node.args else None
        act = graph.module_of(source) if isinstance(source, fx.Node) else None
        act = act if isinstance(act, ActivationPrune) else None
        in_shape = shapes[node.name][0] if node.name in shapes else None
        entry = {
            "kind": "conv2d" if isinstance(module, nn.Conv2d) else "linear",
            "module": node.target,
            "weight": _weight_entry(module),
            "activation": _activation_entry(act, in_shape) if act is not None else None,
            "params": weight.numel() + bias.numel(),
            "nonzero_params": nonzero_w + int(torch.count_nonzero(bias)),
        }
        dense = _macs(module, shapes.get(node.name))
        input_density = 1.0 - entry["activation"]["achieved"] if entry["activation"] else 1.0
        entry["macs_dense"] = dense
        entry["macs_effective"] = None if dense is None else dense * (nonzero_w / weight.numel()) * input_density
        layers[node.name] = entry
        totals["params"] += entry["params"]
        totals["nonzero_params"] += entry["nonzero_params"]
        totals["weights"] += weight.numel()
        totals["nonzero_weights"] += nonzero_w
        if dense is not None and totals["macs_dense"] is not None:
            totals["macs_dense"] += dense
            totals["macs_effective"] += entry["macs_effective"]
    totals["weight_sparsity"] = 1.0 - totals["nonzero_weights"] / totals["weights"] if totals["weights"] else 0.0
    return {"layers": layers, "totals": totals}


def add_pruning_metadata(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Write each Conv2d/Linear node's pruning figures to ``graph.meta(node)["software"]["prune"]``.

    Returns ``(graph, info)`` with ``info`` = `collect_pruning_info` (JSON-serialisable).
    """
    from_dict(PruningMetadataArgs, pass_args or {}, "passes.add_pruning_metadata")
    info = collect_pruning_info(graph)
    by_name = {n.name: n for n in graph.nodes}
    for name, entry in info["layers"].items():
        graph.meta(by_name[name]).setdefault("software", {})["prune"] = entry
    return graph, info
