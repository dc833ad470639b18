"""Retrain a (pruned, quantized) graph on PyTorch Lightning; evaluate it.

Masks and shared weights survive because training goes through their
parametrizations: a pruned weight is ``original * mask`` (its gradient is
masked), a k-means weight is ``centroids[index] * mask`` (the gradient is
summed per centroid; index and mask are buffers).

Seed-compatible config::

    [passes.retrain]            # or [passes.train]; any label with pass = "train"
    load_name = "NA"            # the model the run starts from, as in the seed (see below); "NA"/"None": none
    load_type = "pl"
    project = "NA"              # names this step's checkpoint folder: <run>/checkpoints/<project> (default: the label)
    baseline = false            # true: skip training (just evaluate) when the run loaded its model (load_name)
    teachers = 1                # with baseline = true: later steps distill from this many dense models (see below)
    test = true                 # evaluate on the test split afterwards (test_acc, test_loss in info)
    [passes.retrain.training]
    max_epochs = 1
    optimizer = "adam"          # adam | sgd | adamw
    learning_rate = 1e-4
    weight_decay = 0.0
    batch_size = 128
    [passes.retrain.distill]    # learn from the baseline's outputs too (machop.training.objective)
    teacher = "baseline"
    [passes.retrain.prior]      # soft weight-sharing: cluster the kept weights, prune what the zero component claims
    weight = 0.03
    [passes.retrain.trainer]
    accelerator = "auto"
    devices = 1
    strategy = "auto"           # "ddp" for multi-device / multi-node
    num_nodes = 1

``teachers = N`` (N > 1) trains N - 1 more dense models after the baseline,
each newly initialised and trained as the baseline was (seeds ``seed + 1``,
``seed + 2``, ...; checkpoints in ``<run>/checkpoints/<folder>_teacher<k>``,
also when the baseline was loaded): later steps' ``teacher = "baseline"``
then learns from the mean of all N models' logits, a teacher more accurate
than any one of them (Hinton et al. 2015). The baseline stays the model the
run measures against.

Unset values fall back to the run's settings (``graph.context.training``, from the top-level keys).

``load_name`` in a train table means what it meant in the seed: the
(pretrained) model the whole run starts from. `ch transform` loads it before
step 1, whichever step names it; a relative path is looked up in the working
directory, then beside the config file. Called on its own (a notebook), the
pass loads it into a model that no pass has changed yet, and refuses a model
that already has masks or codebooks (they would be computed on other weights).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from machop.config import ConfigError, TrainSettings, check_name, from_dict, join, pass_path
from machop.ir import MaseGraph
from machop.ir.serialize import describe_structure, load_weights
from machop.ir.teacher import check_teacher, find_teacher, fresh_copy, keep_teacher
from machop.nn import has_compression
from machop.training import build_objective, check_accelerator, evaluate, parse_objective_args, step_settings, train_step

logger = logging.getLogger(__name__)

MAX_TEACHERS = 16


@dataclass
class TrainArgs:
    """Arguments of the train pass. ``training`` and ``trainer`` override the run's `TrainSettings`
    (`TrainSettings.TRAINING_KEYS` and `TrainSettings.TRAINER_KEYS`)."""

    training: dict[str, Any] | None = None
    trainer: dict[str, Any] | None = None
    load_name: str | None = None
    load_type: Literal["pl", "pt", "mz"] | None = None
    project: str | None = None
    test: bool = True  # evaluate on the test split after training
    baseline: bool = False  # this step trains the dense baseline: skipped (only evaluated) when the run loaded one
    teachers: int = 1  # with baseline: dense models later steps distill from, the baseline and teachers - 1 more
    distill: dict[str, Any] | None = None  # machop.training.DistillArgs
    prior: dict[str, Any] | None = None  # machop.training.PriorArgs

    def validate(self, path: str) -> None:
        if self.load_name in ("None", "none"):  # the seed's spellings of no checkpoint
            self.load_name = None
        check_name(self.project, join(path, "project"))  # a folder under the run's checkpoints, never outside
        if self.load_name is not None and self.load_type is None:
            raise ConfigError(join(path, "load_type"), "is required with load_name; choose from pl, pt, mz")
        self.settings(TrainSettings(), path)  # check both tables now
        if self.baseline and (self.distill is not None or self.prior is not None):
            raise ConfigError(join(path, "distill" if self.distill is not None else "prior"),
                              "does not go with baseline = true: the baseline is what later steps learn from")
        parse_objective_args(self.distill, self.prior, path)
        if not 1 <= self.teachers <= MAX_TEACHERS:
            raise ConfigError(join(path, "teachers"), f"must be 1 to {MAX_TEACHERS}, got {self.teachers}")
        if self.teachers > 1 and not self.baseline:
            raise ConfigError(join(path, "teachers"), "goes with baseline = true: the teachers are dense models "
                                                      "trained beside the baseline")

    def settings(self, base: TrainSettings, path: str = "passes.train") -> TrainSettings:
        """``base`` with the ``trainer`` table, then the ``training`` table, applied."""
        return step_settings(base, self.trainer, self.training, path)


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


def check_train_args(graph: MaseGraph, args: TrainArgs, path: str, earlier: list[str] = ()) -> None:
    """Refuse a train step whose ``load_name`` file does not exist, or whose trainer this machine cannot run."""
    if args.load_name is not None and not Path(args.load_name).is_file():
        raise ConfigError(join(path, "load_name"), f"no such file: {args.load_name}")
    check_accelerator(args.settings(graph.context.training, path), join(path, "trainer"))
    check_teacher(graph, args.distill, path, earlier)


def train_transform_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Train ``graph.model`` in place on ``graph.context.data_module``.

    The weights of the epoch with the best ``val_acc`` are kept. ``info``:
    ``val_acc``, ``val_loss``, ``best_val_acc``, ``epochs`` and, unless
    ``test = false``, ``test_acc`` and ``test_loss``.
    """
    path = pass_path(graph.context.step, "passes.train")
    args = parse_train_args(pass_args, path)
    ctx = graph.context
    s = args.settings(ctx.training, path)
    data = ctx.require_data("train")
    folder = args.project or ctx.step or "train"
    if args.baseline and ctx.loaded_from is not None:
        logger.info("baseline loaded from %s: not training it again", ctx.loaded_from)
        info = {"skipped": True, **evaluate(graph.model, data, s, progress=ctx.progress_bar)}
        return graph, info | _keep_teachers(graph, args, s, data, path, folder, info["test_acc"])
    if args.load_name is not None:
        if has_compression(graph.model):
            raise ConfigError(join(path, "load_name"), "is the model a run starts from, but this model already has "
                                                       "masks or codebooks: load it before pruning or quantizing")
        load_weights(graph, args.load_name, args.load_type)
    distill, prior = parse_objective_args(args.distill, args.prior, path)
    teacher = find_teacher(graph, distill.teacher, join(path, "distill.teacher")) if distill else None
    objective = build_objective(graph.weights(), teacher, distill, prior)
    info = train_step(graph.model, data, s, training=args.training, path=path, output_dir=ctx.output_dir,
                      folder=folder, structure=json.dumps(describe_structure(graph)),
                      test=args.test, progress=ctx.progress_bar, objective=objective)
    if args.baseline:
        info |= _keep_teachers(graph, args, s, data, path, folder, info.get("test_acc"))
    logger.info("trained %d epoch(s): best val_acc %.4f", info["epochs"], info["best_val_acc"] or float("nan"))
    return graph, info


