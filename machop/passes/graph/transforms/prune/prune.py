"""The prune pass (`prune_transform_pass`) and the mask-baking pass (`prune_remove_pass`).

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

Kernelwise pruning of a weight without kernels (anything but a convolution)
and channelwise pruning of one without output channels (embeddings,
attention, RNNs) are config errors naming the weights: exclude them or
select ``types``.

All scores of one pass are computed from the weights as they were when the
pass started, then the masks are applied, so the result does not depend on
layer order (``*-norm-multi`` reads the next layers' weights).

Gradual pruning (a ``gradual`` table, see `gradual`) trains the model and
runs the same weight pruning (`_prune_weights`) at each update of its
schedule, to each weight's sparsity of that moment.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn

from machop.config import ConfigError, NoOptions, from_dict, join, pass_path
from machop.ir.graph import MaseGraph
from machop.nn import (
    ActivationPrune,
    KMeansWeight,
    LayerKind,
    Weight,
    WeightMask,
    apply_mask,
    bake,
    chain,
    get_mask,
    kind_of,
    lowest_k_mask,
    module_paths,
    most_specific,
    prune_count,
    quantizer_of,
)
from machop.passes.graph.analysis.channels import Coupling, couplings, follow
from machop.passes.graph.analysis.pruning import add_pruning_metadata, selected_kinds
from machop.training import calibration_batch, check_accelerator

from .activation_methods import ACTIVATION_METHODS, MagnitudeSample, allocate_global
from .args import AUTO, ActivationPruneArgs, PruneArgs, WeightPruneArgs, parse_prune_args
from .auto import resolve_auto
from .gradual import prune_while_training
from .weight_methods import NEEDS_DOWNSTREAM, WEIGHT_METHODS, WeightLayer, downstream_weights, expand_keep, group_view

logger = logging.getLogger(__name__)

POOLED_ACTIVATION_SAMPLES = 1 << 21  # values pooled for the global activation threshold
CALIBRATION_CHUNK = 64  # samples per forward during calibration


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
        kind = kind_of(module) if module is not None else None
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
                _refuse_all(t.name, prune_count(t.sparsity, n), n, join(path, "sparsity"))
    return chosen, left


def _refuse_all(name: str, pruned: int, n: int, path: str) -> None:
    """ConfigError if ``pruned`` is all ``n`` channels of a layer: nothing would flow through it.

    Elementwise and kernelwise pruning may empty a layer, as
    ``torch.nn.utils.prune`` may.
    """
    if n > 0 and pruned >= n:
        raise ConfigError(path, f"would prune all {n} channels of {name}, which then passes nothing on; "
                                "lower its sparsity or exclude it")


def _require(chosen: list[Target], has, what: str, path: str) -> None:
    lacking = [t for t in chosen if not has(t.kind)]
    if lacking:
        names = ", ".join(f'"{t.name}"' for t in lacking)
        raise ConfigError(
            join(path, "granularity"),
            f"{what}; {', '.join(f'{t.name} ({t.kind.name})' for t in lacking)} have none: add them to exclude "
            f"(exclude = [{names}]), select types, or use another granularity",
        )


def check_prune_args(graph: MaseGraph, args: PruneArgs, path: str, earlier: list[str] = ()) -> None:
    """Check a parsed prune table against ``graph`` (names, types, granularities) without changing it."""
    if args.weight is not None:
        select(weight_targets(graph), args.weight, join(path, "weight"))
    if args.activation is not None:
        select(activation_targets(graph), args.activation, join(path, "activation"))
    if args.gradual is not None:
        _check_gradual(graph, args, path)


def _check_gradual(graph: MaseGraph, args: PruneArgs, path: str) -> None:
    """The ramp fits the training's epochs and this machine can run its trainer."""
    gpath = join(path, "gradual")
    s = args.gradual.settings(graph.context.training, gpath)
    args.gradual.check_fits(s, gpath)
    check_accelerator(s, join(gpath, "trainer"))


# --------------------------------------------------------------------------- weights


