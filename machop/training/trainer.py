"""Fit and evaluate a MaseGraph's model with a Lightning Trainer.

Multi-device and multi-node runs go through Lightning's own strategies
(``strategy = "ddp"``): the trainer is configured here, Lightning launches the
processes.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint

from .module import MaseLightningModule, structure_json

logger = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Everything one training run needs besides the model and the data."""

    max_epochs: int = 1
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    limit_train_batches: float | int = 1.0
    log_every_n_steps: int = 50
    checkpoint_dir: Path | None = None  # None: no checkpoint files, best weights kept in memory
    progress_bar: bool = True
    seed: int = 0


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def build_trainer(s: TrainSettings, callbacks: list | None = None, max_epochs: int | None = None) -> pl.Trainer:
    _quiet_lightning()
    return pl.Trainer(
        max_epochs=max_epochs if max_epochs is not None else s.max_epochs,
        accelerator=s.accelerator,
        devices=s.devices,
        strategy=s.strategy,
        num_nodes=s.num_nodes,
        limit_train_batches=s.limit_train_batches,
        log_every_n_steps=s.log_every_n_steps,
        callbacks=callbacks or [],
        enable_progress_bar=s.progress_bar,
        enable_model_summary=False,
        enable_checkpointing=s.checkpoint_dir is not None,
        logger=False,
        deterministic=False,
    )


class _BestInMemory(pl.Callback):
    """Keep a CPU copy of the state dict with the best ``val_acc`` (no file written)."""

    def __init__(self):
        self.best: float | None = None
        self.state: dict | None = None

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking:
            return
        acc = trainer.callback_metrics.get("val_acc")
        if acc is not None and (self.best is None or float(acc) > self.best):
            self.best = float(acc)
            self.state = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}


def fit(graph, data_module, s: TrainSettings) -> dict:
    """Train ``graph.model`` in place; restore the weights of the epoch with the best ``val_acc``.

    Returns ``{"val_acc", "val_loss", "best_val_acc", "epochs", "checkpoint"}``.
    """
    pl.seed_everything(s.seed, workers=True, verbose=False)
    module = MaseLightningModule(
        graph.model, s.learning_rate, s.optimizer, s.weight_decay, s.max_epochs, structure_json(graph)
    )
    callbacks: list = [best := _BestInMemory()]
    ckpt = None
    if s.checkpoint_dir is not None:
        ckpt = ModelCheckpoint(dirpath=s.checkpoint_dir, filename="best", monitor="val_acc", mode="max", save_top_k=1)
        callbacks.append(ckpt)
    trainer = build_trainer(s, callbacks)
    module.train()  # a model left in eval mode (e.g. by a notebook) would train its batch norms wrongly
    trainer.fit(module, datamodule=data_module)
    if best.state is not None:
        graph.model.load_state_dict(best.state)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_acc", "val_loss")}
    metrics["best_val_acc"] = best.best
    metrics["epochs"] = trainer.current_epoch
    metrics["world_size"] = trainer.world_size
    metrics["checkpoint"] = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    return metrics


def evaluate(graph, data_module, s: TrainSettings, stage: str = "test") -> dict:
    """``{"<stage>_acc", "<stage>_loss"}`` of ``graph.model`` on the test (or val) split."""
    module = MaseLightningModule(graph.model)
    trainer = build_trainer(s)
    run = trainer.test if stage == "test" else trainer.validate
    (results,) = run(module, datamodule=data_module, verbose=False)
    return {k: float(v) for k, v in results.items()}
