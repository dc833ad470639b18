"""`ch transform --config FILE.toml`: run the ``[passes.*]`` tables in file order.

Every table is validated before anything runs or is written. The run folder
gets the effective config, a checkpoint after each step, and ``report.json``
(each step's ``info``, its ``test_acc`` and the model's size figures).

A pass that chooses values itself (``sparsity = "auto"``, ``weight_bits =
"auto"``) returns its table with the choices written out in ``info["table"]``;
the run folder's ``config.toml`` is rewritten with it, so rerunning that file
repeats the run exactly.

Each step that changes the model is evaluated on the test split, so every
row shows the accuracy of that step's own model (a prune row shows the drop
before retraining). A train step measures its own (its ``test`` key); any
table may say ``evaluate = false`` to skip it, and its row then has none.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from machop.config import Config, ConfigError, to_toml
from machop.files import atomic_write
from machop.ir.serialize import save_graph
from machop.nn import weight_codes
from machop.passes.graph import REGISTRY
from machop.passes.graph.analysis.metadata import add_common_metadata, init_metadata
from machop.passes.graph.analysis.stats import weight_stats
from machop.report import print_summary, write_figures, write_markdown
from machop.passes.graph.transforms.prune.gradual import GradualPruning
from machop.training import batch_size_set, evaluate

from .common import build_graph, console, data_module, is_rank_zero, print_effective, run_dir
from .opening import resolve_load
from .train import KEYS

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """One ``[passes.LABEL]`` table: its pass, the table as the pass takes it, and its parsed arguments."""

    label: str
    name: str
    table: dict
    args: Any
    evaluate: bool = True  # evaluate the model after this step (train steps: their own ``test`` key)

    @property
    def path(self) -> str:
        return f"passes.{self.label}"


TRAIN_PASSES = ("train", "retrain")


def plan(config: Config) -> list[Step]:
    """The steps in file order, each table validated; the ``pass`` key is taken out of the table."""
    steps = []
    for label, table in config.passes.items():
        name = table.get("pass", label)
        if not isinstance(name, str) or name not in REGISTRY:
            key = f"passes.{label}.pass" if "pass" in table else f"passes.{label}"
            raise ConfigError(key, f"unknown pass {name!r}; choose from {', '.join(sorted(REGISTRY))}")
        evaluate = table.get("evaluate", True)
        if not isinstance(evaluate, bool):
            raise ConfigError(f"passes.{label}.evaluate", f"must be true or false, got {evaluate!r}")
        table = {k: v for k, v in table.items() if k not in ("pass", "evaluate")}
        if name in TRAIN_PASSES:  # a train step evaluates itself; evaluate = false turns that off
            table = table | ({"test": False} if not evaluate else {})
            evaluate = False
        steps.append(Step(label, name, table, REGISTRY[name].parse(table, f"passes.{label}"), evaluate))
    if not steps:
        raise ConfigError("passes", "no [passes.*] table: nothing to do")
    return steps


def _without_load(table: dict) -> dict:
    return {k: v for k, v in table.items() if k not in ("load_name", "load_type")}


def starting_point(config: Config, steps: list[Step], config_path: str | None,
                   load_on_command_line: bool = False) -> Config:
    """The seed's ``[passes.retrain] load_name``: the model the run starts from, loaded before step 1.

    Returns ``config`` with that checkpoint as its ``load_name`` (and the
    train table without it). A relative path is looked up in the working
    directory, then beside the config file. Two starting points in the
    file (the top level and a table, or two tables) are a config error;
    ``--load`` on the command line wins over the file's (defaults < file <
    command line): the tables' ``load_name`` are then dropped, with a log line.
    """
    named = [s for s in steps if s.name in TRAIN_PASSES and s.args.load_name is not None]
    if not named:
        return config
    if load_on_command_line:
        for step in named:
            logger.info("--load %s wins over %s.load_name %s", config.load_name, step.path, step.args.load_name)
            step.table = _without_load(step.table)
            step.args = REGISTRY[step.name].parse(step.table, step.path)
        labels = {s.label for s in named}
        passes = {label: _without_load(t) if label in labels else t for label, t in config.passes.items()}
        return replace(config, passes=passes)
    step = named[0]
    key = f"{step.path}.load_name"
    if len(named) > 1:
        raise ConfigError(f"{named[1].path}.load_name", f"a second starting model ({step.path}.load_name names the "
                                                        "first): a run starts from one model")
    if config.load_name is not None:
        raise ConfigError(key, f"the run already starts from the top-level load_name {config.load_name!r}: "
                               "two starting points; keep one (or give --load, which wins)")
    name = Path(step.args.load_name)
    places = [name] if name.is_absolute() else [Path.cwd() / name] + (
        [Path(config_path).resolve().parent / name] if config_path is not None else [])
    places = list(dict.fromkeys(places))  # the config may sit in the working directory
    found = next((p for p in places if p.is_file()), None)
    if found is None:
        raise ConfigError(key, f"no such file: {' nor '.join(str(p) for p in places)}")
    load_type = step.args.load_type
    step.table = _without_load(step.table)
    step.args = REGISTRY[step.name].parse(step.table, step.path)
    passes = {label: _without_load(t) if label == step.label else t for label, t in config.passes.items()}
    try:  # the file's type checked against the table's, as --load-type is
        return resolve_load(replace(config, load_name=str(found), load_type=load_type, passes=passes),
                            {"model", "dataset"})
    except ConfigError as e:
        raise ConfigError(key if e.key == "load_name" else f"{step.path}.load_type", e.message) from None


def check_plan(graph, steps: list[Step]) -> None:
    """Run every step's check against the graph as built, before step 1: a bad name fails in seconds."""
    earlier: list[str] = []
    for step in steps:
        check = REGISTRY[step.name].check
        if check is not None:
            check(graph, step.args, step.path, earlier)
        earlier.append(step.name)


