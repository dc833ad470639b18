"""The one LightningModule behind `ch train`, `ch test` and the train/test passes."""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from .objective import Objective
from .outputs import logits_of

logger = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd", "adamw")
class MaseLightningModule(pl.LightningModule):
    """Image classification: cross-entropy, accuracy, one optimizer, cosine learning-rate decay.

    Logs ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``test_loss``, ``test_acc``.
    ``structure`` (a JSON string from `machop.ir.serialize.describe_structure`) is
    written into every checkpoint so that a pruned or quantized model can be
    rebuilt from a ``.ckpt`` without pickled code.
    """

    def __init__(
        self,
        model: nn.Module,
        learning_rate: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        max_epochs: int = 1,
        structure: str | None = None,
        objective: Objective | None = None,
    ):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        self.model = model
        self.learning_rate = learning_rate
        self.optimizer_name = optimizer
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.structure = structure
        self.objective = objective  # distillation and a weight prior, on training batches only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))

    def _step(self, batch: tuple[torch.Tensor, ...], stage: str) -> torch.Tensor:
        x, y, *teacher_logits = batch  # a third item: the teacher's logits, worked out before training
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if stage == "train" and self.objective is not None:
            parts = self.objective.loss(loss, logits, x, *teacher_logits)
            loss = parts.pop("loss")
            for name, value in parts.items():
                self.log(f"train_{name}", value, on_step=False, on_epoch=True, batch_size=len(y))
        acc = (logits.argmax(dim=1) == y).float().mean()
        on_step = stage == "train"
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        own = {id(p) for p in self.objective.parameters()} if self.objective is not None else set()
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in own]
        if self.objective is not None:
            params = [{"params": params}, *self.objective.param_groups(self.learning_rate)]
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(params, lr=self.learning_rate, momentum=0.9, weight_decay=self.weight_decay)
        elif self.optimizer_name == "adamw":
            opt = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=self.learning_rate, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs))
        return {"optimizer": opt, "lr_scheduler": sched}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.structure is not None:
            checkpoint["machop_structure"] = self.structure
        for key in [k for k in checkpoint.get("state_dict", {}) if k.startswith("objective.")]:
            del checkpoint["state_dict"][key]  # the prior's mixture is the step's, not the model's
