"""A small CNN trained for a few seconds on a Fashion-MNIST slice, for the sensitivity and allocation tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from machop.datasets import MaseDataModule
from machop.training import labelled_batch

from zoo.models import SmallCNN


@pytest.fixture(scope="module", autouse=True)
def _single_threaded(one_thread):
    """Every module here runs on one thread (`one_thread`, the suite's conftest)."""


@pytest.fixture(scope="module")
def data() -> MaseDataModule:
    dm = MaseDataModule("fashion_mnist", batch_size=128, train_limit=5000, test_limit=500)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def trained(data) -> dict[str, torch.Tensor]:
    """The state of SmallCNN after two quick epochs on 3,000 images (about 80% val accuracy)."""
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = labelled_batch(data, 3000, "train")
    for _ in range(2):
        for i in range(0, len(y), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
