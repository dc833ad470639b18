"""The prune pass (`prune_transform_pass`) and its check against the graph (`check_prune_args`).

One prune step: the ``weight`` table masks weights, the ``activation``
table inserts activation masks, ``remove = true`` bakes them in. Its
modules, one job each:

- `targets`: which weights and layers a table selects, by name, type and
  ``exclude``, with their sparsities; those left alone, with the reason;
- `weights`: weight masks (exact counts, coupled channels, iterative
  pruning);
- `activations`: the activation module in front of a layer and its
  calibration;
- `remove`: `prune_remove_pass`, baking masks into plain weights;
- `gradual`: pruning while training (AGP);
- `auto`: per-layer sparsities chosen from sensitivity curves;
- `args`: the config; `weight_methods` and `activation_methods`: what
  each method scores.

Gradual pruning (a ``gradual`` table, see `gradual`) trains the model and
runs the same weight pruning (`weights.prune_weights`) at each update of
its schedule, to each weight's sparsity of that moment.
"""

from __future__ import annotations

import logging

from machop.config import join, pass_path
from machop.ir.graph import MaseGraph
from machop.nn import KMeansWeight, quantizer_of
from machop.passes.graph.analysis.pruning import add_pruning_metadata

from .activations import needs_data, prune_activations
from .args import AUTO, PruneArgs, WeightPruneArgs, parse_prune_args
from .auto import resolve_auto
from .gradual import check_gradual, prune_while_training
from .remove import prune_remove_pass
from .targets import activation_targets, select, weight_targets
from .weights import prune_weights

logger = logging.getLogger(__name__)


def check_prune_args(graph: MaseGraph, args: PruneArgs, path: str, earlier: list[str] = ()) -> None:
    """Check a parsed prune table against ``graph`` (names, types, granularities) without changing it."""
    if args.weight is not None:
        select(weight_targets(graph), args.weight, join(path, "weight"))
    if args.activation is not None:
        select(activation_targets(graph), args.activation, join(path, "activation"))
    if args.gradual is not None:
        check_gradual(graph, args.gradual, join(path, "gradual"), earlier)


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
    if args.activation is not None and needs_data(args.activation):
        graph.context.require_data("prune")  # fail before changing anything
    if args.gradual is not None:
        graph.context.require_data("prune")
        check_gradual(graph, args.gradual, join(path, "gradual"))
    shared = [t.name for t in weights if isinstance(quantizer_of(t.weight.module, t.weight.tensor_name), KMeansWeight)]
    if shared:  # its mask lives in the codebook parametrization: a new WeightMask would not reach it
        raise ValueError(f"cannot prune weights of k-means quantized layer(s) {', '.join(shared)}: prune before quantize")

    info: dict = {"weight": None, "activation": None, "removed": False}
    chosen: dict = {}
    if args.weight is not None and args.weight.sparsity == AUTO:
        graph.context.require_data("prune")
        chosen = resolve_auto(graph, args.weight, weights, pass_args, join(path, "weight.auto"))
    if args.weight is not None and args.gradual is not None:
        summary, figures, schedule = prune_while_training(graph, args.weight, args.gradual, weights,
                                                          _seed(graph, args.weight), path)
        info["weight"] = {**summary, "dense": weights_left}
        info |= {**figures, "gradual": schedule}
    elif args.weight is not None:
        info["weight"] = {**prune_weights(graph, args.weight, weights, _seed(graph, args.weight)), "dense": weights_left}
    if args.activation is not None:
        summary = prune_activations(graph, args.activation, acts, _seed(graph, args.activation))
        info["activation"] = {**summary, "dense": acts_left}
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


def _seed(graph: MaseGraph, table: WeightPruneArgs) -> int:
    """The table's ``seed`` (random methods), or the run's when it sets none."""
    return table.seed if table.seed is not None else graph.context.training.seed
