"""Weight pruning: one table's scores turned into `WeightMask` parametrizations on its targets.

Exactness: each pruned weight loses exactly ``round(sparsity * n)`` groups of
its ``n`` (``global``: that many over all pruned weights together), ties broken
by position (see `machop.nn.ranking`).

Coupled channels (``group = true``, the default for channelwise weights):
layers whose output channels are one channel of the network - the writers
of a residual stream (the ``add`` of a block's last convolution and its
shortcut), a depthwise convolution and the layer feeding it - are found by
following channels through the graph (`analysis.channels.couplings`, the
shrink pass's analysis). Each coupled channel is scored by the mean of its
layers' scores for it and ``round(s * n)`` of the ``n`` coupled channels are
pruned in every one of those layers, ``s`` the smallest of their
sparsities: the same channels go everywhere, so `shrink` can remove them
(Torch-Pruning's grouped importance). When a layer writing a coupled
channel is not pruned by the table (excluded, not selected, sparsity 0,
the output layer), the others are pruned each alone and ``info["weight"]
["coupled"]`` says so. ``group = false`` prunes every layer alone
(``torch.nn.utils.prune.ln_structured`` per layer).

Iterative pruning composes: scores are computed on the *effective* weights
(masks and other parametrizations applied) and the new mask is ANDed into the
existing one. Groups an earlier pass already pruned rank lowest, so they
count towards the new target: pruning a 50%-pruned layer to 0.8 prunes 30%
more; asking 0.3 of it changes nothing (a mask never revives a weight, the
achieved sparsity stays 0.5). The same holds for activations (see
`activation_methods`).

All scores of one pass are computed from the weights as they were when the
pass started, then the masks are applied, so the result does not depend on
layer order (``*-norm-multi`` reads the next layers' weights).

Gradual pruning (`gradual`) runs this same `prune_weights` at each update
of its schedule.
"""

from __future__ import annotations

import logging

import torch

from machop.ir.graph import MaseGraph
from machop.nn import apply_mask, get_mask, lowest_k_mask, prune_count
from machop.passes.graph.analysis.channels import Analysis, Coupling, couplings, effective_weights, follow, reader_weights

from .args import WeightPruneArgs
from .targets import Target, active
from .weight_methods import NEEDS_DOWNSTREAM, WEIGHT_METHODS, WeightLayer, expand_keep, group_view

logger = logging.getLogger(__name__)


def prune_weights(graph: MaseGraph, args: WeightPruneArgs, targets: list[Target], seed: int) -> dict:
    """Mask the weights of ``targets`` (`select`'s, with their sparsities) as ``args`` says.

    Returns the table's summary: its `how`, ``sparsity``, the ``layers``
    pruned, the ``achieved`` sparsity over them and, where coupled channels
    were pruned together or could not be, ``coupled``.
    """
    scorer = WEIGHT_METHODS[(args.scope, args.granularity)][args.method]
    generator = torch.Generator().manual_seed(seed)
    targets = active(targets, args)
    grouped = args.scope == "local" and args.granularity == "channelwise" and args.group is not False
    followed = _follow(graph) if targets and (grouped or args.method in NEEDS_DOWNSTREAM) else None

    def groups_of(t: Target, w: torch.Tensor) -> torch.Tensor:
        return group_view(w, args.granularity, t.kind.channel_dim)

    def scores_of(t: Target) -> torch.Tensor:
        w = t.weight.value()
        downstream = None
        if args.method in NEEDS_DOWNSTREAM:
            if followed is not None and t.kind.channel_dim == 0 and len(t.weight.sites) == 1:
                downstream = reader_weights(*followed, t.weight.qualname)
            if downstream is None:
                logger.info("%s: the layers reading its channels cannot be followed; %s uses the filter norm only",
                            t.name, args.method)
        groups = groups_of(t, w)
        scores = scorer(groups, WeightLayer(t.name, w, generator, downstream)).float()
        old = get_mask(t.weight.module, t.weight.tensor_name)
        if old is not None:  # groups pruned earlier rank lowest: they count towards the target
            scores = scores.masked_fill(~groups_of(t, old).any(dim=1), float("-inf"))
        return scores

    keeps: list[torch.Tensor] = []
    coupled: list[dict] = []
    if args.scope == "local":
        scores = {t.name: scores_of(t) for t in targets}
        together: dict[str, torch.Tensor] = {}
        if grouped and followed is not None:
            together, coupled = _coupled_keeps(graph, couplings(followed[0]), targets, scores)
        for t in targets:
            if t.name not in together:
                together[t.name] = lowest_k_mask(scores[t.name], prune_count(t.sparsity, scores[t.name].numel()))
            keeps.append(together[t.name])
    elif targets:
        # one ranking over all weights; scores written into one buffer to avoid a second copy
        sizes = [groups_of(t, t.weight.stored()).shape[0] for t in targets]
        device = targets[0].weight.stored().device
        buffer = torch.empty(sum(sizes), device=device)
        offset = 0
        for t, size in zip(targets, sizes):
            buffer[offset:offset + size] = scores_of(t).to(device)
            offset += size
        keep = lowest_k_mask(buffer, prune_count(args.sparsity, buffer.numel()))
        del buffer
        keeps = [k.clone() for k in keep.split(sizes)]

    for t, keep in zip(targets, keeps):
        mask = expand_keep(keep, t.weight.stored().shape, args.granularity, t.kind.channel_dim)
        target = t.sparsity if args.scope == "local" else args.sparsity
        apply_mask(t.weight, mask, how={**args.how(), "target": target})
    total = sum(t.weight.stored().numel() for t in targets)
    return {**args.how(), "sparsity": args.sparsity, "layers": [t.name for t in targets],
            "achieved": pruned_weights(targets) / total if total else 0.0, **({"coupled": coupled} if coupled else {})}


