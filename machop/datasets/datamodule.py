"""`MaseDataModule`: a registered data set as a Lightning data module.

The whole data set sits in memory as uint8 tensors. A batch is fetched with
one indexing operation (`ImageDataset.__getitems__`) and normalised (and, when
training, augmented) as a whole by the collate function (`BatchTransform`).
The loaders are ordinary ``torch.utils.data.DataLoader`` objects with a
sampler, so Lightning can swap in a ``DistributedSampler`` under DDP.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from .registry import DatasetInfo, get_dataset_info, get_dataset_spec
from .sources import load_splits, locate
from .transforms import BatchTransform, normalize

logger = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` with int64 labels ``(N,)``; batched indexing via ``__getitems__``.

    ``targets`` (``(N, ...)``, optional): a third item per sample, e.g. a
    frozen teacher's logits worked out once (`MaseDataModule.train_targets`).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if targets is not None and (targets.dim() < 1 or targets.shape[0] != images.shape[0]):
            raise ValueError(f"targets must have {images.shape[0]} rows, got {tuple(targets.shape)}")
        self.images, self.labels, self.targets = images, labels.to(torch.int64), targets
        # numpy views of the same memory: numpy indexing is single-threaded (see transforms.py)
        self._images, self._labels = self.images.numpy(), self.labels.numpy()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        item = self.images[index], self.labels[index]
        return item if self.targets is None else (*item, self.targets[index])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = np.asarray(indices, dtype=np.int64)
        batch = torch.from_numpy(self._images[idx]), torch.from_numpy(self._labels[idx])
        return batch if self.targets is None else (*batch, self.targets[torch.from_numpy(idx)])


class MaseDataModule(pl.LightningDataModule):
    """Train / validation / test loaders of a registered data set.

    Args:
        name: a key of ``machop.datasets.DATASETS``.
        batch_size: samples per batch (per process under DDP).
        data_dir: folder with the files; None searches ``$MACHOP_DATA_DIR`` and the
            defaults (see ``machop.datasets.sources``).
        seed: seeds the train/validation split, the shuffling and the augmentation.
        val_fraction: share of the training file held out for validation, in [0, 1).
        num_workers: DataLoader worker processes (0 is usually fastest: batches are cheap).
        train_limit / test_limit: keep only the first N samples of the training / test
            file (the split into train and validation happens after the cut).
        augment: random crop (4-pixel padding) + horizontal flip on training batches;
            None uses the data set's default (on for cifar10, off for the MNIST family).
    """

    def __init__(
        self,
        name: str,
        batch_size: int = 128,
        data_dir: str | None = None,
        seed: int = 0,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        train_limit: int | None = None,
        test_limit: int | None = None,
        augment: bool | None = None,
    ):
        super().__init__()
        self.spec = get_dataset_spec(name)
        self.info: DatasetInfo = get_dataset_info(name)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        for key, limit in (("train_limit", train_limit), ("test_limit", test_limit)):
            if limit is not None and limit < 1:
                raise ValueError(f"{key} must be a positive integer or None, got {limit}")
        self.name = name
        self.batch_size = batch_size
        self.data_dir = data_dir
        self.seed = seed
        self.val_fraction = val_fraction
        self.num_workers = num_workers
        self.train_limit = train_limit
        self.test_limit = test_limit
        self.augment = self.spec.augment if augment is None else augment
        self.train_set: ImageDataset | None = None
        self.train_indices: torch.Tensor | None = None  # positions in the training file, after setup
        self.val_indices: torch.Tensor | None = None
        self.val_set: ImageDataset | None = None
        self.test_set: ImageDataset | None = None
        # created in setup and kept, so later fits continue the random streams instead of repeating them
        self._shuffle_generator: torch.Generator | None = None
        self._train_transform: BatchTransform | None = None
        self._eval_transform = BatchTransform(self.spec.mean, self.spec.std)

    # ------------------------------------------------------------------ Lightning hooks
    def prepare_data(self) -> None:
        """Make sure the files exist (downloads MNIST / CIFAR-10 when missing and a network is there)."""
        locate(self.name, self.data_dir, download=True)

    def setup(self, stage: str | None = None) -> None:
        """Load the data into memory and split train/validation (once; later calls do nothing)."""
        if self.train_set is not None:
            return
        splits = load_splits(self.name, self.data_dir)
        images, labels = splits.train_images[: self.train_limit], splits.train_labels[: self.train_limit]
        n = len(labels)
        n_val = 0
        if self.val_fraction > 0 and n > 1:
            n_val = min(n - 1, max(1, round(n * self.val_fraction)))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
        val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
        self.train_indices, self.val_indices = train_idx, val_idx
        self.train_set = ImageDataset(images[train_idx], labels[train_idx])
        self.val_set = ImageDataset(images[val_idx], labels[val_idx])
        self.test_set = ImageDataset(splits.test_images[: self.test_limit], splits.test_labels[: self.test_limit])
        self._shuffle_generator = torch.Generator().manual_seed(self.seed)
        self._train_transform = BatchTransform(self.spec.mean, self.spec.std, augment=self.augment, seed=self.seed)
        sizes = len(self.train_set), len(self.val_set), len(self.test_set)
        logger.info("%s: %d train, %d val, %d test", self.name, *sizes)

    def train_dataloader(self) -> DataLoader:
        self._ensure_setup()
        self._train_transform.augment = self.augment  # follow later changes of dm.augment
        return self._loader(self.train_set, self._train_transform, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.val_set, self._eval_transform, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        self._ensure_setup()
        return self._loader(self.test_set, self._eval_transform, shuffle=False)

    # ------------------------------------------------------------------ helpers for passes
    def calibration_batch(self, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` training images (normalised, not augmented) and labels, e.g. for activation calibration."""
        self._ensure_setup()
        images, labels = self.train_set.images[:n], self.train_set.labels[:n]
        return normalize(images, self.spec.mean, self.spec.std), labels.clone()

    @contextmanager
    def train_targets(self, compute: Callable[[torch.Tensor], torch.Tensor],
                      batch_size: int = 1024) -> Iterator[bool]:
        """Within the block, training batches are ``(x, y, compute(x))``, ``compute`` run once per training image
        on entering rather than on every batch of every epoch (a frozen teacher's logits).

        Yields False and changes nothing when ``augment`` is on: then an
        image's input differs from epoch to epoch and nothing can be reused.
        """
        self._ensure_setup()
        if self.augment:
            yield False
            return
        images = self.train_set.images
        with torch.no_grad():
            targets = torch.cat([compute(normalize(images[i:i + batch_size], self.spec.mean, self.spec.std)).cpu()
                                 for i in range(0, len(images), batch_size)])
        self.train_set.targets = targets
        try:
            yield True
        finally:
            self.train_set.targets = None

    def dummy_input(self, batch: int = 1) -> torch.Tensor:
        """A zero float batch ``(batch, C, H, W)`` of the data set's shape, for tracing and shape metadata."""
        return torch.zeros(batch, self.info.in_channels, *self.info.image_size)

    # ------------------------------------------------------------------ internals
    def _ensure_setup(self) -> None:
        if self.train_set is None:
            self.setup()

    def _loader(self, dataset: ImageDataset, collate: BatchTransform, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=self._shuffle_generator if shuffle else None,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
