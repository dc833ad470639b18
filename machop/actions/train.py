"""`ch train`: train a registry model; keep the best checkpoint by val_acc."""

from __future__ import annotations

import json

from machop.config import Config
from machop.ir.serialize import describe_structure
from machop.training import fit

from .common import build_graph, console, data_module, print_effective, run_dir

KEYS = ["model", "dataset", "load_name", "load_type", "batch_size", "max_epochs", "max_steps", "learning_rate",
        "optimizer", "weight_decay", "accumulate_grad_batches", "precision", "accelerator", "devices", "strategy",
        "num_nodes", "seed", "project", "project_dir"]


def train(config: Config, progress: bool = True) -> int:
    graph = build_graph(config, progress)
    dm = graph.context.data_module = data_module(config)
    print_effective(config, KEYS)
    out = run_dir(config, "train")
    result = fit(graph.model, dm, config.training, out / "checkpoints", progress, json.dumps(describe_structure(graph)))
    console.print(f"val_acc {result['best_val_acc']:.4f} (best epoch), {result['world_size']} process(es)")
    console.print(f"Best checkpoint: {result['checkpoint']}")
    console.print(f"Test it: ./ch test {config.model} {config.dataset} --load {result['checkpoint']}")
    return 0
