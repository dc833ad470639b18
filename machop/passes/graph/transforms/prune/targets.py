"""What a prune table acts on: its targets, their sparsities, and the ones it leaves alone.

Which weights: every compressible weight of the model (`machop.nn.KINDS`:
Linear, Conv1d/2d/3d, ConvTranspose, Embedding, attention projections, RNN
weights), narrowed by ``types`` and ``exclude``. A weight is named by its
fx node (``layer1_0_conv1``) or, where its module has no node of its own,
by the module's qualified name (``enc.self_attn.out_proj``), plus
``.tensor`` when it is not called ``weight`` (``lstm.weight_hh_l0``). A
config may also name a module (``layer1.0.conv1``) or any parent module
(``enc``): that selects every weight under it; the most specific name
wins. A tied weight (one parameter used by several modules) is one weight:
one mask at every site. Everything left dense is listed in ``info["dense"]``
with the reason.

Activation pruning acts on the first input of each layer node whose kind has
an input to prune (not embeddings: their inputs are token indices).

Kernelwise pruning of a weight without kernels (anything but a convolution)
and channelwise pruning of one without output channels (embeddings,
attention, RNNs) are config errors naming the weights: exclude them or
select ``types``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.fx as fx

from machop.config import ConfigError, join
from machop.ir.graph import MaseGraph
from machop.nn import LayerKind, Weight, compressed_kind, module_paths, most_specific, prune_count
from machop.passes.graph.analysis.pruning import selected_kinds

from .args import WeightPruneArgs


@dataclass
class Target:
    """What one prune table may act on: a weight, or (activations) the input of a layer node."""

    name: str
    names: set[str]  # every name that selects it (its own, its module's, the parents')
    kind: LayerKind
    weight: Weight | None = None
    node: fx.Node | None = None
    sparsity: float = 0.0
    output: bool = False  # a layer producing the model's output: its channels are the outputs
    own: frozenset[str] = frozenset()  # the names that select it alone (not its parents')


def weight_targets(graph: MaseGraph) -> list[Target]:
    """One target per compressible weight of ``graph`` (a tied weight once)."""
    nodes = {n.name: n for n in graph.nodes}
    output = {str(nodes[name].target) for name in graph.output_layers()}
    targets = []
    for w in graph.weights():
        sites = {qualname for qualname, _, _ in w.sites}
        own = frozenset({w.name, f"{w.qualname}.{w.tensor_name}", *sites} | ({w.node} if w.node else set()))
        targets.append(Target(w.name, w.ancestry(), w.kind, weight=w, output=bool(sites & output), own=own))
    return targets


def activation_targets(graph: MaseGraph) -> list[Target]:
    """One target per layer node whose kind has a prunable input."""
    out = []
    for node in graph.nodes:
        module = graph.module_of(node)
        kind = compressed_kind(module) if module is not None else None
        if kind is None or kind.input_channel_dim is None:
            continue
        out.append(Target(node.name, {node.name, *module_paths(str(node.target))}, kind, node=node))
    return out


def select(targets: list[Target], args: WeightPruneArgs, path: str) -> tuple[list[Target], list[dict]]:
    """(targets to prune with their sparsities, [{name, reason}] of those left alone).

    ConfigError for a name or type that selects nothing and for a
    granularity a selected weight has no groups for.
    """
    valid = ", ".join(t.name for t in targets) or "(none: the model has no layers machop prunes)"
    for key, names in (("exclude", args.exclude), ("sparsity", list(args.sparsity) if isinstance(args.sparsity, dict) else [])):
        unknown = [n for n in names if n != "default" and not any(n in t.names for t in targets)]
        if unknown:
            extra = " (and 'default')" if key == "sparsity" else ""
            raise ConfigError(join(path, key), f"unknown name(s) {', '.join(map(repr, unknown))}; valid names: {valid}{extra}")
    kinds = selected_kinds(args.types, {t.kind.name for t in targets}, path)
    chosen, left = [], []
    for t in targets:
        if kinds is not None and t.kind.name not in kinds:
            left.append({"name": t.name, "reason": f"type {t.kind.name} not in types"})
            continue
        if most_specific(args.exclude, t.names, t.name) is not None:
            left.append({"name": t.name, "reason": "excluded"})
            continue
        key = None
        if isinstance(args.sparsity, dict):
            key = most_specific([k for k in args.sparsity if k != "default"], t.names, t.name)
            t.sparsity = args.sparsity[key if key is not None else "default"]
        else:
            t.sparsity = args.sparsity
        if args.granularity == "channelwise" and t.output and key not in t.own:
            left.append({"name": t.name, "reason": "output layer: its channels are the model's outputs (name it in "
                                                   "the sparsity table to prune them)"})
            continue
        chosen.append(t)
    if args.granularity == "kernelwise":
        _require(chosen, lambda k: k.kernels, "kernelwise pruning prunes the kernels of convolutions", path)
    if args.granularity == "channelwise":
        _require(chosen, lambda k: k.channel_dim is not None,
                 "channelwise pruning prunes the output channels of convolution and Linear layers", path)
        for t in chosen:  # local only; an earlier mask never pruned all, so the count decides
            if t.weight is not None:
                n = t.weight.stored().shape[t.kind.channel_dim]
                refuse_all(t.name, prune_count(t.sparsity, n), n, join(path, "sparsity"))
    return chosen, left


def active(targets: list[Target], args: WeightPruneArgs) -> list[Target]:
    """The selected ``targets`` that a table actually prunes.

    Local scope: those whose own sparsity is above 0; global scope: all of
    them, unless the one sparsity is 0. The others get no mask and no module.
    """
    if args.scope == "local":
        return [t for t in targets if t.sparsity > 0]
    return list(targets) if args.sparsity > 0 else []


def refuse_all(name: str, pruned: int, n: int, path: str) -> None:
    """ConfigError if ``pruned`` is all ``n`` channels of a layer: nothing would flow through it.

    Elementwise and kernelwise pruning may empty a layer, as
    ``torch.nn.utils.prune`` may.
    """
    if n > 0 and pruned >= n:
        raise ConfigError(path, f"would prune all {n} channels of {name}, which then passes nothing on; "
                                "lower its sparsity or exclude it")


def _require(chosen: list[Target], has: Callable[[LayerKind], object], what: str, path: str) -> None:
    """ConfigError naming the chosen targets whose kind lacks what the granularity prunes (``has`` false)."""
    lacking = [t for t in chosen if not has(t.kind)]
    if lacking:
        names = ", ".join(f'"{t.name}"' for t in lacking)
        raise ConfigError(
            join(path, "granularity"),
            f"{what}; {', '.join(f'{t.name} ({t.kind.name})' for t in lacking)} have none: add them to exclude "
            f"(exclude = [{names}]), select types, or use another granularity",
        )
