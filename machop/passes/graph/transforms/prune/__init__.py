"""Pruning: weight masks (parametrizations) and activation masks (inserted modules) on every layer machop compresses.

```python
from machop.passes.graph.transforms.prune import prune_transform_pass
graph, info = prune_transform_pass(graph, {"weight": {"sparsity": 0.9, "method": "l1-norm"}})
```

See `prune` (the pass), `args` (the config), `targets` (which weights and
layers a table selects), `weights` and `activations` (how they are masked),
`remove` (`prune_remove_pass`: baking masks in), `gradual` (pruning while
training, AGP: a ``gradual`` table), `auto` (per-layer sparsities),
`weight_methods` and `activation_methods` (what each method does). The mask
itself (`WeightMask`) and the inserted module (`ActivationPrune`) live in
`machop.nn`.
"""

from .activation_methods import ACTIVATION_METHODS
from .args import METHODS, ActivationPruneArgs, GradualArgs, PruneArgs, WeightPruneArgs, parse_prune_args
from .gradual import agp_sparsity, update_steps
from .prune import check_prune_args, prune_transform_pass
from .remove import prune_remove_pass
from .weight_methods import WEIGHT_METHODS

__all__ = [
    "prune_transform_pass",
    "prune_remove_pass",
    "parse_prune_args",
    "check_prune_args",
    "PruneArgs",
    "WeightPruneArgs",
    "ActivationPruneArgs",
    "GradualArgs",
    "agp_sparsity",
    "update_steps",
    "METHODS",
    "WEIGHT_METHODS",
    "ACTIVATION_METHODS",
]
