"""The prune pass's configuration: ``[passes.prune]``, ``.weight``, ``.activation``, ``.gradual``, typed and checked.

Everything that can be checked without the graph is checked here, so a bad
table fails before anything runs; names (in ``exclude`` and per-layer
sparsities), kinds in ``types`` that the model lacks, and granularities a
selected weight has no groups for (kernelwise on a Linear) are checked
against the graph (`check_prune_args`), before anything changes.

Every key, with gradual pruning (AGP) and ``sparsity = "auto"``:
docs/CONFIGURATION.md, "prune".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from machop.config import ConfigError, TrainSettings, check_range, from_dict, join

from machop.nn import KIND_NAMES
from machop.passes.graph.analysis.allocation import PruneTarget
from machop.training import parse_objective_args, step_settings

from .activation_methods import ACTIVATION_METHODS
from .weight_methods import WEIGHT_METHODS

AUTO = "auto"  # sparsity chosen per layer (see `auto`)

METHODS: dict[str, dict[tuple[str, str], dict]] = {"weight": WEIGHT_METHODS, "activation": ACTIVATION_METHODS}
"""kind ("weight" | "activation") → (scope, granularity) → method name → scorer / method."""


def describe_methods(kind: str) -> str:
    """``local elementwise: l1-norm, l2-norm, random; local kernelwise: ...`` for error messages."""
    return "; ".join(f"{s} {g}: {', '.join(m)}" for (s, g), m in METHODS[kind].items())


@dataclass
class WeightPruneArgs:
    """``[passes.prune.weight]``."""

    KIND: ClassVar[str] = "weight"

    sparsity: float | dict[str, float] | Literal["auto"]
    scope: Literal["local", "global"] = "local"
    granularity: Literal["elementwise", "kernelwise", "channelwise"] = "elementwise"
    method: str | None = None
    types: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    seed: int | None = None
    auto: PruneTarget | None = None  # sparsity = "auto": what the per-layer sparsities must meet
    group: bool | None = None  # channelwise weights: prune coupled channels together (default true)

    def validate(self, path: str) -> None:
        key = join(path, "sparsity")
        if self.group is not None and (self.KIND, self.granularity) != ("weight", "channelwise"):
            raise ConfigError(join(path, "group"), "applies to channelwise weight pruning only (coupled output "
                                                   f"channels), not to {self.granularity} {self.KIND} pruning")
        if (self.sparsity == AUTO) != (self.auto is not None):
            raise ConfigError(join(path, "auto") if self.auto is not None else key,
                              'sparsity = "auto" and an auto table (the target it meets) go together')
        if self.sparsity == AUTO:
            if (self.scope, self.granularity) != ("local", "elementwise"):
                raise ConfigError(key, '"auto" chooses per-layer sparsities from elementwise magnitude curves: it needs '
                                       f'scope = "local" and granularity = "elementwise", got {self.scope} {self.granularity}')
        elif isinstance(self.sparsity, dict):
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
        if self.sparsity == AUTO or self.auto is not None:
            raise ConfigError(join(path, "sparsity" if self.sparsity == AUTO else "auto"),
                              '"auto" chooses weight sparsities; give activations a number or a per-layer table')
        super().validate(path)
        if self.calibration_samples < 1:
            raise ConfigError(join(path, "calibration_samples"), f"must be >= 1, got {self.calibration_samples}")


DEFAULT_UPDATES = 30  # mask updates over the ramp when ``frequency`` is not given


@dataclass
class GradualArgs:
    """``[passes.prune.gradual]``: prune while training (AGP). ``training`` and ``trainer`` override the
    run's `TrainSettings` as a train step's tables do (`TrainSettings.TRAINING_KEYS`, `TRAINER_KEYS`)."""

    initial_sparsity: float = 0.0
    ramp_epochs: int | None = None
    ramp_steps: int | None = None
    start_epoch: int = 0
    frequency: int | None = None  # optimizer steps between mask updates; None: ceil(ramp / DEFAULT_UPDATES)
    test: bool = True
    training: dict[str, Any] | None = None
    trainer: dict[str, Any] | None = None
    distill: dict[str, Any] | None = None  # learn from a teacher while pruning (machop.training.DistillArgs)
    prior: dict[str, Any] | None = None  # train under soft weight-sharing's prior while pruning (PriorArgs)

    def validate(self, path: str) -> None:
        parse_objective_args(self.distill, self.prior, path)
        check_range(self.initial_sparsity, join(path, "initial_sparsity"), 0, 1, hi_open=True)
        if (self.ramp_epochs is None) == (self.ramp_steps is None):
            both = "both are given" if self.ramp_epochs is not None else "neither is given"
            raise ConfigError(join(path, "ramp_epochs"), f"give exactly one of ramp_epochs (epochs) and ramp_steps "
                                                         f"(optimizer steps) over which the sparsity rises; {both}")
        check_range(self.ramp_epochs, join(path, "ramp_epochs"), 1, 10_000)
        check_range(self.ramp_steps, join(path, "ramp_steps"), 1, 1 << 40)
        check_range(self.start_epoch, join(path, "start_epoch"), 0, 10_000)
        check_range(self.frequency, join(path, "frequency"), 1, 1 << 40)
        own = self.settings(TrainSettings(), path)  # checks both tables now
        if any("max_epochs" in (t or {}) for t in (self.training, self.trainer)):
            self.check_fits(own, path)

    def settings(self, base: TrainSettings, path: str = "passes.prune.gradual") -> TrainSettings:
        """``base`` with the ``trainer`` table, then the ``training`` table, applied."""
        return step_settings(base, self.trainer, self.training, path)

    def check_fits(self, s: TrainSettings, path: str) -> None:
        """ConfigError unless the ramp ends within ``s.max_epochs`` (and ``s.max_steps``, where that can be told
        without the data): the model must reach its final sparsity while it trains."""
        if self.ramp_epochs is not None and self.start_epoch + self.ramp_epochs > s.max_epochs:
            raise ConfigError(join(path, "ramp_epochs"),
                              f"start_epoch + ramp_epochs = {self.start_epoch + self.ramp_epochs} is more than "
                              f"max_epochs = {s.max_epochs}: the sparsity must reach its final value while training "
                              "(max_epochs counts every epoch, the ramp's and those after it)")
        if self.ramp_steps is not None and self.start_epoch >= s.max_epochs:
            raise ConfigError(join(path, "start_epoch"), f"must be less than max_epochs = {s.max_epochs}, "
                                                         f"got {self.start_epoch}")
        if self.ramp_steps is not None and s.max_steps != -1 and self.ramp_steps > s.max_steps:
            raise ConfigError(join(path, "ramp_steps"), f"{self.ramp_steps} is more than max_steps = {s.max_steps}: "
                                                        "the sparsity must reach its final value while training")


@dataclass
class PruneArgs:
    """``[passes.prune]``: either sub-table may be absent; ``remove`` bakes masks afterwards;
    ``gradual`` prunes the weights while training (`GradualArgs`)."""

    weight: Any = None  # a table, parsed into WeightPruneArgs by validate (keeps its own error messages)
    activation: Any = None
    gradual: Any = None
    remove: bool = False

    def validate(self, path: str) -> None:
        if self.weight is not None:
            self.weight = from_dict(WeightPruneArgs, self.weight, join(path, "weight"))
        if self.activation is not None:
            self.activation = from_dict(ActivationPruneArgs, self.activation, join(path, "activation"))
        if self.gradual is not None:
            self.gradual = from_dict(GradualArgs, self.gradual, join(path, "gradual"))
            if self.activation is not None:
                raise ConfigError(join(path, "activation"), "gradual pruning prunes weights only; prune activations "
                                                            "in a prune step of their own (without a gradual table)")
            if self.weight is None:
                raise ConfigError(join(path, "gradual"), f"needs a [{join(path, 'weight')}] table: its sparsity is "
                                                         "the final one the gradual schedule reaches")


def parse_prune_args(pass_args: dict | None, path: str = "passes.prune") -> PruneArgs:
    """Validate ``pass_args`` (the ``[passes.prune]`` table) into `PruneArgs`; ConfigError naming the key if bad."""
    return from_dict(PruneArgs, pass_args or {}, path)
