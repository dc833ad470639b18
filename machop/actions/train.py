"""`ch train`: train a registry model; keep the best checkpoint by val_acc."""

from __future__ import annotations

from machop.config import Config
from machop.training import TrainSettings, fit

from .common import build_graph, console, data_module, print_effective, run_dir

KEYS = ["model", "dataset", "load_name", "load_type", "batch_size", "max_epochs", "learning_rate", "optimizer",
        "weight_decay", "accelerator", "devices", "strategy", "num_nodes", "seed", "project", "project_dir"]


def settings(config: Config, progress: bool, **extra) -> TrainSettings:
    return TrainSettings(
        max_epochs=config.max_epochs, optimizer=config.optimizer, learning_rate=config.learning_rate,
        weight_decay=config.weight_decay, accelerator=config.accelerator, devices=config.devices,
        strategy=config.strategy, num_nodes=config.num_nodes, limit_train_batches=config.limit_train_batches,
        log_every_n_steps=config.log_every_n_steps, progress_bar=progress, seed=config.seed, **extra,
    )


def train(config: Config, progress: bool = True) -> int:
    dm = data_module(config)
    graph = build_graph(config, dm, progress)
    print_effective(config, KEYS)
    out = run_dir(config, "train")
    result = fit(graph, dm, settings(config, progress, checkpoint_dir=out / "checkpoints"))
    console.print(f"val_acc {result['best_val_acc']:.4f} (best epoch), {result['world_size']} process(es)")
    console.print(f"Best checkpoint: {result['checkpoint']}")
    console.print(f"Test it: ./ch test --model {config.model} --dataset {config.dataset} "
                  f"--load {result['checkpoint']} --load-type pl")
    return 0
