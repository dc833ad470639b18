"""Your own data for the data-driven passes: plain DataLoaders as a LightningDataModule, calibration samples,
and labelled samples for quick evaluations (`labelled_batch`)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from machop.config import ConfigError


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


_STAGES = {"train": "fit", "val": "validate", "test": "test"}


def labelled_batch(data_module: pl.LightningDataModule, samples: int, split: str = "val") -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``samples`` labelled inputs ``(x, y)`` of a split (fewer if the split holds fewer), in loader order.

    For passes that evaluate a model many times (sensitivity analysis): load
    once, then run a plain loop. ``split`` is ``"val"``, ``"test"`` or
    ``"train"``; the data module is set up for that stage first, as
    Lightning's Trainer would (``setup("validate")``, ...). ``"val"`` and
    ``"test"`` read ``val_dataloader()`` / ``test_dataloader()``. ``"train"``
    takes the module's own ``calibration_batch(n)`` when it returns
    ``(inputs, labels)`` (`MaseDataModule`: the first training images,
    normalised, not augmented), else the first batches of
    ``train_dataloader()`` (shuffled and augmented as training sees them).
    """
    if split not in _STAGES:
        raise ValueError(f"split must be one of {', '.join(_STAGES)}, got {split!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    setup = getattr(data_module, "setup", None)
    if callable(setup):
        setup(_STAGES[split])
    if split == "train":
        own = getattr(data_module, "calibration_batch", None)
        batch = own(samples) if callable(own) else None
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            return batch[0][:samples], batch[1][:samples]
    loader = getattr(data_module, f"{split}_dataloader")()
    xs, ys, count = [], [], 0
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"the {split} loader must yield (inputs, labels) batches, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(f"the {split} loader must yield tensors, got {type(x).__name__} and {type(y).__name__}")
        xs.append(x[: samples - count])
        ys.append(y[: samples - count])
        count += xs[-1].shape[0]
        if count >= samples:
            break
    if not xs:
        raise ValueError(f"the {split} loader is empty")
    return torch.cat(xs), torch.cat(ys)


@contextmanager
def batch_size_set(data_module: pl.LightningDataModule, batch_size: int | None, path: str) -> Iterator[None]:
    """The data module batching ``batch_size`` (None: as it is) for the duration; restored afterwards.

    ConfigError naming ``path`` (the TOML key that asked) for a module without a ``batch_size`` to set.
    """
    before = getattr(data_module, "batch_size", None)
    if batch_size is None or batch_size == before:
        yield
        return
    if before is None:
        raise ConfigError(path, f"the data module ({type(data_module).__name__}) has no batch_size to set; "
                                "batch your DataLoaders")
    data_module.batch_size = batch_size
    try:
        yield
    finally:
        data_module.batch_size = before