def check_ramps(graph, steps: list[Step]) -> None:
    """Each gradual prune's ramp against the data (batches per epoch) and ``max_steps``, before step 1.

    Its graph check (`check_plan`) knows epochs only; with the data module
    set up, the ramp's end is computed in optimizer steps as Lightning
    will count them (one process: several count their own share, so that
    case is left to the trainer).
    """
    dm = graph.context.data_module
    for step in steps:
        gradual = getattr(step.args, "gradual", None) if step.name == "prune" else None
        if gradual is None:
            continue
        path = f"{step.path}.gradual"
        s = gradual.settings(graph.context.training, path)
        if s.devices != 1 or s.num_nodes != 1:
            continue
        asked = s.batch_size if gradual.training and "batch_size" in gradual.training else None
        with batch_size_set(dm, asked, f"{path}.training.batch_size"):
            batches = len(dm.train_dataloader())
        limit = s.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        total = math.ceil(batches / s.accumulate_grad_batches) * s.max_epochs
        if s.max_steps != -1:
            total = min(total, s.max_steps)
        GradualPruning(gradual, path, update=lambda *a: (0.0, 0.0)).plan(batches, s.accumulate_grad_batches, total)


def _test_acc(graph) -> float:
    """Test accuracy of the graph's model as it is now."""
    console.print("evaluating on the test split")
    ctx = graph.context
    return evaluate(graph.model, ctx.data_module, ctx.training, progress=ctx.progress_bar)["test_acc"]


def _histogram(graph, before: dict) -> list[dict]:
    """Each weight quantized since ``before`` (name → its values before the first quantize step): before, after,
    centroids; for `machop.figures.plot_weight_histogram`."""
    out = []
    for w in graph.weights():
        codes = weight_codes(w.module, w.tensor_name)
        if codes is not None and w.name in before and before[w.name].shape == w.stored().shape:
            out.append({"before": before[w.name], "after": w.value().clone(), "layer": w.name,
                        "centroids": codes.codebook if codes.kind == "kmeans" else None})
    return out


def _with_table(config: Config, label: str, table: dict) -> Config:
    """``config`` with step ``label``'s table replaced by ``table`` (its ``pass`` and ``evaluate`` keys kept)."""
    kept = {k: v for k, v in config.passes[label].items() if k in ("pass", "evaluate")}
    return replace(config, passes={k: kept | table if k == label else t for k, t in config.passes.items()})


def transform(config: Config, config_path: str | None, progress: bool = True,
              load_on_command_line: bool = False) -> int:
    steps = plan(config)
    config = starting_point(config, steps, config_path, load_on_command_line)
    graph = build_graph(config, progress)
    check_plan(graph, steps)
    graph.context.data_module = data_module(config)
    check_ramps(graph, steps)
    init_metadata(graph)
    add_common_metadata(graph)
    print_effective(config, KEYS)
    out = run_dir(config, "transform")
    writer = is_rank_zero()
    if writer:
        atomic_write(out / "config.toml", to_toml(vars(config)))
    graph.context.output_dir = out
    report = {"config": config_path, "run_dir": str(out), "model": config.model, "dataset": config.dataset,
              "initial": weight_stats(graph), "initial_test_acc": None, "steps": []}
    if graph.context.loaded_from is not None:  # the model the run starts from: the baseline of every drop
        report["initial_test_acc"] = _test_acc(graph)
    test_acc = report["initial_test_acc"]
    before_quantize = None  # every weight's values before the first quantize step, for the histogram
    for i, s in enumerate(steps, 1):
        console.rule(f"[bold]step {i}/{len(steps)}: {s.label}[/bold] ({s.name})")
        graph.context.step = s.label
        if s.name == "quantize" and before_quantize is None and graph.weights():
            before_quantize = {w.name: w.value().clone() for w in graph.weights()}
        start = time.perf_counter()
        graph, info = REGISTRY[s.name].fn(graph, s.table)
        seconds = round(time.perf_counter() - start, 2)
        changes_model = REGISTRY[s.name].changes_model
        if changes_model:  # a step that leaves the model as it was keeps the last figure
            test_acc = info.get("test_acc")
            if test_acc is None and s.evaluate:
                test_acc = _test_acc(graph)
        elif info.get("test_acc") is not None:
            test_acc = info["test_acc"]
        step = {"label": s.label, "pass": s.name, "seconds": seconds, "test_acc": test_acc, "info": info,
                "weights": weight_stats(graph)}
        if "table" in info:  # automatic choices written out
            config = _with_table(config, s.label, info["table"])
            if writer:
                atomic_write(out / "config.toml", to_toml(vars(config)))
        if writer and changes_model:
            step["checkpoint"] = str(save_graph(graph, out / "checkpoints" / f"{i:02d}_{s.label}.mz", "mz"))
        report["steps"].append(step)
        if writer:
            atomic_write(out / "report.json", json.dumps(report, indent=2, default=str))
    print_summary(report, console)
    if writer:
        histogram = _histogram(graph, before_quantize) if before_quantize else None
        figures = write_figures(report, out, histogram)
        write_markdown(report, out / "report.md", figures)
    console.print(f"Report: {out / 'report.md'}")
    return 0
