"""The quantize pass: fixed point (``integer``) or k-means weight sharing (``kmeans``) per layer.

Every Conv2d and Linear node the config selects is quantized in place:

- ``integer``: `FixedPoint` parametrizations on ``weight`` and ``bias``
  (after any prune mask, so zeros stay zero) and a `FixedPoint` module
  inserted in the fx graph in front of the layer for its input;
- ``kmeans``: a `KMeansWeight` parametrization on ``weight`` (after any
  prune mask) holding the centroids (trainable), the cluster index and the
  prune mask (or all True). The original weight stays underneath, frozen.

A layer is quantized once: selecting an already quantized layer is an
error (a later pass never silently undoes an earlier one). The arguments
are validated, and every key is checked against the graph, before anything
changes.
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from machop.config import ConfigError, join
from machop.ir import MaseGraph
from machop.passes.graph.transforms.prune.masks import get_mask

from .codes import quantizer_of
from .config import IntegerConfig, KMeansConfig, LayerConfig, QuantizeArgs, op_type, parse_quantize_args
from .fixed_point import FixedPoint
from .kmeans import kmeans_1d
from .shared_weight import KMeansWeight, index_dtype

logger = logging.getLogger(__name__)


def select_layers(graph: MaseGraph, args: QuantizeArgs) -> list[tuple[fx.Node, LayerConfig]]:
    """Each Conv2d/Linear node with the config that applies to it (``default`` when no key does).

    Raises `ConfigError` for a key that selects no node, listing the valid keys.
    """
    nodes = graph.layer_nodes()
    patterns = args.patterns()

    def matches(key: str, node: fx.Node) -> bool:
        if args.by == "type":
            return op_type(graph.module_of(node)) == key
        if args.by == "name":
            return node.name == key
        return patterns[key].fullmatch(node.name) is not None

    def key_of(node: fx.Node) -> str | None:  # the first key in file order
        return next((k for k in args.rules if matches(k, node)), None)

    for key in args.rules:
        if not any(matches(key, n) for n in nodes):
            if args.by == "type":
                valid = f"valid types: {', '.join(sorted({op_type(graph.module_of(n)) for n in nodes})) or 'none'}"
            else:
                valid = f"valid names: {', '.join(n.name for n in nodes) or 'none'}"
            raise ConfigError(join(args.path, key), f"matches no Conv2d/Linear node; {valid}")
    plan, used = [], set()
    for node in nodes:
        key = key_of(node)
        used.add(key)
        plan.append((node, args.rules[key] if key is not None else args.default))
    for key in args.rules:
        if key not in used:  # regex_name only: every node it matches matched an earlier key
            logger.warning("%s: every node it matches is taken by an earlier key", join(args.path, key))
    return plan


def input_quantizer(graph: MaseGraph, node: fx.Node) -> FixedPoint | None:
    """The `FixedPoint` module inserted in front of ``node`` (on its first input), if any."""
    src = node.args[0] if node.args else None
    if isinstance(src, fx.Node):
        module = graph.module_of(src)
        if isinstance(module, FixedPoint):
            return module
    return None


def _check_not_quantized(graph: MaseGraph, node: fx.Node) -> None:
    module = graph.module_of(node)
    for name in ("weight", "bias"):
        if getattr(module, name, None) is not None and quantizer_of(module, name) is not None:
            raise ValueError(f"layer {node.name} is already quantized ({name}); a layer can be quantized only once")
    if input_quantizer(graph, node) is not None:
        raise ValueError(f"layer {node.name} already has an input quantizer; a layer can be quantized only once")


def quantize_integer(graph: MaseGraph, node: fx.Node, cfg: IntegerConfig) -> None:
    """Fixed point on the layer's weight, bias and input (those whose widths are not "NA")."""
    module = graph.module_of(node)
    weight_q = FixedPoint(cfg.weight_width, cfg.weight_frac_width)
    parametrize.register_parametrization(module, "weight", weight_q, unsafe=True)
    if module.bias is not None and cfg.bias_width is not None:
        bias_q = FixedPoint(cfg.bias_width, cfg.bias_frac_width)
        parametrize.register_parametrization(module, "bias", bias_q, unsafe=True)
    if cfg.data_in_width is not None:
        input_q = FixedPoint(cfg.data_in_width, cfg.data_in_frac_width)
        graph.insert_before(node, 0, f"{node.name}_data_in_quantizer", input_q)


def quantize_kmeans(module: nn.Module, bits: int, cfg: KMeansConfig, generator: torch.Generator | None = None) -> dict:
    """Share the layer's kept weights among at most ``2**bits`` centroids; returns clustering figures.

    The weights the prune mask keeps (all, if unpruned: exact zeros are then
    ordinary values) are clustered; pruned weights stay exactly zero.
    """
    with torch.no_grad():
        weight = module.weight.detach()
        mask = get_mask(module)
        values = weight.reshape(-1) if mask is None else torch.masked_select(weight, mask)
        result = kmeans_1d(values, 2**bits, cfg.init, cfg.max_iter, cfg.tol, generator)
        centroids = result.centroids.to(torch.float32)
        if centroids.numel() == 0:  # fully pruned: one (unused) centroid keeps the indexing valid
            centroids = torch.zeros(1, dtype=torch.float32, device=weight.device)
        labels = result.labels.to(index_dtype(centroids.numel()))
        if mask is None:
            mask = torch.ones_like(weight, dtype=torch.bool)
            index = labels.view(weight.shape)
        else:
            index = torch.zeros(weight.shape, dtype=labels.dtype, device=weight.device).masked_scatter_(mask, labels)
    parametrize.register_parametrization(module, "weight", KMeansWeight(centroids, index, mask, bits), unsafe=True)
    module.parametrizations.weight.original.requires_grad_(False)
    return {"n_iter": result.n_iter, "converged": result.converged, "sse": result.sse, "relocation": result.relocation}


def quantize_transform_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Quantize the Conv2d/Linear layers ``[passes.quantize]`` selects (see `config` for the table).

    Returns ``info = {"by", "layers": [row, ...], "skipped": [names], "total"}``,
    one row per quantized layer (see `summarize_quantization` for the
    columns; k-means rows add ``n_iter``, ``converged``, ``sse`` and ``relocation``), also
    written to ``graph.meta(node)["software"]["quantize"]``.
    """
    from machop.passes.graph.analysis.quantization import quantization_row, totals

    step = getattr(graph.context, "step", None)  # the TOML label, when run by `ch transform`
    args = parse_quantize_args(pass_args, f"passes.{step}" if step else "passes.quantize")
    plan = select_layers(graph, args)
    for node, cfg in plan:
        if cfg is not None:
            _check_not_quantized(graph, node)
    generator = torch.Generator().manual_seed(int(graph.context.seed))
    rows, skipped = [], []
    for node, cfg in plan:
        if cfg is None:
            skipped.append(node.name)
            continue
        module = graph.module_of(node)
        extra = {}
        if isinstance(cfg, IntegerConfig):
            quantize_integer(graph, node, cfg)
        else:
            extra = quantize_kmeans(module, cfg.bits_for(op_type(module)), cfg, generator)
        row = quantization_row(graph, node)
        graph.meta(node)["software"]["quantize"] = row
        rows.append({**row, **extra})
        logger.info("quantized %s: %s %d bits, %d distinct values, %.1f kB", node.name, row["arithmetic"],
                    row["bits"], row["distinct"], row["size_bits"] / 8192)
    return graph, {"by": args.by, "layers": rows, "skipped": skipped, "total": totals(rows)}
