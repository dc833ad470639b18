"""``sparsity = "auto"``: per-layer sparsities chosen from the layers' sensitivity to pruning.

Each selected weight is pruned alone to each of ``auto.sparsities`` and
evaluated on ``auto.samples`` validation images, nothing retrained
(`machop.passes.graph.analysis.sensitivity`); the sparsities that meet the
target (a density, a size or ratio, or a maximum accuracy drop) at the least
predicted accuracy loss are then chosen (`allocation.choose_sparsities`) and
pruned as a per-layer table would be, one-shot or gradually. The curves are
those of elementwise magnitude pruning, so ``auto`` needs local elementwise
pruning.

```toml
[passes.prune.weight]
sparsity = "auto"
[passes.prune.weight.auto]
ratio = 60                 # or density = 0.05, size = 20000 (bytes), max_acc_drop = 0.01
value_bits = 5             # size and ratio: bits each kept value will cost after quantization
sparsities = [0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99]   # measured; none beyond the largest is chosen
samples = 2000             # validation images per evaluation
retrain_steps = 0          # > 0: each point measured after this many fine-tuning steps (what a layer recovers)
```

The step's info holds the curves (``sensitivity``, drawn as
``sensitivity_<step>.png``), the choice (``allocation``) and the table written out
(``table``: ``sparsity`` as the chosen per-layer table, ``auto`` gone),
which `ch transform` puts into the run's ``config.toml``.
"""

from __future__ import annotations

import copy
import logging

from machop.config import ConfigError
from machop.ir.graph import MaseGraph
from machop.passes.graph.analysis.allocation import InfeasibleBudget, choose_sparsities
from machop.passes.graph.analysis.sensitivity import measure_sensitivity
from machop.passes.graph.analysis.stats import weight_stats

from .args import WeightPruneArgs

logger = logging.getLogger(__name__)


def resolve_auto(graph: MaseGraph, args: WeightPruneArgs, targets: list, pass_args: dict, path: str) -> dict:
    """Choose each target's sparsity (set on the targets and as ``args.sparsity``); returns the info to add.

    ConfigError naming ``path`` (the auto table) when no choice meets the target.
    """
    sens = measure_sensitivity(graph, [t.weight for t in targets], sparsities=args.auto.sparsities, bits=(),
                               samples=args.auto.samples, progress=graph.context.progress_bar,
                               retrain_steps=args.auto.retrain_steps,
                               learning_rate=graph.context.training.learning_rate)
    measured = {layer.name for layer in sens.layers}
    stats = weight_stats(graph)
    weights = sum(t.weight.stored().numel() for t in targets if t.name in measured)
    try:
        chosen = choose_sparsities(sens, args.auto, stats["dense_bytes"], 4 * (stats["params"] - weights))
    except InfeasibleBudget as e:
        raise ConfigError(path, f"{args.auto.describe()} cannot be met by the measured sparsities: {e}") from None
    for t in targets:
        t.sparsity = chosen.get(t.name, 0.0)
    args.sparsity = {"default": 0.0, **chosen}
    logger.info("sparsity = auto (%s): %s", args.auto.describe(), ", ".join(f"{k} {v:g}" for k, v in chosen.items()))
    table = copy.deepcopy(pass_args)
    table["weight"]["sparsity"] = dict(args.sparsity)
    del table["weight"]["auto"]
    return {"sensitivity": sens.to_json(), "allocation": {"target": args.auto.describe(), "sparsity": chosen},
            "table": table}
