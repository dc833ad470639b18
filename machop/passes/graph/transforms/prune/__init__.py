"""Pruning: weight masks (parametrizations) and activation masks (inserted modules) for Conv2d/Linear layers.

```python
from machop.passes.graph.transforms.prune import prune_transform_pass
graph, info = prune_transform_pass(graph, {"weight": {"sparsity": 0.9, "method": "l1-norm"}})
```

See `prune` (the pass), `args` (the config), `weight_methods` and
`activation_methods` (what each method does), `ranking` (exact top-k) and
`masks` (the WeightMask parametrization).
"""

from .activation_methods import ACTIVATION_METHODS, ActivationPrune
from .args import METHODS, ActivationPruneArgs, PruneArgs, WeightPruneArgs, parse_prune_args
from .masks import WeightMask, apply_mask, get_mask, remove_masks
from .prune import prune_remove_pass, prune_transform_pass
from .weight_methods import WEIGHT_METHODS

__all__ = [
    "prune_transform_pass",
    "prune_remove_pass",
    "parse_prune_args",
    "PruneArgs",
    "WeightPruneArgs",
    "ActivationPruneArgs",
    "METHODS",
    "WEIGHT_METHODS",
    "ACTIVATION_METHODS",
    "ActivationPrune",
    "WeightMask",
    "apply_mask",
    "get_mask",
    "remove_masks",
]
