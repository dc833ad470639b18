"""The prune pass (`prune_transform_pass`) and the mask-baking pass (`prune_remove_pass`).

Which layers: every ``call_module`` node whose module is a Conv2d or Linear
(no names, shapes or kernel sizes are assumed), minus ``exclude``. Node names
are fx node names (``layer1_0_conv1``); the module's qualified name
(``layer1.0.conv1``) is accepted as an alias.

Exactness: each pruned layer loses exactly ``round(sparsity * n)`` groups of
its ``n`` (``global``: that many over all pruned layers together), ties broken
by position (see `ranking`).

Iterative pruning composes: scores are computed on the *effective* weights
(masks and other parametrizations applied) and the new mask is ANDed into the
existing one. Groups an earlier pass already pruned rank lowest, so they
count towards the new target: pruning a 50%-pruned layer to 0.8 prunes 30%
more; asking 0.3 of it changes nothing (a mask never revives a weight, the
achieved sparsity stays 0.5). The same holds for activations (see
`activation_methods`).

Kernelwise pruning on a Linear layer is a config error naming the layer
(Linear weights have no k×k kernels): exclude those layers or pick another
granularity.

All scores of one pass are computed from the weights as they were when the
pass started, then the masks are applied, so the result does not depend on
layer order (``*-norm-multi`` reads the next layers' weights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils import parametrize

from machop.config import ConfigError, from_dict, join
from machop.ir.graph import MaseGraph

from .activation_methods import ACTIVATION_METHODS, ActivationPrune, MagnitudeSample, allocate_global
from .args import ActivationPruneArgs, PruneArgs, WeightPruneArgs, parse_prune_args
from .masks import WeightMask, apply_mask, get_mask
from .ranking import lowest_k_mask, prune_count
from .weight_methods import GROUPINGS, NEEDS_DOWNSTREAM, WEIGHT_METHODS, WeightLayer, downstream_weights

logger = logging.getLogger(__name__)

PATH = "passes.prune"
POOLED_ACTIVATION_SAMPLES = 1 << 21  # values pooled for the global activation threshold
CALIBRATION_CHUNK = 64  # samples per forward during calibration


@dataclass
class _Layer:
    node: fx.Node
    module: nn.Module
    sparsity: float


def _resolve_layers(graph: MaseGraph, args: WeightPruneArgs, path: str) -> list[_Layer]:
    """The layers ``args`` prunes, with their targets; ConfigError for names that are not layers."""
    nodes = graph.layer_nodes()
    by_name = {n.name: n for n in nodes}
    alias = {n.target: n.name for n in nodes}

    def canon(name: str) -> str | None:
        return name if name in by_name else alias.get(name)

    valid = ", ".join(by_name) or "(none: the model has no Conv2d/Linear layers)"
    unknown = [x for x in args.exclude if canon(x) is None]
    if unknown:
        raise ConfigError(
            join(path, "exclude"), f"unknown node name(s) {', '.join(map(repr, unknown))}; valid node names: {valid}"
        )
    excluded = {canon(x) for x in args.exclude}
    per_layer: dict[str, float] = {}
    if isinstance(args.sparsity, dict):
        unknown = [k for k in args.sparsity if k != "default" and canon(k) is None]
        if unknown:
            raise ConfigError(
                join(path, "sparsity"),
                f"unknown node name(s) {', '.join(map(repr, unknown))}; valid node names: {valid} (and 'default')",
            )
        per_layer = {canon(k): v for k, v in args.sparsity.items() if k != "default"}
    layers = [
        _Layer(n, graph.module_of(n), per_layer.get(n.name, args.sparsity_of(n.name)))
        for n in nodes
        if n.name not in excluded
    ]
    if args.granularity == "kernelwise":
        linear = [l.node.name for l in layers if not isinstance(l.module, nn.Conv2d)]
        if linear:
            names = ", ".join(f'"{n}"' for n in linear)
            raise ConfigError(
                join(path, "granularity"),
                f"kernelwise pruning prunes the k×k kernels of Conv2d layers; Linear layer(s) {', '.join(linear)} "
                f"have none: add them to exclude (exclude = [{names}]) or use elementwise or channelwise",
            )
    return layers


# --------------------------------------------------------------------------- weights


def _prune_weights(graph: MaseGraph, args: WeightPruneArgs, layers: list[_Layer], seed: int) -> dict:
    grouping = GROUPINGS[args.granularity]
    scorer = WEIGHT_METHODS[(args.scope, args.granularity)][args.method]
    generator = torch.Generator().manual_seed(seed)
    modules = graph.modules()

    unique, seen = [], set()
    for layer in layers:  # a module called from several nodes is pruned once
        if id(layer.module) not in seen:
            seen.add(id(layer.module))
            unique.append(layer)
    if args.scope == "local":
        unique = [l for l in unique if l.sparsity > 0]
    elif args.sparsity == 0:
        unique = []

    def scores_of(layer: _Layer) -> tuple[torch.Tensor, torch.Size]:
        w = layer.module.weight.detach()
        downstream = None
        if args.method in NEEDS_DOWNSTREAM:
            downstream = downstream_weights(layer.node, modules)
            if downstream is None:
                logger.info("%s: the layers reading its channels cannot be followed; %s uses the filter norm only",
                            layer.node.name, args.method)
        groups = grouping(w)
        scores = scorer(groups, WeightLayer(layer.node.name, w, generator, downstream)).float()
        old = get_mask(layer.module)
        if old is not None:  # groups pruned earlier rank lowest: they count towards the target
            scores = scores.masked_fill(~grouping(old).any(dim=1), float("-inf"))
        return scores, groups.shape

    keeps: list[torch.Tensor] = []
    shapes: list[torch.Size] = []
    if args.scope == "local":
        for layer in unique:
            scores, shape = scores_of(layer)
            keeps.append(lowest_k_mask(scores, prune_count(layer.sparsity, shape[0])))
            shapes.append(shape)
    elif unique:
        # one ranking over all layers; scores written into one buffer to avoid a second copy
        sizes = [grouping(_weight_meta(l.module)).shape[0] for l in unique]
        device = _weight_meta(unique[0].module).device
        buffer = torch.empty(sum(sizes), device=device)
        offset = 0
        for layer, size in zip(unique, sizes):
            scores, shape = scores_of(layer)
            buffer[offset:offset + size] = scores.to(device)
            shapes.append(shape)
            offset += size
            del scores
        keep = lowest_k_mask(buffer, prune_count(args.sparsity, buffer.numel()))
        del buffer
        keeps = [k.clone() for k in keep.split(sizes)]

    targets = {}
    for layer, keep, shape in zip(unique, keeps, shapes):
        weight_shape = _weight_meta(layer.module).shape
        mask = keep[:, None].expand(shape).reshape(weight_shape).contiguous()
        target = layer.sparsity if args.scope == "local" else args.sparsity
        apply_mask(layer.module, mask, how={**args.how(), "target": target})
        targets[layer.node.name] = target
    pruned = sum(get_mask(l.module).numel() - int(torch.count_nonzero(get_mask(l.module))) for l in unique)
    total = sum(_weight_meta(l.module).numel() for l in unique)
    return {
        **args.how(),
        "sparsity": args.sparsity,
        "layers": list(targets),
        "achieved": pruned / total if total else 0.0,
    }


def _weight_meta(module: nn.Module) -> torch.Tensor:
    """The stored weight tensor (shape, device) without computing a parametrized weight."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


