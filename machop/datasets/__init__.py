"""Data sets: registry (`DATASETS`, `get_dataset_info`) and the Lightning `MaseDataModule`.

``MaseDataModule`` is imported lazily so that looking up names (config
checking, ``./ch --help``) does not import PyTorch Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .registry import DATASETS, DatasetInfo, DatasetSpec, get_dataset_info

if TYPE_CHECKING:
    from .datamodule import MaseDataModule
    from .sources import DatasetNotFoundError

__all__ = ["DATASETS", "DatasetInfo", "DatasetSpec", "get_dataset_info", "MaseDataModule", "DatasetNotFoundError"]


def __getattr__(name: str) -> Any:
    if name == "MaseDataModule":
        from .datamodule import MaseDataModule

        return MaseDataModule
    if name == "DatasetNotFoundError":
        from .sources import DatasetNotFoundError

        return DatasetNotFoundError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