def _prune_weights(graph: MaseGraph, args: WeightPruneArgs, targets: list[Target], seed: int) -> dict:
    scorer = WEIGHT_METHODS[(args.scope, args.granularity)][args.method]
    generator = torch.Generator().manual_seed(seed)
    modules = graph.modules()
    nodes = {n.name: n for n in graph.nodes}
    if args.scope == "local":
        targets = [t for t in targets if t.sparsity > 0]
    elif args.sparsity == 0:
        targets = []

    def groups_of(t: Target, w: torch.Tensor) -> torch.Tensor:
        return group_view(w, args.granularity, t.kind.channel_dim)

    def scores_of(t: Target) -> torch.Tensor:
        w = t.weight.value()
        downstream = None
        if args.method in NEEDS_DOWNSTREAM:
            node = nodes.get(t.weight.node) if t.kind.channel_dim == 0 else None
            channels = w.shape[0]
            downstream = downstream_weights(node, modules, channels) if node is not None else None
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
        if args.granularity == "channelwise" and args.group is not False and targets:
            together, coupled = _coupled_keeps(graph, targets, scores)
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
    pruned = sum(int((~get_mask(t.weight.module, t.weight.tensor_name)).sum()) for t in targets)
    total = sum(t.weight.stored().numel() for t in targets)
    return {**args.how(), "sparsity": args.sparsity, "layers": [t.name for t in targets],
            "achieved": pruned / total if total else 0.0, **({"coupled": coupled} if coupled else {})}


def _coupled_keeps(graph: MaseGraph, targets: list[Target], scores: dict[str, torch.Tensor]
                   ) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Keep vectors of the targets whose output channels are coupled to other layers', chosen together.

    Returns ``({target name: keep}, report)``; targets not in the dict are
    pruned alone. See the module doc.
    """
    try:
        groups = couplings(follow(graph))
    except ValueError as e:  # no input shape to follow channels with
        logger.warning("channelwise pruning: coupled channels are not pruned together: %s", e)
        return {}, []
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


# --------------------------------------------------------------------------- activations


class _Watcher(fx.Interpreter):
    """Runs the graph and hands the first input of watched nodes to their calibrators."""

    def __init__(self, module: fx.GraphModule, watch: dict[str, tuple[object, int]]):
        super().__init__(module)
        self.watch = watch

    def run_node(self, n: fx.Node):
        if n.name in self.watch:
            args, _ = self.fetch_args_kwargs_from_env(n)
            calibrator, channel_dim = self.watch[n.name]
            calibrator.update(args[0], channel_dim)
        return super().run_node(n)


def _calibrate(graph: MaseGraph, targets: list[Target], calibrators: dict[str, object], samples: int) -> None:
    x = calibration_batch(graph.context.require_data("prune"), samples)
    watch = {t.name: (calibrators[t.name], t.kind.input_channel_dim) for t in targets}
    device = graph.device
    was_training = graph.model.training
    graph.model.eval()
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], CALIBRATION_CHUNK):
                _Watcher(graph.model, watch).run(x[i:i + CALIBRATION_CHUNK].to(device))
    finally:
        graph.model.train(was_training)


def _activation_module(graph: MaseGraph, t: Target) -> ActivationPrune | None:
    """The `ActivationPrune` in front of ``t``'s node (inserted now if there is none)."""
    source = t.node.args[0] if t.node.args else None
    if not isinstance(source, fx.Node):
        logger.info("%s: its input is not a graph value; activation pruning skips it", t.name)
        return None
    if source.op == "call_module" and isinstance(graph.module_of(source), ActivationPrune) and len(source.users) == 1:
        return graph.module_of(source)
    name, i = f"{t.name}_act_prune", 1
    existing = graph.modules()
    while name in existing:
        name, i = f"{t.name}_act_prune_{i}", i + 1
    module = ActivationPrune(channel_dim=t.kind.input_channel_dim).to(graph.device)
    graph.insert_before(t.node, 0, name, module)
    return module


