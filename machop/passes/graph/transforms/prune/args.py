"""The prune pass's configuration: ``[passes.prune]``, ``[passes.prune.weight]``, ``[passes.prune.activation]``.

```toml
[passes.prune]
remove = false                 # true: bake masks into plain weights after pruning

[passes.prune.weight]          # optional
sparsity = 0.5                 # [0, 1), or a table {default = 0.5, conv1 = 0.2} keyed by node name (local scope)
scope = "local"                # local | global
granularity = "elementwise"    # elementwise | kernelwise | channelwise
method = "l1-norm"             # see METHODS; defaults to the first listed for the scope/granularity
types = ["conv2d", "linear"]   # layer kinds to prune (default: every kind; see machop.nn.KINDS)
exclude = ["fc2"]              # weights left dense: node, module or weight names (a module covers its weights)
seed = 0                       # random methods; default: graph.context.training.seed

[passes.prune.activation]      # optional; same keys, plus
calibration_samples = 256      # data-driven methods only
```

Everything that can be checked without the graph is checked here; names
(in ``exclude`` and per-layer sparsity), kinds in ``types`` that the model
lacks, and granularities a selected weight has no groups for (kernelwise on
a Linear) are checked against the graph (`check_prune_args`), before
anything changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from machop.config import ConfigError, check_range, from_dict, join

from machop.nn import KIND_NAMES

from .activation_methods import ACTIVATION_METHODS
from .weight_methods import WEIGHT_METHODS

METHODS: dict[str, dict[tuple[str, str], dict]] = {"weight": WEIGHT_METHODS, "activation": ACTIVATION_METHODS}
"""kind ("weight" | "activation") → (scope, granularity) → method name → scorer / method."""


def describe_methods(kind: str) -> str:
    """``local elementwise: l1-norm, l2-norm, random; local kernelwise: ...`` for error messages."""
    return "; ".join(f"{s} {g}: {', '.join(m)}" for (s, g), m in METHODS[kind].items())


@dataclass
class WeightPruneArgs:
    """``[passes.prune.weight]``."""

    KIND: ClassVar[str] = "weight"

    sparsity: float | dict[str, float]
    scope: Literal["local", "global"] = "local"
    granularity: Literal["elementwise", "kernelwise", "channelwise"] = "elementwise"
    method: str | None = None
    types: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int | None = None

    def validate(self, path: str) -> None:
        key = join(path, "sparsity")
        if isinstance(self.sparsity, dict):
            if self.scope != "local":
                raise ConfigError(key, f"a per-layer table needs scope = 'local'; {self.scope} pruning takes one number")
            if "default" not in self.sparsity:
                raise ConfigError(key, "a per-layer table needs a 'default' entry for the layers it does not name")
            for name, value in self.sparsity.items():
                check_range(value, join(key, name), 0, 1, hi_open=True)
        else:
            check_range(self.sparsity, key, 0, 1, hi_open=True)
        combos = METHODS[self.KIND]
        if (self.scope, self.granularity) not in combos:
            raise ConfigError(
                join(path, "granularity"),
                f"{self.scope} {self.granularity} {self.KIND} pruning is not supported; "
                f"valid combinations (scope granularity: methods): {describe_methods(self.KIND)}",
            )
        methods = combos[(self.scope, self.granularity)]
        if self.method is None:
            self.method = next(iter(methods))
        elif self.method not in methods:
            elsewhere = [f"{s} {g}" for (s, g), m in combos.items() if self.method in m]
            hint = f" ({self.method!r} is a {' / '.join(elsewhere)} method)" if elsewhere else ""
            raise ConfigError(
                join(path, "method"),
                f"unknown method {self.method!r} for {self.scope} {self.granularity} {self.KIND} pruning; "
                f"choose from {', '.join(methods)}{hint}",
            )
        if len(set(self.exclude)) != len(self.exclude):
            raise ConfigError(join(path, "exclude"), "lists a name twice")
        for i, name in enumerate(self.types or []):
            if name not in KIND_NAMES:
                raise ConfigError(join(path, f"types[{i}]"), f"unknown layer type {name!r}; choose from {', '.join(KIND_NAMES)}")

    def how(self) -> dict:
        """The JSON record of this config kept with each mask (for reports)."""
        return {"scope": self.scope, "granularity": self.granularity, "method": self.method}


@dataclass
class ActivationPruneArgs(WeightPruneArgs):
    """``[passes.prune.activation]``: the weight keys plus ``calibration_samples``."""

    KIND: ClassVar[str] = "activation"

    calibration_samples: int = 256

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.calibration_samples < 1:
            raise ConfigError(join(path, "calibration_samples"), f"must be >= 1, got {self.calibration_samples}")


@dataclass
class PruneArgs:
    """``[passes.prune]``: either sub-table may be absent; ``remove`` bakes masks afterwards."""

    weight: Any = None  # a table, parsed into WeightPruneArgs by validate (keeps its own error messages)
    activation: Any = None
    remove: bool = False

    def validate(self, path: str) -> None:
        if self.weight is not None:
            self.weight = from_dict(WeightPruneArgs, self.weight, join(path, "weight"))
        if self.activation is not None:
            self.activation = from_dict(ActivationPruneArgs, self.activation, join(path, "activation"))


def parse_prune_args(pass_args: dict | None, path: str = "passes.prune") -> PruneArgs:
    """Validate ``pass_args`` (the ``[passes.prune]`` table) into `PruneArgs`; ConfigError naming the key if bad."""
    return from_dict(PruneArgs, pass_args or {}, path)
