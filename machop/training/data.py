"""Your own data for the data-driven passes: plain DataLoaders as a LightningDataModule, and calibration samples."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader


class DataLoaders(pl.LightningDataModule):
    """Wrap your ``DataLoader``s so that train, test and calibration passes can use them.

    ``graph.context.data_module = DataLoaders(train_loader, val_loader, test_loader)``.
    Batches are ``(inputs, labels)``; ``val`` defaults to ``test`` and ``test``
    to ``val``, so two loaders are enough.
    """

    def __init__(self, train: DataLoader, val: DataLoader | None = None, test: DataLoader | None = None):
        super().__init__()
        if val is None and test is None:
            raise ValueError("DataLoaders needs a validation or a test loader besides the training loader")
        self.loaders = {"train": train, "val": val if val is not None else test, "test": test if test is not None else val}

    def train_dataloader(self) -> DataLoader:
        return self.loaders["train"]

    def val_dataloader(self) -> DataLoader:
        return self.loaders["val"]

    def test_dataloader(self) -> DataLoader:
        return self.loaders["test"]


def calibration_batch(data_module: pl.LightningDataModule, samples: int) -> torch.Tensor:
    """``samples`` inputs to calibrate on: the data module's own ``calibration_batch(n)`` if it has one,
    else the first inputs of its training loader (fewer if the loader holds fewer)."""
    own = getattr(data_module, "calibration_batch", None)
    if callable(own):
        batch = own(samples)
        return batch[0] if isinstance(batch, (tuple, list)) else batch
    taken, count = [], 0
    for batch in data_module.train_dataloader():
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"calibration needs tensor inputs; the training loader yields {type(x).__name__}")
        taken.append(x[: samples - count])
        count += taken[-1].shape[0]
        if count >= samples:
            break
    if not taken:
        raise ValueError("calibration: the training loader is empty")
    return torch.cat(taken)
