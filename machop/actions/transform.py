"""`ch transform --config FILE.toml`: run the ``[passes.*]`` tables in file order.

Every table is validated before anything runs or is written. The run folder
gets the effective config, a checkpoint after each step, and ``report.json``
(each step's ``info`` plus the model's size figures).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from machop.config import Config, ConfigError, to_toml
from machop.files import atomic_write
from machop.ir.serialize import save_graph
from machop.nn import Weight, weight_codes
from machop.passes.graph import REGISTRY
from machop.passes.graph.analysis.metadata import add_common_metadata, init_metadata
from machop.passes.graph.analysis.stats import weight_stats
from machop.report import print_summary, write_figures, write_markdown

from .common import build_graph, console, data_module, is_rank_zero, print_effective, run_dir
from .train import KEYS

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """One ``[passes.LABEL]`` table: its pass, the table as the pass takes it, and its parsed arguments."""

    label: str
    name: str
    table: dict
    args: Any

    @property
    def path(self) -> str:
        return f"passes.{self.label}"


def plan(config: Config) -> list[Step]:
    """The steps in file order, each table validated; the ``pass`` key is taken out of the table."""
    steps = []
    for label, table in config.passes.items():
        name = table.get("pass", label)
        if not isinstance(name, str) or name not in REGISTRY:
            key = f"passes.{label}.pass" if "pass" in table else f"passes.{label}"
            raise ConfigError(key, f"unknown pass {name!r}; choose from {', '.join(sorted(REGISTRY))}")
        table = {k: v for k, v in table.items() if k != "pass"}
        steps.append(Step(label, name, table, REGISTRY[name].parse(table, f"passes.{label}")))
    if not steps:
        raise ConfigError("passes", "no [passes.*] table: nothing to do")
    return steps


def check_plan(graph, steps: list[Step]) -> None:
    """Run every step's check against the graph as built, before step 1: a bad name fails in seconds."""
    earlier: list[str] = []
    for step in steps:
        check = REGISTRY[step.name].check
        if check is not None:
            check(graph, step.args, step.path, earlier)
        earlier.append(step.name)


def _largest_weight(graph) -> Weight:
    return max(graph.weights(), key=lambda w: w.stored().numel())


def _histogram(graph, name: str, before) -> dict:
    w = next(w for w in graph.weights() if w.name == name)
    codes = weight_codes(w.module, w.tensor_name)
    return {"before": before, "after": w.value().clone(), "layer": name,
            "centroids": codes.codebook if codes is not None and codes.kind == "kmeans" else None}


def transform(config: Config, config_path: str | None, progress: bool = True) -> int:
    steps = plan(config)
    graph = build_graph(config, progress)
    check_plan(graph, steps)
    graph.context.data_module = data_module(config)
    init_metadata(graph)
    add_common_metadata(graph)
    print_effective(config, KEYS)
    out = run_dir(config, "transform")
    writer = is_rank_zero()
    if writer:
        atomic_write(out / "config.toml", to_toml(vars(config)))
    graph.context.output_dir = out
    report = {"config": config_path, "run_dir": str(out), "model": config.model, "dataset": config.dataset,
              "initial": weight_stats(graph), "steps": []}
    before_quantize = None  # the largest layer's weights before the first quantize step, for the histogram
    for i, (label, name, args) in enumerate(((s.label, s.name, s.table) for s in steps), 1):
        console.rule(f"[bold]step {i}/{len(steps)}: {label}[/bold] ({name})")
        graph.context.step = label
        if name == "quantize" and before_quantize is None and graph.weights():
            largest = _largest_weight(graph)
            before_quantize = largest.name, largest.value().clone()
        start = time.perf_counter()
        graph, info = REGISTRY[name].fn(graph, args)
        step = {"label": label, "pass": name, "seconds": round(time.perf_counter() - start, 2), "info": info,
                "weights": weight_stats(graph)}
        if writer and REGISTRY[name].changes_model:
            step["checkpoint"] = str(save_graph(graph, out / "checkpoints" / f"{i:02d}_{label}.mz", "mz"))
        report["steps"].append(step)
        if writer:
            atomic_write(out / "report.json", json.dumps(report, indent=2, default=str))
    print_summary(report, console)
    if writer:
        histogram = _histogram(graph, *before_quantize) if before_quantize else None
        figures = write_figures(report, out, histogram)
        write_markdown(report, out / "report.md", figures)
    console.print(f"Report: {out / 'report.md'}")
    return 0
