"""``add_pruning_metadata``: per-layer pruning figures, in node metadata and as a JSON report.

It reads only the model (prune masks, inserted `ActivationPrune` modules,
effective weights, through `machop.nn`), so it can run any time after
pruning, also on a graph loaded from a file. Per compressible weight (see
`machop.nn.compressible_weights`) it reports, and for a weight whose module
has a node writes to ``graph.meta(node)["software"]["prune"]``:

- ``kind``: the layer kind (``conv2d``, ``linear``, ``lstm``, ...);
  ``module``: the qualified module name; ``tensor``: the tensor's name;
- ``weight`` / ``activation``: None, or ``{scope, granularity, method,
  target, achieved}``; ``achieved`` is the fraction the mask prunes (for
  activations: of each sample's input values, channel mask and per-sample
  stages together);
- ``params`` / ``nonzero_params``: weight + its bias's entries, and how
  many of the effective values are non-zero;
- ``macs_dense``: multiply-accumulates of the layer for one sample;
  ``macs_effective``: ``macs_dense × weight density × input density``, the
  weight density being the non-zero fraction of the effective weight and the
  input density ``1 - achieved`` of activation pruning (1 without). This
  counts the MACs a sparse kernel could skip if the two sparsities were
  independent; zeros in the data itself (e.g. after ReLU) are not counted.
  MACs need an input shape: ``graph.dummy_input`` or, failing that,
  ``graph.context.dataset_info``; without either, and for weights other
  than those of convolution and Linear nodes, they are None.

``totals`` sums the weights and also counts every parameter of the model
(``model_params``, ``model_nonzero_params``, ``model_sparsity``): biases,
batch norm and every other tensor, each tied tensor once. ``uncompressed``
lists every floating parameter of two or more dimensions that is not a
compressible weight, with the reason (`MaseGraph.uncompressed`).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.fx as fx

from machop.config import ConfigError, NoOptions, from_dict, join, pass_path
from machop.ir.graph import MaseGraph
from machop.nn import (
    KIND_NAMES,
    ActivationPrune,
    Weight,
    WeightMask,
    chain,
    dense_parameter_count,
    get_mask,
    macs,
    nonzero_parameter_count,
    prune_count,
)

logger = logging.getLogger(__name__)


def selected_kinds(types: list[str] | None, present: set[str], path: str) -> set[str] | None:
    """The layer kinds a table's ``types`` selects (None: all); ConfigError naming a kind the model lacks.

    ``present``: the kinds of the model's layers. Shared by every table that
    selects layers (prune, sensitivity).
    """
    if types is None:
        return None
    missing = [t for t in types if KIND_NAMES[t].name not in present]
    if missing:
        raise ConfigError(join(path, "types"), f"no {', '.join(missing)} layer in this model; "
                                               f"it has: {', '.join(sorted(present)) or 'none'}")
    return {KIND_NAMES[t].name for t in types}


def _sample_input(graph: MaseGraph) -> tuple[torch.Tensor, ...] | None:
    """One sample of each of the model's inputs."""
    if graph.dummy_inputs is not None:
        return tuple(t[:1] for t in graph.dummy_inputs)
    info = graph.context.dataset_info
    if info is not None:
        return (torch.zeros(1, info.in_channels, *info.image_size),)
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
            if isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
                self.shapes[n.name] = (tuple(args[0].shape), tuple(out.shape))
        return out


def layer_shapes(graph: MaseGraph, nodes: list[fx.Node]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Input and output shape (batch 1) of each node in ``nodes``; empty if no input shape is known."""
    x = _sample_input(graph)
    if x is None:
        logger.info("no dummy_input or dataset_info: MACs are not reported")
        return {}
    device = graph.device
    recorder = _ShapeRecorder(graph.model, {n.name for n in nodes})
    was_training = graph.model.training
    graph.model.eval()
    try:
        with torch.no_grad():
            recorder.run(*(t.to(device) for t in x))
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


def _weight_entry(w: Weight) -> dict | None:
    mask = get_mask(w.module, w.tensor_name)
    if mask is None:
        return None
    hows = [p.how for p in chain(w.module, w.tensor_name) if isinstance(p, WeightMask) and p.how]
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


def collect_pruning_info(graph: MaseGraph) -> dict:
    """``{"layers": {weight name: entry}, "totals": {...}, "uncompressed": [...]}`` (see module doc)."""
    weights = graph.weights()
    nodes = {n.name: n for n in graph.nodes}
    layer_nodes = [nodes[w.node] for w in weights if w.node is not None]
    shapes = layer_shapes(graph, layer_nodes)
    layers: dict[str, dict] = {}
    totals = {"params": 0, "nonzero_params": 0, "weights": 0, "nonzero_weights": 0,
              "macs_dense": 0 if shapes else None, "macs_effective": 0.0 if shapes else None}
    for w in weights:
        weight = w.value()
        with torch.no_grad():
            bias = getattr(w.module, w.bias_name).detach() if w.bias_name else torch.zeros(0)
        nonzero_w = int(torch.count_nonzero(weight))
        node = nodes.get(w.node) if w.node is not None else None
        source = node.args[0] if node is not None and node.args else None
        act = graph.module_of(source) if isinstance(source, fx.Node) else None
        act = act if isinstance(act, ActivationPrune) else None
        in_shape = shapes[node.name][0] if node is not None and node.name in shapes else None
        entry = {
            "kind": w.kind.name,
            "module": w.qualname,
            "tensor": w.tensor_name,
            "weight": _weight_entry(w),
            "activation": _activation_entry(act, in_shape) if act is not None else None,
            "params": weight.numel() + bias.numel(),
            "nonzero_params": nonzero_w + int(torch.count_nonzero(bias)),
        }
        dense = macs(w.module, *shapes[node.name]) if node is not None and node.name in shapes else None
        input_density = 1.0 - entry["activation"]["achieved"] if entry["activation"] else 1.0
        entry["macs_dense"] = dense
        entry["macs_effective"] = None if dense is None else dense * (nonzero_w / weight.numel()) * input_density
        layers[w.name] = entry
        totals["params"] += entry["params"]
        totals["nonzero_params"] += entry["nonzero_params"]
        totals["weights"] += weight.numel()
        totals["nonzero_weights"] += nonzero_w
        if dense is not None and totals["macs_dense"] is not None:
            totals["macs_dense"] += dense
            totals["macs_effective"] += entry["macs_effective"]
    totals["weight_sparsity"] = 1.0 - totals["nonzero_weights"] / totals["weights"] if totals["weights"] else 0.0
    totals["model_params"] = dense_parameter_count(graph.model)
    totals["model_nonzero_params"] = nonzero_parameter_count(graph.model)
    totals["model_sparsity"] = (
        1.0 - totals["model_nonzero_params"] / totals["model_params"] if totals["model_params"] else 0.0
    )
    return {"layers": layers, "totals": totals, "uncompressed": graph.uncompressed()}


def add_pruning_metadata(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Write each weight's pruning figures to its node's ``graph.meta(node)["software"]["prune"]``.

    Returns ``(graph, info)`` with ``info`` = `collect_pruning_info` (JSON-serialisable).
    """
    from_dict(NoOptions, pass_args, pass_path(graph.context.step, "passes.add_pruning_metadata"))
    info = collect_pruning_info(graph)
    by_name = {n.name: n for n in graph.nodes}
    for w in graph.weights():
        if w.node is not None:
            graph.meta(by_name[w.node]).setdefault("software", {})["prune"] = info["layers"][w.name]
    return graph, info
