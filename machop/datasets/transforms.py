"""Whole-batch, vectorised image transforms on uint8 tensors ``(B, C, H, W)``.

No per-sample Python: a batch is cropped, flipped and normalised with a few
array operations, inside the DataLoader's collate function. The work is done
in numpy, which is single-threaded: batches are small, and torch's intra-op
threads made an epoch 10-100x slower on a busy machine (threads waiting for
each other), while numpy keeps an epoch of Fashion-MNIST under 0.1 s.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import get_worker_info


def crop_flip(
    images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Zero-pad by ``padding``, take the H×W window at (``top``, ``left``) per sample, mirror where ``flip``.

    ``top``/``left`` are int64 ``(B,)`` in ``[0, 2 * padding]``; ``flip`` is bool ``(B,)``.
    """
    x = images.numpy()
    b, c, h, w = x.shape
    padded = np.zeros((b, c, h + 2 * padding, w + 2 * padding), dtype=x.dtype)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # (B, C, 2p+1, 2p+1, H, W), a view
    out = windows[np.arange(b), :, top.numpy(), left.numpy()]  # (B, C, H, W): one window per sample
    f = flip.numpy()
    out[f] = out[f][..., ::-1]
    return torch.from_numpy(out)


def random_crop_flip(images: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with ``padding``-pixel zero padding plus horizontal flip with probability 1/2, per sample."""
    b = images.shape[0]
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    return crop_flip(images, padding, top, left, flip)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` → float32 ``(x / 255 - mean) / std`` per channel, through a 256-entry table."""
    x = images.numpy()
    mean_, std_ = np.asarray(mean, dtype=np.float64)[:, None], np.asarray(std, dtype=np.float64)[:, None]
    table = ((np.arange(256)[None, :] / 255.0 - mean_) / std_).astype(np.float32)  # (C, 256)
    out = np.empty(x.shape, dtype=np.float32)
    for c in range(x.shape[1]):  # channels, not samples
        out[:, c] = table[c][x[:, c]]
    return torch.from_numpy(out)


def _rank() -> int:
    """This process's distributed rank (0 without torch.distributed), so DDP ranks draw different crops."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class BatchTransform:
    """The DataLoader collate function: a uint8 batch → (normalised float32 images, int64 labels[, targets]).

    Takes what ``ImageDataset.__getitems__`` returns (``(images, labels)``, or
    with the data set's per-sample targets a third item, passed through) or a
    list of single samples. With ``augment``, applies
    `random_crop_flip` first. Its generator is seeded from ``seed`` (and the
    DDP rank) in the main process and from the DataLoader's per-worker seed in
    worker processes, so runs repeat and workers draw different crops.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], augment: bool = False, padding: int = 4, seed: int = 0
    ):
        self.mean, self.std = tuple(mean), tuple(std)
        self.augment, self.padding, self.seed = augment, padding, seed
        self._generator: torch.Generator | None = None
        self._generator_key: object = None

    def generator(self) -> torch.Generator:
        worker = get_worker_info()
        key = ("worker", worker.id, worker.seed) if worker is not None else ("main",)
        if self._generator is None or key != self._generator_key:
            seed = worker.seed if worker is not None else self.seed + 1_000_003 * _rank()
            self._generator = torch.Generator().manual_seed(seed)
            self._generator_key = key
        return self._generator

    def __call__(self, batch) -> tuple[torch.Tensor, ...]:
        if isinstance(batch, tuple) and len(batch) in (2, 3) and isinstance(batch[0], torch.Tensor):
            images, labels, *targets = batch
        else:  # a list of (image, label) or (image, label, target) samples
            images = torch.stack([s[0] for s in batch])
            labels = torch.as_tensor([int(s[1]) for s in batch], dtype=torch.int64)
            targets = [torch.stack([s[2] for s in batch])] if len(batch[0]) == 3 else []
        if self.augment:
            images = random_crop_flip(images, self.padding, self.generator())
        return normalize(images, self.mean, self.std), labels, *targets
