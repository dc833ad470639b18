"""`ch test`: evaluate a checkpoint or a compressed file on the test split."""

from __future__ import annotations

from machop.config import Config, ConfigError
from machop.training import evaluate

from .common import build_graph, console, data_module, print_effective


def test(config: Config, progress: bool = True) -> int:
    if config.load_name is None:
        raise ConfigError("--load", "is required: the file to evaluate (.ckpt, .pt, .mz or .mchz; its type is read "
                                    "from the file)")
    graph = build_graph(config, progress)
    dm = graph.context.data_module = data_module(config)
    print_effective(config, ["model", "dataset", "load_name", "load_type", "batch_size", "precision", "accelerator", "seed"])
    result = evaluate(graph.model, dm, config.training, progress=progress)
    console.print(f"test_acc {result['test_acc']:.4f}")
    console.print(f"test_loss {result['test_loss']:.4f}")
    return 0
