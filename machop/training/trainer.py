"""Fit and evaluate a MaseGraph's model with a Lightning Trainer.

Multi-device and multi-node runs go through Lightning's own strategies
(``strategy = "ddp"``): the trainer is configured here, Lightning launches the
processes.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

import torch
from torch import nn

from machop.config import ConfigError, TrainSettings, join
from machop.files import atomic_write

from .module import MaseLightningModule
from .objective import Objective

logger = logging.getLogger(__name__)


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def check_accelerator(s: TrainSettings, path: str = "") -> None:
    """Refuse, before any work, an accelerator, device count or precision this machine cannot run.

    Lightning would fail only when the trainer is built, minutes into a run.
    """
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = 1 if torch.backends.mps.is_available() else 0
    available = {"gpu": cuda, "cuda": cuda, "mps": mps}.get(s.accelerator)
    if available == 0:
        raise ConfigError(join(path, "accelerator"), f"{s.accelerator!r} asked for, but this machine has none; "
                                                     "use 'cpu' or 'auto'")
    if available is not None and isinstance(s.devices, int) and s.devices > available:
        raise ConfigError(join(path, "devices"), f"{s.devices} {s.accelerator} devices asked for, this machine has "
                                                 f"{available}")
    on_cpu = s.accelerator == "cpu" or (s.accelerator == "auto" and not cuda and not mps)
    if on_cpu and s.precision in ("16-mixed", "16", 16):
        raise ConfigError(join(path, "precision"), f"{s.precision!r} (float16 mixed precision) needs a GPU; "
                                                   "on a CPU use 'bf16-mixed' or '32-true'")


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer through `atomic_write`: an interrupted or failed save leaves no partial file.

    The checkpoint is serialised in memory first: torch.save's zip writer
    turns a full disk into a RuntimeError, a plain write keeps the OSError.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(path, buffer.getvalue())


def build_trainer(
    s: TrainSettings, callbacks: list | None = None, checkpointing: bool = False, progress: bool = True
) -> pl.Trainer:
    """A Lightning Trainer with the settings ``s``; `fit` and `evaluate` (val and test) both use it."""
    _quiet_lightning()
    return pl.Trainer(
        max_epochs=s.max_epochs,
        max_steps=s.max_steps,
        accelerator=s.accelerator,
        devices=s.devices,
        strategy=s.strategy,
        num_nodes=s.num_nodes,
        precision=s.precision,
        accumulate_grad_batches=s.accumulate_grad_batches,
        limit_train_batches=s.limit_train_batches,
        limit_val_batches=s.limit_val_batches,
        limit_test_batches=s.limit_test_batches,
        log_every_n_steps=s.log_every_n_steps,
        num_sanity_val_steps=0,  # the validation loop is ours and fixed; a sanity pass costs a validation batch
        callbacks=callbacks or [],
        plugins=[_AtomicCheckpointIO()],
        enable_progress_bar=progress,
        enable_model_summary=False,
        enable_checkpointing=checkpointing,
        logger=False,
        deterministic=False,
    )


class _ValidateAtMaxSteps(pl.Callback):
    """Validate when ``max_steps`` ends training inside an epoch.

    Lightning validates at epoch ends only, so a run stopped by ``max_steps``
    mid-epoch would have no ``val_acc`` and no best checkpoint; asking it to
    stop (as early stopping does) runs the validation loop first.
    """

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
            trainer.should_stop = True


class _TeacherOnce(pl.Callback):
    """Work out the teacher's logits for every training image once, on the training device, before the first epoch.

    For a data module with ``train_targets`` (`MaseDataModule`) whose
    training images do not change between epochs; otherwise the teacher
    runs on every batch, as `Objective.loss` does without them.
    """

    def __init__(self, objective: Objective):
        self.objective = objective
        self._attached = ExitStack()

    def setup(self, trainer, module, stage) -> None:
        own = getattr(trainer.datamodule, "train_targets", None)
        if stage == "fit" and callable(own):
            device = trainer.strategy.root_device
            if self._attached.enter_context(own(lambda x: self.objective.teacher_logits(x.to(device)))):
                logger.info("distillation: the teacher's logits of the training images worked out once")

    def teardown(self, trainer, module, stage) -> None:
        self._attached.close()

    def on_exception(self, trainer, module, exception) -> None:
        self._attached.close()


class _BestInMemory(pl.Callback):
    """Keep a CPU copy of the state dict with the best ``val_acc`` (no file written).

    ``eligible`` (if given): a validation counts only when it returns true.
    """

    def __init__(self, eligible: Callable[[], bool] | None = None):
        self.best: float | None = None
        self.state: dict | None = None
        self.eligible = eligible

    def on_validation_epoch_end(self, trainer, module):
        if trainer.sanity_checking or (self.eligible is not None and not self.eligible()):
            return
        acc = trainer.callback_metrics.get("val_acc")
        if acc is not None and (self.best is None or float(acc) > self.best):
            self.best = float(acc)
            self.state = {k: v.detach().cpu().clone() for k, v in module.model.state_dict().items()}


class _GatedCheckpoint(ModelCheckpoint):
    """Lightning's `ModelCheckpoint`, saving only when ``eligible()`` is true (None: always)."""

    def __init__(self, eligible: Callable[[], bool] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.eligible = eligible

    def _open(self) -> bool:
        return self.eligible is None or self.eligible()

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._open():
            super().on_train_epoch_end(trainer, module)

    def on_validation_end(self, trainer, module) -> None:
        if self._open():
            super().on_validation_end(trainer, module)


def fit(
    model: nn.Module,
    data_module: pl.LightningDataModule,
    s: TrainSettings,
    checkpoint_dir: Path | None = None,
    progress: bool = True,
    structure: str | None = None,
    callbacks: list | None = None,
    keep_best: Callable[[], bool] | None = None,
    objective: Objective | None = None,
) -> dict:
    """Train ``model`` in place; restore the weights of the epoch with the best ``val_acc``.

    ``checkpoint_dir``: where Lightning writes ``best.ckpt`` (None: no file,
    the best weights are kept in memory); ``structure``: the JSON record of
    the model's masks and codebooks written into that checkpoint;
    ``callbacks``: more Lightning callbacks (they run before the best-epoch
    bookkeeping); ``keep_best``: if given, a validation counts for the best
    epoch (kept in memory, written as ``best.ckpt``) only when it returns
    true (gradual pruning: once the masks are final), so that no earlier,
    different model wins; if none counts, the weights are those of the
    last step and ``best_val_acc`` is None. ``objective``: what training
    minimises beyond cross-entropy (distillation, a weight prior). Returns
    ``{"val_acc", "val_loss", "best_val_acc", "epochs", "world_size", "checkpoint"}``.
    """
    pl.seed_everything(s.seed, workers=True, verbose=False)
    module = MaseLightningModule(model, s.learning_rate, s.optimizer, s.weight_decay, s.max_epochs, structure,
                                 objective)
    callbacks = [*(callbacks or []), best := _BestInMemory(keep_best), _ValidateAtMaxSteps()]
    if objective is not None and objective.teacher is not None:
        callbacks.append(_TeacherOnce(objective))
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = _GatedCheckpoint(keep_best, dirpath=checkpoint_dir, filename="best", monitor="val_acc", mode="max",
                                save_top_k=1)
        callbacks.append(ckpt)
    trainer = build_trainer(s, callbacks, checkpointing=ckpt is not None, progress=progress)
    module.train()  # a model left in eval mode (e.g. by a notebook) would train its batch norms wrongly
    trainer.fit(module, datamodule=data_module)
    if best.state is not None:
        model.load_state_dict(best.state)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_acc", "val_loss")}
    metrics["best_val_acc"] = best.best
    metrics["epochs"] = trainer.current_epoch
    metrics["world_size"] = trainer.world_size
    metrics["checkpoint"] = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    return metrics


def evaluate(
    model: nn.Module, data_module: pl.LightningDataModule, s: TrainSettings, stage: str = "test", progress: bool = True
) -> dict:
    """``{"<stage>_acc", "<stage>_loss"}`` of ``model`` on the test (or val) split."""
    module = MaseLightningModule(model)
    trainer = build_trainer(s, progress=progress)
    run = trainer.test if stage == "test" else trainer.validate
    (results,) = run(module, datamodule=data_module, verbose=False)
    return {k: float(v) for k, v in results.items()}
