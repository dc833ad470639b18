"""The data sets machop knows: their shape (`DatasetInfo`) and how to read them (`DatasetSpec`).

This module imports neither Lightning nor the file loaders, so the config
checker can look names up cheaply.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .colored import PALETTE


@dataclass
class DatasetInfo:
    """What a model needs to know about its data. JSON round-trips via `dataclasses.asdict`."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        # JSON turns the tuple into a list; keep the type stable for comparisons
        self.image_size = tuple(int(s) for s in self.image_size)


@dataclass(frozen=True)
class DatasetSpec:
    """How to build one registered data set.

    Attributes:
        info: shape of the data.
        source: which files it is read from (a key of ``machop.datasets.sources.SOURCES``).
        mean, std: per-channel normalisation constants on the [0, 1] scale.
        colored: whether grayscale images are colourised into 3 channels (see `machop.datasets.colored`).
        augment: default training augmentation (random crop with 4-pixel padding + horizontal flip).
    """

    info: DatasetInfo
    source: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    colored: bool = False
    augment: bool = False


def colored_stats(mean: float, std: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of a colourised set, from the grayscale set's mean/std.

    Colours are spread evenly over the palette and independent of the image,
    so E[x_c] = E[g]·avg(p_c) and E[x_c²] = E[g²]·avg(p_c²).
    """
    p = [[v / 255 for v in colour] for colour in PALETTE]
    means, stds = [], []
    for c in range(3):
        p1 = sum(row[c] for row in p) / len(p)
        p2 = sum(row[c] ** 2 for row in p) / len(p)
        m = mean * p1
        means.append(round(m, 4))
        stds.append(round(math.sqrt((std**2 + mean**2) * p2 - m**2), 4))
    return tuple(means), tuple(stds)


_FASHION = (0.2860, 0.3530)  # measured on the 60,000 training images
_MNIST = (0.1307, 0.3081)  # the usual MNIST constants

DATASETS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        DatasetInfo("fashion_mnist", 10, 1, (28, 28)), "fashion_mnist", (_FASHION[0],), (_FASHION[1],)
    ),
    "mnist": DatasetSpec(DatasetInfo("mnist", 10, 1, (28, 28)), "mnist", (_MNIST[0],), (_MNIST[1],)),
    "colored_mnist": DatasetSpec(
        DatasetInfo("colored_mnist", 10, 3, (28, 28)), "mnist", *colored_stats(*_MNIST), colored=True
    ),
    "colored_fashion_mnist": DatasetSpec(
        DatasetInfo("colored_fashion_mnist", 10, 3, (28, 28)), "fashion_mnist", *colored_stats(*_FASHION), colored=True
    ),
    "cifar10": DatasetSpec(
        DatasetInfo("cifar10", 10, 3, (32, 32)),
        "cifar10",
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        augment=True,
    ),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for ``name``; ValueError listing the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


def get_dataset_info(name: str) -> DatasetInfo:
    """A fresh `DatasetInfo` for ``name`` (callers may modify it freely)."""
    return dataclasses.replace(get_dataset_spec(name).info)
