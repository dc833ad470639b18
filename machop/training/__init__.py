"""Training shared by `ch train`, `ch test` and the train/test passes."""

from .module import MaseLightningModule
from .trainer import TrainSettings, evaluate, fit

__all__ = ["MaseLightningModule", "TrainSettings", "fit", "evaluate"]
