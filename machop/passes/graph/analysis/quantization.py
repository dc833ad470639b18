"""``summarize_quantization``: per-layer arithmetic, bits, distinct values and storage size.

Storage model (bits), per Conv2d/Linear layer:

- ``kmeans``: ``kept * bits + 32 * 2**bits`` for the weight (a ``bits``-bit
  index per unpruned weight plus a full float32 codebook), where ``kept`` is
  the number of weights the prune mask keeps (all of them if unpruned);
- ``integer``: ``numel * weight_width`` for the weight (dense fixed point,
  pruned zeros included);
- ``none``: ``32 * numel``.

The bias adds ``numel * bias_width`` when fixed-point quantized, else
``32 * numel``. Position indices of a sparse layer and Huffman coding are
the compressed file's business, not counted here. ``fp32_size_bits`` is the
dense float32 size of the same tensors, ``compression`` their ratio.
``distinct`` counts the distinct values among the kept weights.

The rows are returned in ``info["layers"]`` and written to each node's
``graph.meta(node)["software"]["quantize"]``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.fx as fx

from machop.config import ConfigError, join
from machop.ir import MaseGraph
from machop.passes.graph.transforms.prune.masks import get_mask
from machop.passes.graph.transforms.quantize.codes import quantizer_of
from machop.passes.graph.transforms.quantize.config import op_type
from machop.passes.graph.transforms.quantize.fixed_point import FixedPoint
from machop.passes.graph.transforms.quantize.quantize import input_quantizer
from machop.passes.graph.transforms.quantize.shared_weight import KMeansWeight

logger = logging.getLogger(__name__)


def count_distinct(t: torch.Tensor) -> int:
    """Number of distinct values of ``t`` (numpy's sort: much faster than ``torch.unique`` on CPU)."""
    if t.numel() == 0:
        return 0
    a = np.sort(t.detach().reshape(-1).cpu().numpy())
    return int(np.count_nonzero(a[1:] != a[:-1])) + 1


def quantization_row(graph: MaseGraph, node: fx.Node) -> dict:
    """The summary row of one Conv2d/Linear node (see the module docstring)."""
    module = graph.module_of(node)
    with torch.no_grad():
        weight = module.weight.detach()
        mask = get_mask(module)
        q = quantizer_of(module)
        if isinstance(q, KMeansWeight):
            mask = q.mask
        kept_values = weight if mask is None or bool(mask.all()) else torch.masked_select(weight, mask)
        kept = kept_values.numel()
        distinct = count_distinct(kept_values)
    numel = weight.numel()
    if isinstance(q, KMeansWeight):
        arithmetic, bits = "kmeans", q.bits
        weight_bits = kept * bits + 32 * 2**bits
    elif isinstance(q, FixedPoint):
        arithmetic, bits = "integer", q.width
        weight_bits = numel * bits
    else:
        arithmetic, bits = "none", 32
        weight_bits = 32 * numel
    bias = module.bias
    bias_q = quantizer_of(module, "bias") if bias is not None else None
    bias_width = bias_q.width if isinstance(bias_q, FixedPoint) else 32
    bias_bits = bias.numel() * bias_width if bias is not None else 0
    data_in = input_quantizer(graph, node)
    fp32 = 32 * (numel + (bias.numel() if bias is not None else 0))
    size = weight_bits + bias_bits
    return {
        "name": node.name,
        "module": str(node.target),
        "type": op_type(module),
        "arithmetic": arithmetic,
        "bits": bits,
        "clusters": int(q.centroids.numel()) if isinstance(q, KMeansWeight) else None,
        "bias_bits": bias_width if bias is not None else None,
        "data_in_bits": data_in.width if data_in is not None else None,
        "distinct": distinct,
        "numel": numel,
        "kept": kept,
        "weight_size_bits": weight_bits,
        "bias_size_bits": bias_bits,
        "size_bits": size,
        "fp32_size_bits": fp32,
        "compression": fp32 / size if size else None,
    }


def totals(rows: list[dict]) -> dict:
    """Sums of the size columns over ``rows`` and the overall compression."""
    size = sum(r["size_bits"] for r in rows)
    fp32 = sum(r["fp32_size_bits"] for r in rows)
    return {
        "layers": len(rows),
        "numel": sum(r["numel"] for r in rows),
        "kept": sum(r["kept"] for r in rows),
        "size_bits": size,
        "fp32_size_bits": fp32,
        "compression": fp32 / size if size else None,
    }


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table (for logs and notebooks)."""
    head = (f"{'layer':<24} {'type':<7} {'arith':<8} {'bits':>4} {'distinct':>8} {'kept':>10} {'size kB':>10} "
            f"{'ratio':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<24} {r['type']:<7} {r['arithmetic']:<8} {r['bits']:>4} {r['distinct']:>8} {r['kept']:>10} "
            f"{r['size_bits'] / 8192:>10.1f} {r['compression'] or 0:>7.2f}"
        )
    t = totals(rows)
    ratio = f"{t['compression']:.2f}" if t["compression"] else "-"
    lines.append(f"{'total':<24} {'':<7} {'':<8} {'':>4} {'':>8} {t['kept']:>10} {t['size_bits'] / 8192:>10.1f} "
                 f"{ratio:>7}")
    return "\n".join(lines)


def summarize_quantization(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Describe how every Conv2d/Linear layer is quantized (reads the model, changes nothing but metadata).

    Returns ``info = {"layers": [row, ...], "total": {...}}`` and writes each
    row to ``graph.meta(node)["software"]["quantize"]``. Takes no options.
    """
    if pass_args:
        step = getattr(graph.context, "step", None) or "summarize_quantization"
        raise ConfigError(join(f"passes.{step}", next(iter(pass_args))), "unknown key; this pass takes no options")
    rows = []
    for node in graph.layer_nodes():
        row = quantization_row(graph, node)
        graph.meta(node)["software"]["quantize"] = row
        rows.append(row)
    logger.info("quantization summary\n%s", format_table(rows))
    return graph, {"layers": rows, "total": totals(rows)}
