"""LeNet-300-100 and LeNet-5 (Caffe variant), the LeNets of the Deep Compression paper."""

from __future__ import annotations

import torch
from torch import nn


class LeNet300(nn.Module):
    """LeNet-300-100: flatten → fc 300 → ReLU → fc 100 → ReLU → fc ``num_classes``.

    266,610 parameters on 1×28×28 input with 10 classes.
    """

    def __init__(self, in_channels: int = 1, image_size: tuple[int, int] = (28, 28), num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * image_size[0] * image_size[1], 300)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(300, 100)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


class LeNet5(nn.Module):
    """LeNet-5 as in Caffe's ``lenet_train_test.prototxt``.

    conv 20 5×5 → max-pool 2 → conv 50 5×5 → max-pool 2 → flatten → fc 500 → ReLU → fc ``num_classes``.
    Like Caffe there is no non-linearity after the convolutions (max-pooling is the only one there).
    431,080 parameters on 1×28×28 input with 10 classes.
    """

    def __init__(self, in_channels: int = 1, image_size: tuple[int, int] = (28, 28), num_classes: int = 10):
        super().__init__()
        h, w = (((s - 4) // 2 - 4) // 2 for s in image_size)  # two (5×5 valid conv, 2×2 pool) stages
        if h < 1 or w < 1:
            raise ValueError(f"lenet5 needs images of at least 16×16, got {tuple(image_size)}")
        self.conv1 = nn.Conv2d(in_channels, 20, kernel_size=5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(50 * h * w, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = torch.flatten(x, 1)
        x = self.relu(self.fc1(x))
        return self.fc2(x)