# --------------------------------------------------------------------------- activations


def _channel_dim(module: nn.Module) -> int:
    return 1 if isinstance(module, nn.Conv2d) else -1


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


def calibration_inputs(graph: MaseGraph, samples: int) -> torch.Tensor:
    """``samples`` input images from ``graph.context.data_module.calibration_batch``."""
    batch = graph.context.require_data("prune").calibration_batch(samples)
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"calibration_batch must return a tensor or (inputs, labels), got {type(batch).__name__}")
    return batch


def _calibrate(graph: MaseGraph, layers: list[_Layer], calibrators: dict[str, object], samples: int) -> None:
    x = calibration_inputs(graph, samples)
    watch = {l.node.name: (calibrators[l.node.name], _channel_dim(l.module)) for l in layers}
    device = next(iter(graph.model.parameters()), torch.empty(0)).device
    was_training = graph.model.training
    graph.model.eval()
    try:
        with torch.no_grad():
            for i in range(0, x.shape[0], CALIBRATION_CHUNK):
                _Watcher(graph.model, watch).run(x[i:i + CALIBRATION_CHUNK].to(device))
    finally:
        graph.model.train(was_training)


def _activation_module(graph: MaseGraph, layer: _Layer) -> ActivationPrune | None:
    """The `ActivationPrune` in front of ``layer`` (inserted now if there is none)."""
    source = layer.node.args[0] if layer.node.args else None
    if not isinstance(source, fx.Node):
        logger.info("%s: its input is not a graph value; activation pruning skips it", layer.node.name)
        return None
    if source.op == "call_module" and isinstance(graph.module_of(source), ActivationPrune) and len(source.users) == 1:
        return graph.module_of(source)
    name, i = f"{layer.node.name}_act_prune", 1
    existing = graph.modules()
    while name in existing:
        name, i = f"{layer.node.name}_act_prune_{i}", i + 1
    module = ActivationPrune(channel_dim=_channel_dim(layer.module)).to(_weight_meta(layer.module).device)
    graph.insert_before(layer.node, 0, name, module)
    return module


