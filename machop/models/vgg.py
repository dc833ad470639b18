"""VGG7, MASE's CIFAR VGG (module names as in MASE: feature_layers, classifier, last_layer)."""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class VGG7(nn.Module):
    """Six 3×3 convolutions 128-128-256-256-512-512, each with BatchNorm and ReLU, max-pool 2 after each pair,
    then fc 1024 → ReLU → fc 1024 → ReLU → fc ``num_classes``.

    On 3×32×32 input the flattened features are 512·4·4 = 8192; other sizes use 512·(H//8)·(W//8).
    Differences from MASE's code: BatchNorm keeps PyTorch's default momentum (MASE passes 0.9,
    which in PyTorch means "90 % new batch"), and ReLUs are not in-place, so hooks and inserted
    modules see the tensors a layer really produced.
    """

    def __init__(self, in_channels: int = 3, image_size: tuple[int, int] = (32, 32), num_classes: int = 10):
        super().__init__()
        h, w = image_size[0] // 8, image_size[1] // 8
        if h < 1 or w < 1:
            raise ValueError(f"vgg7 needs images of at least 8×8, got {tuple(image_size)}")
        self.feature_layers = nn.Sequential(
            *_conv_bn_relu(in_channels, 128), *_conv_bn_relu(128, 128), nn.MaxPool2d(2),
            *_conv_bn_relu(128, 256), *_conv_bn_relu(256, 256), nn.MaxPool2d(2),
            *_conv_bn_relu(256, 512), *_conv_bn_relu(512, 512), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(512 * h * w, 1024), nn.ReLU(),
            nn.Linear(1024, 1024), nn.ReLU(),
        )  # fmt: skip
        self.last_layer = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_layers(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return self.last_layer(x)
