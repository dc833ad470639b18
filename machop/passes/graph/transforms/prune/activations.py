"""Activation pruning: the `ActivationPrune` module in front of each target layer, and its calibration.

Each table adds to the module in front of its layer (inserted the first
time; a later table adds to the same module): a channel mask chosen from the
layer's inputs over ``calibration_samples`` training inputs run through the
model as it is (earlier masks on), or a per-sample elementwise stage. What
each method scores, and how masks compose, is in `activation_methods`.
"""

from __future__ import annotations

import logging

import torch
import torch.fx as fx

from machop.config import pass_path
from machop.ir.graph import MaseGraph
from machop.nn import ActivationPrune, lowest_k_mask, prune_count
from machop.training import calibration_batch

from .activation_methods import ACTIVATION_METHODS, MagnitudeSample, allocate_global
from .args import ActivationPruneArgs
from .targets import Target, active, refuse_all

logger = logging.getLogger(__name__)

POOLED_ACTIVATION_SAMPLES = 1 << 21  # values pooled for the global activation threshold
CALIBRATION_CHUNK = 64  # samples per forward during calibration


def needs_data(args: ActivationPruneArgs) -> bool:
    """Whether the table calibrates on data: a data-driven method with some sparsity above 0."""
    method = ACTIVATION_METHODS[(args.scope, args.granularity)][args.method]
    positive = max(args.sparsity.values()) > 0 if isinstance(args.sparsity, dict) else args.sparsity > 0
    return method.needs_data and positive


def prune_activations(graph: MaseGraph, args: ActivationPruneArgs, targets: list[Target], seed: int) -> dict:
    """Add the table's stage in front of each of ``targets`` (`select`'s, with their sparsities).

    Returns the table's summary: its `how`, ``sparsity`` and the ``layers``
    pruned.
    """
    method = ACTIVATION_METHODS[(args.scope, args.granularity)][args.method]
    targets = active(targets, args)
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
            refuse_all(f"the input of {t.name}", prune_count(t.sparsity, channels), channels, path)
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
    """Feed ``samples`` training images through the model (eval mode, no grad) into the targets' calibrators."""
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
