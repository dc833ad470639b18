"""Model registry: ``get_model(name, dataset_info)`` builds a network shaped for a data set.

Every model traces with ``torch.fx.symbolic_trace`` (no data-dependent control
flow) and uses module layers (``nn.ReLU``, ``nn.MaxPool2d``) so they show up as
``call_module`` nodes that passes can find.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from .lenet import LeNet5, LeNet300
from .resnet import BasicBlock, ResNet18
from .vgg import VGG7

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "vgg7": VGG7,
    "resnet18": ResNet18,
}


def get_model(name: str, info: Any) -> nn.Module:
    """Build model ``name`` for data described by ``info`` (a ``DatasetInfo``, or its ``asdict`` form).

    Input channels, image size and number of classes come from ``info``.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}")
    field = info.__getitem__ if isinstance(info, dict) else info.__getattribute__
    return MODELS[name](
        in_channels=field("in_channels"), image_size=tuple(field("image_size")), num_classes=field("num_classes")
    )


__all__ = ["MODELS", "get_model", "LeNet300", "LeNet5", "VGG7", "ResNet18", "BasicBlock"]
