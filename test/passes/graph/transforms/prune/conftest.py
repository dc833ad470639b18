"""Shared fixtures for the prune tests: small registry models and a tiny fake data module."""

from __future__ import annotations

import copy

import pytest
import torch

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph
from machop.models import get_model

MODEL_DATA = {"lenet5": "fashion_mnist", "lenet300": "fashion_mnist", "vgg7": "cifar10", "resnet18": "cifar10"}


class FakeDataModule:
    """Deterministic random images of a data set's shape; what the prune pass needs of a MaseDataModule."""

    def __init__(self, info, seed: int = 0):
        self.info = info
        self.seed = seed
        self.calls = 0

    def calibration_batch(self, n: int = 256):
        self.calls += 1
        g = torch.Generator().manual_seed(self.seed)
        x = torch.randn(n, self.info.in_channels, *self.info.image_size, generator=g)
        return x, torch.zeros(n, dtype=torch.long)


@pytest.fixture(scope="session")
def _pristine():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            info = get_dataset_info(MODEL_DATA[name])
            cache[name] = (get_model(name, info), info)
        return cache[name]

    return get


@pytest.fixture
def make_graph(_pristine):
    """``make_graph("resnet18", data=True)`` → a fresh MaseGraph with context filled (model_name, dataset_info, data)."""

    def make(name: str, data: bool = True) -> MaseGraph:
        model, info = _pristine(name)
        graph = MaseGraph(copy.deepcopy(model))
        graph.context.model_name = name
        graph.context.dataset_info = info
        if data:
            graph.context.data_module = FakeDataModule(info)
        return graph

    return make
