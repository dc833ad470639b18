"""`ch transform --config FILE.toml`: run the ``[passes.*]`` tables in file order.

Every table is validated before anything runs or is written. The run folder
gets the effective config, a checkpoint after each step, and ``report.json``
(each step's ``info`` plus the model's size figures).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

from machop.config import Config, ConfigError, to_toml
from machop.passes.graph import PASS_ARGS, PASSES, READ_ONLY
from machop.passes.graph.analysis.metadata import add_common_metadata, init_metadata
from machop.passes.graph.analysis.stats import weight_stats

from .common import build_graph, console, data_module, print_effective, run_dir
from .train import KEYS

logger = logging.getLogger(__name__)


def plan(config: Config) -> list[tuple[str, str, dict]]:
    """``(label, pass name, table)`` per step, validated; the ``pass`` key is taken out of the table."""
    steps = []
    for label, table in config.passes.items():
        name = table.get("pass", label)
        if not isinstance(name, str) or name not in PASSES:
            key = f"passes.{label}.pass" if "pass" in table else f"passes.{label}"
            raise ConfigError(key, f"unknown pass {name!r}; choose from {', '.join(sorted(PASSES))}")
        args = {k: v for k, v in table.items() if k != "pass"}
        PASS_ARGS[name](args, f"passes.{label}")
        steps.append((label, name, args))
    if not steps:
        raise ConfigError("passes", "no [passes.*] table: nothing to do")
    return steps


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def transform(config: Config, config_path: str | None, progress: bool = True) -> int:
    steps = plan(config)
    dm = data_module(config)
    graph = build_graph(config, dm, progress)
    init_metadata(graph)
    add_common_metadata(graph)
    print_effective(config, KEYS)
    out = run_dir(config, "transform")
    (out / "config.toml").write_text(to_toml({k: v for k, v in vars(config).items()}))
    graph.context.output_dir = out
    from machop.ir.serialize import save_graph

    report = {"config": config_path, "run_dir": str(out), "model": config.model, "dataset": config.dataset,
              "initial": weight_stats(graph), "steps": []}
    for i, (label, name, args) in enumerate(steps, 1):
        console.rule(f"[bold]step {i}/{len(steps)}: {label}[/bold] ({name})")
        graph.context.step = label
        start = time.perf_counter()
        graph, info = PASSES[name](graph, args)
        step = {"label": label, "pass": name, "seconds": round(time.perf_counter() - start, 2), "info": info,
                "weights": weight_stats(graph)}
        if name not in READ_ONLY:
            step["checkpoint"] = str(save_graph(graph, out / "checkpoints" / f"{i:02d}_{label}.mz", "mz"))
        report["steps"].append(step)
        write_json(out / "report.json", report)
    from machop.report import print_summary

    print_summary(report)
    console.print(f"Report: {out / 'report.json'}")
    return 0