def _prune_activations(graph: MaseGraph, args: ActivationPruneArgs, layers: list[_Layer], seed: int) -> dict:
    method = ACTIVATION_METHODS[(args.scope, args.granularity)][args.method]
    if args.scope == "local":
        layers = [l for l in layers if l.sparsity > 0]
    elif args.sparsity == 0:
        layers = []
    how = args.how()
    summary = {**how, "sparsity": args.sparsity, "layers": [l.node.name for l in layers]}
    if not layers:
        return summary

    calibrators: dict[str, object] = {}
    if method.needs_data:
        if args.scope == "global":
            budget = max(16, POOLED_ACTIVATION_SAMPLES // (args.calibration_samples * len(layers)))
            calibrators = {l.node.name: MagnitudeSample(budget) for l in layers}
        else:
            calibrators = {l.node.name: method.calibrator() for l in layers}
        _calibrate(graph, layers, calibrators, args.calibration_samples)  # on the model as it is (earlier masks on)

    if args.scope == "global":
        counts = allocate_global([calibrators[l.node.name] for l in layers], args.sparsity)
        for layer, k in zip(layers, counts):
            n = calibrators[layer.node.name].numel
            module = _activation_module(graph, layer)
            if module is not None:
                module.stages.append({**how, "target": args.sparsity, "rank": method.rank, "sparsity": k / n})
        return summary

    for index, layer in enumerate(layers):
        module = _activation_module(graph, layer)
        if module is None:
            continue
        if method.rank is not None:  # per-sample elementwise stage
            module.stages.append(
                {**how, "target": layer.sparsity, "rank": method.rank, "sparsity": layer.sparsity, "seed": seed + index}
            )
            continue
        calibrator = calibrators[layer.node.name]
        channels = calibrator.channels
        pruned = torch.zeros(channels, dtype=torch.bool)
        if module.channel_mask is not None:
            pruned = ~module.channel_mask.cpu()
        k = prune_count(layer.sparsity, channels)
        scores = calibrator.scores(pruned, k).masked_fill(pruned, float("-inf"))
        keep = lowest_k_mask(scores, k)
        module.add_channel_mask(keep.to(_weight_meta(layer.module).device), {**how, "target": layer.sparsity})
    return summary


# --------------------------------------------------------------------------- passes


def prune_transform_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Prune weights and/or activations of every Conv2d and Linear layer (see `args` for the config).

    Weights get a `WeightMask` parametrization (masks in ``state_dict``);
    activations an `ActivationPrune` module inserted in front of the layer.
    With ``remove = true`` the masks are then baked in (`prune_remove_pass`).

    Returns ``(graph, info)``; ``info`` has the config summary per kind
    (``weight``/``activation``: scope, granularity, method, sparsity, layers,
    achieved) and, per layer, what `add_pruning_metadata` writes into node
    metadata (kind, method, target and achieved sparsity, non-zero
    parameters, dense and effective MACs).
    """
    from machop.passes.graph.analysis.pruning import add_pruning_metadata
    from machop.passes.graph.transforms.quantize import KMeansWeight, quantizer_of

    args: PruneArgs = parse_prune_args(pass_args, PATH)
    weight_layers = _resolve_layers(graph, args.weight, join(PATH, "weight")) if args.weight else []
    act_layers = _resolve_layers(graph, args.activation, join(PATH, "activation")) if args.activation else []
    if args.activation is not None and _activation_needs_data(args.activation):
        graph.context.require_data("prune")  # fail before changing anything
    shared = [layer.node.name for layer in weight_layers if isinstance(quantizer_of(layer.module), KMeansWeight)]
    if shared:  # its mask lives in the codebook parametrization: a new WeightMask would not reach it
        raise ValueError(f"cannot prune weights of k-means quantized layer(s) {', '.join(shared)}: prune before quantize")

    info: dict = {"weight": None, "activation": None, "removed": False}
    if args.weight is not None:
        seed = args.weight.seed if args.weight.seed is not None else graph.context.seed
        info["weight"] = _prune_weights(graph, args.weight, weight_layers, seed)
    if args.activation is not None:
        seed = args.activation.seed if args.activation.seed is not None else graph.context.seed
        info["activation"] = _prune_activations(graph, args.activation, act_layers, seed)
    if args.remove:
        _, info["removed"] = prune_remove_pass(graph)
    _, report = add_pruning_metadata(graph)
    info.update(report)
    for kind in ("weight", "activation"):
        if info[kind] is not None:
            s = info[kind]
            logger.info("prune %s: %s %s %s, target %s, on %d layer(s)", kind, s["scope"], s["granularity"],
                        s["method"], s["sparsity"], len(s["layers"]))
    return graph, info


def _activation_needs_data(args: ActivationPruneArgs) -> bool:
    method = ACTIVATION_METHODS[(args.scope, args.granularity)][args.method]
    positive = max(args.sparsity.values()) > 0 if isinstance(args.sparsity, dict) else args.sparsity > 0
    return method.needs_data and positive


@dataclass
class PruneRemoveArgs:
    """``prune_remove`` takes no options."""


def prune_remove_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Bake prune masks into plain weights and remove inserted `ActivationPrune` modules.

    Static activation channel masks are folded into the next layer's weight
    (zeroing input channel ``c`` of a Conv2d/Linear is the same as zeroing
    its weights that read ``c``), so the model computes the same function.
    Per-sample elementwise activation stages depend on the data and cannot
    be baked: they are dropped, with a warning. A weight whose
    parametrization chain holds anything besides `WeightMask` (e.g. weight
    sharing) is refused, before anything changes: remove masks before
    quantizing, or keep them.
    """
    from_dict(PruneRemoveArgs, pass_args or {}, "passes.prune_remove")
    act_nodes = [n for n in graph.nodes if n.op == "call_module" and isinstance(graph.module_of(n), ActivationPrune)]

    def foldable(node: fx.Node) -> nn.Module | None:
        (user,) = node.users
        layer = graph.module_of(user)
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and user.args[0] is node:
            if isinstance(layer, nn.Linear) or layer.groups == 1:
                return layer
        return None

    def mixed_chain(module: nn.Module) -> list[str]:
        if not parametrize.is_parametrized(module, "weight"):
            return []
        return [type(p).__name__ for p in module.parametrizations["weight"] if not isinstance(p, WeightMask)]

    for qualname, module in graph.model.named_modules():
        if get_mask(module) is not None and mixed_chain(module):
            raise RuntimeError(
                f"cannot bake the prune mask of {qualname}: its weight also has {', '.join(mixed_chain(module))}; "
                "run prune_remove before quantizing, or keep the masks"
            )
    for node in act_nodes:
        layer = foldable(node) if graph.module_of(node).channel_mask is not None else None
        if layer is not None and mixed_chain(layer):
            raise RuntimeError(f"cannot fold the activation channel mask of {node.name} into a weight that has "
                               f"{', '.join(mixed_chain(layer))}; run prune_remove before quantizing")

    folded = dropped = 0
    for node in act_nodes:
        module = graph.module_of(node)
        if module.channel_mask is not None:
            layer = foldable(node)
            if layer is not None:
                w = _weight_meta(layer)
                view = [1] * w.dim()
                view[1] = -1
                apply_mask(layer, module.channel_mask.view(view).expand(w.shape).clone())
                folded += 1
            else:
                logger.warning("%s: its channel mask cannot be folded into a weight; removed", node.name)
        if module.stages:
            logger.warning("%s: per-sample activation pruning cannot be baked into weights; removed", node.name)
            dropped += 1
        graph.remove_module_node(node)

    baked = 0
    for _, module in graph.model.named_modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                if any(isinstance(p, WeightMask) for p in module.parametrizations[name]):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
                    baked += 1
    info = {"baked_weight_masks": baked, "folded_channel_masks": folded, "dropped_activation_stages": dropped}
    logger.info("prune_remove: %s", info)
    return graph, info
