"""`prune_remove_pass`: bake prune masks into plain weights and take the inserted activation modules out."""

from __future__ import annotations

import logging

import torch.fx as fx

from machop.config import NoOptions, from_dict, pass_path
from machop.ir.graph import MaseGraph
from machop.nn import (ActivationPrune, Weight, WeightMask, apply_mask, bake, chain, get_mask, is_rebuildable, kind_of,
                       reads_channels)

logger = logging.getLogger(__name__)


def prune_remove_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Bake prune masks into plain weights and remove inserted `ActivationPrune` modules.

    Static activation channel masks are folded into the next layer's weight
    (zeroing input channel ``c`` of a convolution/Linear is the same as
    zeroing its weights that read ``c``), so the model computes the same
    function. Per-sample elementwise activation stages depend on the data and
    cannot be baked: they are dropped, with a warning. A masked weight that
    also carries weight sharing or fixed point (a quantized layer) is baked
    whole: it becomes a plain tensor of exactly the values it computed
    (``centroids[index] * mask``, the fixed-point grid), so the model's
    outputs do not change, but its codebook is gone: a later Huffman step
    codes its values as floats (quantize again to share weights).
    ``info["baked_quantized"]`` names those weights. A parametrization
    machop did not add is refused, before anything changes. A tied weight
    stays one parameter. (`machop.plain_model` returns your own class with every
    weight baked likewise, leaving the graph as it is.)
    """
    from_dict(NoOptions, pass_args, pass_path(graph.context.step, "passes.prune_remove"))
    act_nodes = [n for n in graph.nodes if n.op == "call_module" and isinstance(graph.module_of(n), ActivationPrune)]
    weights = {(w.qualname, w.tensor_name): w for w in graph.weights()}

    def foldable(node: fx.Node) -> Weight | None:
        (user,) = node.users
        layer = graph.module_of(user)
        if layer is not None and reads_channels(layer) and user.args[0] is node:
            return weights.get((str(user.target), "weight"))
        return None

    def quantized(w: Weight) -> list[str]:
        return [type(p).__name__ for p in chain(w.module, w.tensor_name) if not isinstance(p, WeightMask)]

    def foreign(w: Weight) -> list[str]:
        return [type(p).__name__ for p in chain(w.module, w.tensor_name) if not is_rebuildable(p)]

    for w in weights.values():  # before anything changes
        if get_mask(w.module, w.tensor_name) is not None and foreign(w):
            raise RuntimeError(f"cannot bake the prune mask of {w.name}: its weight also has {', '.join(foreign(w))}, "
                               "a parametrization machop did not add; remove it first, or keep the masks")

    folded = dropped = 0
    for node in act_nodes:
        module = graph.module_of(node)
        if module.channel_mask is not None:
            w = foldable(node)
            if w is not None:
                shape = w.stored().shape
                view = [1] * len(shape)
                view[kind_of(w.module).in_dim] = -1
                apply_mask(w, module.channel_mask.view(view).expand(shape).clone())
                folded += 1
            else:
                logger.warning("%s: its channel mask cannot be folded into a weight; removed", node.name)
        if module.stages:
            logger.warning("%s: per-sample activation pruning cannot be baked into weights; removed", node.name)
            dropped += 1
        graph.remove_module_node(node)

    baked, baked_quantized = 0, {}
    for w in weights.values():
        if get_mask(w.module, w.tensor_name) is not None:
            if quantized(w):
                baked_quantized[w.name] = quantized(w)
            bake(w)
            baked += 1
    if baked_quantized:
        logger.info("prune_remove: baked with their quantizers (now plain values, no codebook): %s",
                    ", ".join(f"{k} ({'+'.join(v)})" for k, v in baked_quantized.items()))
    info = {"baked_weight_masks": baked, "folded_channel_masks": folded, "dropped_activation_stages": dropped,
            "baked_quantized": baked_quantized}
    logger.info("prune_remove: %s", info)
    return graph, info
