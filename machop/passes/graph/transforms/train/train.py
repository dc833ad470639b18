"""Retrain a (pruned, quantized) graph on PyTorch Lightning; evaluate it.

Masks and shared weights survive because training goes through their
parametrizations: a pruned weight is ``original * mask`` (its gradient is
masked), a k-means weight is ``centroids[index] * mask`` (the gradient is
summed per centroid; index and mask are buffers).

Seed-compatible config::

    [passes.retrain]            # or [passes.train]; any label with pass = "train"
    load_name = "NA"            # optional checkpoint whose weights are loaded first
    load_type = "pl"
    baseline = false            # true: skip training (just evaluate) when the run loaded its model (load_name)
    test = true                 # evaluate on the test split afterwards (test_acc, test_loss in info)
    [passes.retrain.training]
    max_epochs = 1
    optimizer = "adam"          # adam | sgd | adamw
    learning_rate = 1e-4
    weight_decay = 0.0
    batch_size = 128
    [passes.retrain.trainer]
    accelerator = "auto"
    devices = 1
    strategy = "auto"           # "ddp" for multi-device / multi-node
    num_nodes = 1

Unset values fall back to the run's top-level keys (``graph.context``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal

from machop.config import ConfigError, check_range, from_dict, join
from machop.ir import MaseGraph
from machop.training import TrainSettings, evaluate, fit

logger = logging.getLogger(__name__)


@dataclass
class TrainingArgs:
    max_epochs: int | None = None
    optimizer: Literal["adam", "sgd", "adamw"] | None = None
    learning_rate: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None

    def validate(self, path: str) -> None:
        check_range(self.max_epochs, join(path, "max_epochs"), 1, 10_000)
        check_range(self.batch_size, join(path, "batch_size"), 1, 1 << 20)
        check_range(self.weight_decay, join(path, "weight_decay"), 0.0, 1.0)
        if self.learning_rate is not None and not 0 < self.learning_rate <= 10:
            raise ConfigError(join(path, "learning_rate"), f"must be in (0, 10], got {self.learning_rate}")


@dataclass
class TrainerArgs:
    max_epochs: int | None = None
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] | None = None
    devices: int | Literal["auto"] | None = None
    strategy: Literal["auto", "ddp", "ddp_spawn", "fsdp", "ddp_find_unused_parameters_true"] | None = None
    num_nodes: int | None = None
    limit_train_batches: float | int | None = None
    log_every_n_steps: int | None = None

    def validate(self, path: str) -> None:
        check_range(self.max_epochs, join(path, "max_epochs"), 1, 10_000)
        if isinstance(self.devices, int):
            check_range(self.devices, join(path, "devices"), 1, 1024)
        check_range(self.num_nodes, join(path, "num_nodes"), 1, 1 << 16)


@dataclass
class TrainArgs:
    """Arguments of the train pass: ``training`` (optimisation) and ``trainer`` (Lightning) tables."""

    training: TrainingArgs = field(default_factory=TrainingArgs)
    trainer: TrainerArgs = field(default_factory=TrainerArgs)
    load_name: str | None = None
    load_type: Literal["pl", "pt", "mz"] | None = None
    test: bool = True  # evaluate on the test split after training
    baseline: bool = False  # this step trains the dense baseline: skipped (only evaluated) when the run loaded one

    def validate(self, path: str) -> None:
        if self.load_name is not None and self.load_type is None:
            raise ConfigError(join(path, "load_type"), "is required with load_name; choose from pl, pt, mz")


@dataclass
class TestArgs:
    """Arguments of the test pass: which split to evaluate."""

    split: Literal["test", "val"] = "test"


def parse_train_args(pass_args: dict | None, path: str = "passes.train") -> TrainArgs:
    """Validate a train table (``pass_args`` is not modified)."""
    return from_dict(TrainArgs, pass_args, path)


def parse_test_args(pass_args: dict | None, path: str = "passes.test") -> TestArgs:
    """Validate a test table (``pass_args`` is not modified)."""
    return from_dict(TestArgs, pass_args, path)


def settings_from_context(graph: MaseGraph, args: TrainArgs | None = None) -> TrainSettings:
    """Training settings: the pass's tables over the run's top-level values."""
    ctx = graph.context
    s = TrainSettings(
        max_epochs=ctx.max_epochs,
        optimizer=ctx.optimizer,
        learning_rate=ctx.learning_rate,
        weight_decay=ctx.weight_decay,
        accelerator=ctx.accelerator,
        devices=ctx.devices,
        strategy=ctx.strategy,
        num_nodes=ctx.num_nodes,
        limit_train_batches=ctx.limit_train_batches,
        log_every_n_steps=ctx.log_every_n_steps,
        seed=ctx.seed,
        progress_bar=ctx.progress_bar,
    )
    if args is None:
        return s
    overrides = {k: v for k, v in vars(args.trainer).items() if v is not None}
    overrides |= {k: v for k, v in vars(args.training).items() if v is not None and k != "batch_size"}
    return replace(s, **overrides)


def train_transform_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Train ``graph.model`` in place on ``graph.context.data_module``.

    The weights of the epoch with the best ``val_acc`` are kept. ``info``:
    ``val_acc``, ``val_loss``, ``best_val_acc``, ``epochs`` and, unless
    ``test = false``, ``test_acc`` and ``test_loss``.
    """
    args = parse_train_args(pass_args)
    data = graph.context.require_data("train")
    if args.baseline and graph.context.loaded_from is not None:
        logger.info("baseline loaded from %s: not training it again", graph.context.loaded_from)
        return graph, {"skipped": True, **evaluate(graph, data, settings_from_context(graph, args))}
    if args.load_name is not None:
        from machop.ir.serialize import load_weights

        load_weights(graph, args.load_name, args.load_type)
    s = settings_from_context(graph, args)
    if graph.context.output_dir is not None:
        s = replace(s, checkpoint_dir=graph.context.output_dir / "checkpoints" / (graph.context.step or "train"))
    batch_size = data.batch_size
    if args.training.batch_size is not None:
        data.batch_size = args.training.batch_size
    try:
        info = fit(graph, data, s)
        if args.test:
            info |= evaluate(graph, data, s)
    finally:
        data.batch_size = batch_size
    logger.info("trained %d epoch(s): best val_acc %.4f", info["epochs"], info["best_val_acc"] or float("nan"))
    return graph, info


def test_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Evaluate ``graph.model``: ``info`` = ``{"test_acc", "test_loss"}`` (or ``val_*``)."""
    args = parse_test_args(pass_args)
    data = graph.context.require_data("test")
    return graph, evaluate(graph, data, settings_from_context(graph), stage=args.split)
