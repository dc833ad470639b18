"""``summarize_quantization``: per-layer arithmetic, bits, distinct values and storage size.

Storage model (bits), per compressible weight (see `machop.nn.compressible_weights`):

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

from machop.config import NoOptions, from_dict, pass_path
from machop.ir import MaseGraph
from machop.nn import FixedPoint, KMeansWeight, Weight, get_mask, quantizer_of

logger = logging.getLogger(__name__)


def count_distinct(t: torch.Tensor) -> int:
    """Number of distinct values of ``t`` (numpy's sort: much faster than ``torch.unique`` on CPU)."""
    if t.numel() == 0:
        return 0
    a = np.sort((t.float() if t.dtype == torch.bfloat16 else t).detach().reshape(-1).cpu().numpy())
    return int(np.count_nonzero(a[1:] != a[:-1])) + 1


def input_quantizer(graph: MaseGraph, node: fx.Node) -> FixedPoint | None:
    """The `FixedPoint` module inserted in front of ``node`` (on its first input), if any."""
    src = node.args[0] if node.args else None
    if isinstance(src, fx.Node):
        module = graph.module_of(src)
        if isinstance(module, FixedPoint):
            return module
    return None


def quantization_row(graph: MaseGraph, w: Weight) -> dict:
    """The summary row of one compressible weight (see the module docstring)."""
    module, name = w.module, w.tensor_name
    with torch.no_grad():
        weight = w.value()
        mask = get_mask(module, name)
        q = quantizer_of(module, name)
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
    bias = getattr(module, w.bias_name) if w.bias_name else None
    bias_q = quantizer_of(module, w.bias_name) if bias is not None else None
    bias_width = bias_q.width if isinstance(bias_q, FixedPoint) else 32
    bias_bits = bias.numel() * bias_width if bias is not None else 0
    nodes = graph.call_nodes(w.qualname)
    data_in = input_quantizer(graph, nodes[0]) if nodes else None
    fp32 = 32 * (numel + (bias.numel() if bias is not None else 0))
    size = weight_bits + bias_bits
    return {
        "name": w.name,
        "module": w.qualname,
        "tensor": name,
        "type": w.kind.name,
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
    head = (f"{'layer':<24} {'type':<15} {'arith':<8} {'bits':>4} {'distinct':>8} {'kept':>10} {'size kB':>10} "
            f"{'ratio':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<24} {r['type']:<15} {r['arithmetic']:<8} {r['bits']:>4} {r['distinct']:>8} {r['kept']:>10} "
            f"{r['size_bits'] / 8192:>10.1f} {r['compression'] or 0:>7.2f}"
        )
    t = totals(rows)
    ratio = f"{t['compression']:.2f}" if t["compression"] else "-"
    lines.append(f"{'total':<24} {'':<15} {'':<8} {'':>4} {'':>8} {t['kept']:>10} {t['size_bits'] / 8192:>10.1f} "
                 f"{ratio:>7}")
    return "\n".join(lines)


def summarize_quantization(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Describe how every compressible weight is quantized (reads the model, changes nothing but metadata).

    Returns ``info = {"layers": [row, ...], "total": {...}}`` and writes each
    row of a weight whose module has a node to ``graph.meta(node)["software"]["quantize"]``.
    Takes no options.
    """
    from_dict(NoOptions, pass_args, pass_path(graph.context.step, "passes.summarize_quantization"))
    rows = []
    by_name = {n.name: n for n in graph.nodes}
    for w in graph.weights():
        row = quantization_row(graph, w)
        if w.node is not None:
            graph.meta(by_name[w.node])["software"]["quantize"] = row
        rows.append(row)
    logger.info("quantization summary\n%s", format_table(rows))
    return graph, {"layers": rows, "total": totals(rows)}