def _keep_teachers(graph: MaseGraph, args: TrainArgs, s: TrainSettings, data: Any, path: str, folder: str,
                   baseline_acc: float | None) -> dict:
    """Keep the baseline as the run's teacher, with ``args.teachers - 1`` more dense models trained as it was
    from new initialisations; returns their figures for ``info`` (none for a lone baseline)."""
    if args.teachers == 1:
        keep_teacher(graph)
        return {}
    ctx = graph.context
    structure = json.dumps(describe_structure(graph))
    others, figures = [], {"count": args.teachers, "baseline": baseline_acc}
    for k in range(2, args.teachers + 1):
        seed = s.seed + k - 1
        logger.info("teacher %d of %d: a dense model trained as the baseline, from seed %d", k, args.teachers, seed)
        model = fresh_copy(graph.model, seed)
        trained = train_step(model, data, replace(s, seed=seed), training=args.training, path=path,
                             output_dir=ctx.output_dir, folder=f"{folder}_teacher{k}", structure=structure,
                             test=args.test, progress=ctx.progress_bar)
        others.append(model)
        figures[f"teacher{k}"] = trained.get("test_acc")
    keep_teacher(graph, others)
    if args.test:
        figures["together"] = evaluate(ctx.teacher, data, s, progress=ctx.progress_bar)["test_acc"]
    return {"teachers": figures}  # test_acc of each and of their ensemble


def test_pass(graph: MaseGraph, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Evaluate ``graph.model``: ``info`` = ``{"test_acc", "test_loss"}`` (or ``val_*``)."""
    args = parse_test_args(pass_args, pass_path(graph.context.step, "passes.test"))
    data = graph.context.require_data("test")
    return graph, evaluate(graph.model, data, graph.context.training, stage=args.split, progress=graph.context.progress_bar)
