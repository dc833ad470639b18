"""Training shared by `ch train`, `ch test` and the train/test passes, and your own data for them."""

from .data import DataLoaders, batch_size_set, calibration_batch, labelled_batch
from .module import MaseLightningModule
from .outputs import logits_of
from .objective import DistillArgs, Objective, PriorArgs, build_objective, parse_objective_args
from .step import step_settings, train_step
from .trainer import check_accelerator, evaluate, fit

__all__ = ["DataLoaders", "DistillArgs", "Objective", "PriorArgs", "build_objective", "parse_objective_args", "MaseLightningModule", "batch_size_set", "calibration_batch", "check_accelerator", "evaluate", "fit", "labelled_batch",
           "logits_of", "step_settings", "train_step"]
