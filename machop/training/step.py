"""One pipeline step's training: the train pass and gradual pruning both train through `train_step`.

A step that trains (``[passes.retrain]``, a prune step's ``gradual`` table)
has its own ``trainer`` and ``training`` tables over the run's settings
(`step_settings`), writes its best epoch to
``<output_dir>/checkpoints/<folder>/best.ckpt``, trains at its own
``batch_size`` only when its ``training`` table sets one, and is evaluated on
the test split afterwards (with the run's batch size, so that
``limit_test_batches`` covers the same images at every step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytorch_lightning as pl
from torch import nn

from machop.config import TrainSettings, join

from .data import batch_size_set
from .objective import Objective
from .trainer import evaluate, fit


def step_settings(base: TrainSettings, trainer: dict[str, Any] | None, training: dict[str, Any] | None,
                  path: str) -> TrainSettings:
    """``base`` with a step's ``trainer`` table, then its ``training`` table, applied (ConfigError naming the key)."""
    s = base.override(trainer, TrainSettings.TRAINER_KEYS, join(path, "trainer"))
    return s.override(training, TrainSettings.TRAINING_KEYS, join(path, "training"))


def train_step(
    model: nn.Module,
    data_module: pl.LightningDataModule,
    s: TrainSettings,
    *,
    training: dict[str, Any] | None,
    path: str,
    output_dir: Path | None,
    folder: str,
    structure: str,
    test: bool = True,
    progress: bool = True,
    callbacks: list[pl.Callback] | None = None,
    keep_best: Callable[[], bool] | None = None,
    before_test: Callable[[], None] | None = None,
    objective: Objective | None = None,
) -> dict:
    """Train ``model`` in place with `fit`, then evaluate it on the test split when ``test``.

    ``s``: the step's settings (`step_settings`); ``training``: the step's
    own training table (its ``batch_size``, if set, replaces the data
    module's while training; ConfigError at ``<path>.training.batch_size``
    if the data module cannot change it); ``output_dir``: the run's folder
    (None: no checkpoint file); ``structure``: the model's masks and
    codebooks as JSON, written into the checkpoint; ``callbacks`` and
    ``keep_best``: as `fit`'s; ``before_test``: run between training and
    testing (gradual pruning's last mask update when training stopped early);
    ``objective``: distillation and a weight prior (`build_objective`), whose
    ``finish`` runs right after training (its figures join the result).

    Returns `fit`'s figures (``val_acc``, ``val_loss``, ``best_val_acc``,
    ``epochs``, ``world_size``, ``checkpoint``) plus, when ``test``,
    ``test_acc`` and ``test_loss``.
    """
    checkpoint_dir = output_dir / "checkpoints" / folder if output_dir is not None else None
    asked = s.batch_size if training and "batch_size" in training else None
    with batch_size_set(data_module, asked, join(path, "training.batch_size")):
        figures = fit(model, data_module, s, checkpoint_dir, progress, structure, callbacks=callbacks,
                      keep_best=keep_best, objective=objective)
    if objective is not None:
        figures |= objective.finish()
    if before_test is not None:
        before_test()
    if test:
        figures |= evaluate(model, data_module, s, progress=progress)
    return figures