def pruned_weights(targets: list[Target]) -> int:
    """How many weights of ``targets`` their masks prune now (all masked: `prune_weights` has run on them)."""
    return sum(int((~get_mask(t.weight.module, t.weight.tensor_name)).sum()) for t in targets)


def _follow(graph: MaseGraph) -> tuple[Analysis, dict[str, torch.Tensor]] | None:
    """The channel analysis of the weights as the pass starts, and those weights: what coupled channels and
    ``*-norm-multi``'s readers (`analysis.channels.reader_weights`) are read from; None without an input shape."""
    weights = effective_weights(graph.model)
    try:
        return follow(graph, weights), weights
    except ValueError as e:  # no input shape to follow channels with
        logger.warning("channelwise pruning: channels are not followed (coupled channels are pruned alone, "
                       "*-norm-multi uses the filter norm only): %s", e)
        return None


def _coupled_keeps(graph: MaseGraph, groups: list[Coupling], targets: list[Target], scores: dict[str, torch.Tensor]
                   ) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Keep vectors of the targets whose output channels are coupled (``groups``) to other layers', chosen together.

    Returns ``({target name: keep}, report)``; targets not in the dict are
    pruned alone. See the module doc.
    """
    by_module = {t.weight.qualname: t for t in targets
                 if t.kind.channel_dim == 0 and t.weight.tensor_name == "weight" and len(t.weight.sites) == 1}
    names = graph.node_names()
    keeps: dict[str, torch.Tensor] = {}
    report = []
    for g in groups:
        layers = [names.get(q, q) for q in g.layers]
        if not any(q in by_module for q in g.layers):
            continue
        missing = [names.get(q, q) for q in g.layers if q not in by_module]
        if missing:
            report.append({"layers": layers, "alone": f"{', '.join(missing)} not pruned by this table"})
            logger.info("%s are coupled, but %s not pruned by this table: each is pruned alone",
                        ", ".join(layers), ", ".join(missing))
            continue
        keep, sparsity, k = _keep_units(g, by_module, scores)
        for q in g.layers:
            keeps[by_module[q].name] = keep[q]
        report.append({"layers": layers, "channels": len(g.units), "pruned": k, "sparsity": sparsity})
    return keeps, report


def _keep_units(g: Coupling, by_module: dict[str, Target], scores: dict[str, torch.Tensor]
                ) -> tuple[dict[str, torch.Tensor], float, int]:
    """Each coupled channel scored by the mean of its layers' scores; the lowest ``round(s * n)`` go everywhere."""
    first = scores[by_module[g.layers[0]].name]
    unit_of = {q: torch.empty(scores[by_module[q].name].numel(), dtype=torch.long) for q in g.layers}
    for u, members in enumerate(g.units):
        for q, c in members:
            unit_of[q][c] = u
    total = torch.zeros(len(g.units), dtype=first.dtype, device=first.device)
    count = torch.zeros_like(total)
    for q, index in unit_of.items():
        index = index.to(first.device)
        total.index_add_(0, index, scores[by_module[q].name].to(total))
        count.index_add_(0, index, torch.ones_like(index, dtype=total.dtype))
    sparsity = min(by_module[q].sparsity for q in g.layers)
    k = prune_count(sparsity, len(g.units))
    keep = lowest_k_mask(total / count, k)
    return {q: keep[index.to(keep.device)] for q, index in unit_of.items()}, sparsity, k