def _prune_activations(graph: MaseGraph, args: ActivationPruneArgs, targets: list[Target], seed: int) -> dict:
    method = ACTIVATION_METHODS[(args.scope, args.granularity)][args.method]
    if args.scope == "local":
        targets = [t for t in targets if t.sparsity > 0]
    elif args.sparsity == 0:
        targets = []
    how = args.how()
    summary = {**how, "sparsity": args.sparsity, "layers": [t.name for t in targets]}
    if not targets:
        return summary

    calibrators: dict[str, object] = {}
    if method.needs_data:
        if args.scope == "global":
            budget = max(16, POOLED_ACTIVATION_SAMPLES // (args.calibration_samples * len(targets)))
            calibrators = {t.name: MagnitudeSample(budget) for t in targets}
        else:
            calibrators = {t.name: method.calibrator() for t in targets}
        _calibrate(graph, targets, calibrators, args.calibration_samples)  # on the model as it is (earlier masks on)

    if args.scope == "global":
        counts = allocate_global([calibrators[t.name] for t in targets], args.sparsity)
        for t, k in zip(targets, counts):
            n = calibrators[t.name].numel
            module = _activation_module(graph, t)
            if module is not None:
                module.stages.append({**how, "target": args.sparsity, "rank": method.rank, "sparsity": k / n})
        return summary

    if method.rank is None:  # channel masks: an earlier mask never pruned all, so k decides
        path = pass_path(graph.context.step, "passes.prune") + ".activation.sparsity"
        for t in targets:
            channels = calibrators[t.name].channels
            _refuse_all(f"the input of {t.name}", prune_count(t.sparsity, channels), channels, path)
    for index, t in enumerate(targets):
        module = _activation_module(graph, t)
        if module is None:
            continue
        if method.rank is not None:  # per-sample elementwise stage
            module.stages.append(
                {**how, "target": t.sparsity, "rank": method.rank, "sparsity": t.sparsity, "seed": seed + index}
            )
            continue
        calibrator = calibrators[t.name]
        channels = calibrator.channels
        pruned = torch.zeros(channels, dtype=torch.bool)
        if module.channel_mask is not None:
            pruned = ~module.channel_mask.cpu()
        k = prune_count(t.sparsity, channels)
        scores = calibrator.scores(pruned, k).masked_fill(pruned, float("-inf"))
        keep = lowest_k_mask(scores, k)
        module.add_channel_mask(keep.to(graph.device), {**how, "target": t.sparsity})
    return summary


# --------------------------------------------------------------------------- passes


def prune_transform_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Prune weights and/or activations of every layer machop compresses (see `args` for the config).

    Weights get a `WeightMask` parametrization (masks in ``state_dict``);
    activations an `ActivationPrune` module inserted in front of the layer.
    With ``remove = true`` the masks are then baked in (`prune_remove_pass`).

    Returns ``(graph, info)``; ``info`` has the config summary per kind
    (``weight``/``activation``: scope, granularity, method, sparsity, layers,
    achieved, and ``dense``: each weight or layer left alone, with the
    reason) and, per weight, what `add_pruning_metadata` writes into node
    metadata (kind, method, target and achieved sparsity, non-zero
    parameters, dense and effective MACs) with totals over every parameter.

    With a ``gradual`` table the weights are pruned while the model trains
    (AGP, see `gradual`); ``info`` then also has the training figures
    (``val_acc``, ``val_loss``, ``best_val_acc``, ``epochs``, ``checkpoint``,
    and ``test_acc``, ``test_loss`` unless ``test = false``) and
    ``gradual``: the schedule in optimizer steps and its updates.

    With ``sparsity = "auto"`` the per-layer sparsities are chosen first
    (see `auto`); ``info`` adds ``sensitivity``, ``allocation`` and ``table``.
    """
    path = pass_path(graph.context.step, "passes.prune")
    args: PruneArgs = parse_prune_args(pass_args, path)
    weights, weights_left = select(weight_targets(graph), args.weight, join(path, "weight")) if args.weight else ([], [])
    acts, acts_left = (
        select(activation_targets(graph), args.activation, join(path, "activation")) if args.activation else ([], [])
    )
    if args.activation is not None and _activation_needs_data(args.activation):
        graph.context.require_data("prune")  # fail before changing anything
    if args.gradual is not None:
        graph.context.require_data("prune")
        _check_gradual(graph, args, path)
    shared = [t.name for t in weights if isinstance(quantizer_of(t.weight.module, t.weight.tensor_name), KMeansWeight)]
    if shared:  # its mask lives in the codebook parametrization: a new WeightMask would not reach it
        raise ValueError(f"cannot prune weights of k-means quantized layer(s) {', '.join(shared)}: prune before quantize")

    info: dict = {"weight": None, "activation": None, "removed": False}
    chosen: dict = {}
    if args.weight is not None and args.weight.sparsity == AUTO:
        graph.context.require_data("prune")
        chosen = resolve_auto(graph, args.weight, weights, pass_args, join(path, "weight.auto"))
    if args.gradual is not None:
        seed = args.weight.seed if args.weight.seed is not None else graph.context.training.seed
        summary, figures, schedule = prune_while_training(graph, args.weight, args.gradual, weights, seed, path,
                                                          _prune_weights)
        info["weight"] = {**summary, "dense": weights_left}
        info |= {**figures, "gradual": schedule}
    elif args.weight is not None:
        seed = args.weight.seed if args.weight.seed is not None else graph.context.training.seed
        info["weight"] = {**_prune_weights(graph, args.weight, weights, seed), "dense": weights_left}
    if args.activation is not None:
        seed = args.activation.seed if args.activation.seed is not None else graph.context.training.seed
        info["activation"] = {**_prune_activations(graph, args.activation, acts, seed), "dense": acts_left}
    if args.remove:
        _, info["removed"] = prune_remove_pass(graph)
    _, report = add_pruning_metadata(graph)
    info.update(report)
    info.update(chosen)
    for kind in ("weight", "activation"):
        if info[kind] is not None:
            s = info[kind]
            logger.info("prune %s: %s %s %s, target %s, on %d layer(s); left alone: %s", kind, s["scope"],
                        s["granularity"], s["method"], s["sparsity"], len(s["layers"]),
                        ", ".join(f"{d['name']} ({d['reason']})" for d in s["dense"]) or "none")
    return graph, info


def _activation_needs_data(args: ActivationPruneArgs) -> bool:
    method = ACTIVATION_METHODS[(args.scope, args.granularity)][args.method]
    positive = max(args.sparsity.values()) > 0 if isinstance(args.sparsity, dict) else args.sparsity > 0
    return method.needs_data and positive


_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # weight dim 1 = input channels


def prune_remove_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Bake prune masks into plain weights and remove inserted `ActivationPrune` modules.

    Static activation channel masks are folded into the next layer's weight
    (zeroing input channel ``c`` of a convolution/Linear is the same as
    zeroing its weights that read ``c``), so the model computes the same
    function. Per-sample elementwise activation stages depend on the data and
    cannot be baked: they are dropped, with a warning. A weight whose
    parametrization chain holds anything besides `WeightMask` (e.g. weight
    sharing) is refused, before anything changes: remove masks before
    quantizing, or keep them. A tied weight stays one parameter.
    """
    from_dict(NoOptions, pass_args, pass_path(graph.context.step, "passes.prune_remove"))
    act_nodes = [n for n in graph.nodes if n.op == "call_module" and isinstance(graph.module_of(n), ActivationPrune)]
    weights = {(w.qualname, w.tensor_name): w for w in graph.weights()}

    def foldable(node: fx.Node) -> Weight | None:
        (user,) = node.users
        layer = graph.module_of(user)
        if isinstance(layer, _FOLDABLE) and user.args[0] is node and getattr(layer, "groups", 1) == 1:
            return weights.get((str(user.target), "weight"))
        return None

    def mixed_chain(w: Weight) -> list[str]:
        return [type(p).__name__ for p in chain(w.module, w.tensor_name) if not isinstance(p, WeightMask)]

    for w in weights.values():
        if get_mask(w.module, w.tensor_name) is not None and mixed_chain(w):
            raise RuntimeError(
                f"cannot bake the prune mask of {w.name}: its weight also has {', '.join(mixed_chain(w))}; "
                "run prune_remove before quantizing, or keep the masks"
            )
    for node in act_nodes:
        w = foldable(node) if graph.module_of(node).channel_mask is not None else None
        if w is not None and mixed_chain(w):
            raise RuntimeError(f"cannot fold the activation channel mask of {node.name} into a weight that has "
                               f"{', '.join(mixed_chain(w))}; run prune_remove before quantizing")

    folded = dropped = 0
    for node in act_nodes:
        module = graph.module_of(node)
        if module.channel_mask is not None:
            w = foldable(node)
            if w is not None:
                shape = w.stored().shape
                view = [1] * len(shape)
                view[1] = -1
                apply_mask(w, module.channel_mask.view(view).expand(shape).clone())
                folded += 1
            else:
                logger.warning("%s: its channel mask cannot be folded into a weight; removed", node.name)
        if module.stages:
            logger.warning("%s: per-sample activation pruning cannot be baked into weights; removed", node.name)
            dropped += 1
        graph.remove_module_node(node)

    baked = 0
    for w in weights.values():
        if get_mask(w.module, w.tensor_name) is not None:
            bake(w)
            baked += 1
    info = {"baked_weight_masks": baked, "folded_channel_masks": folded, "dropped_activation_stages": dropped}
    logger.info("prune_remove: %s", info)
    return graph, info
