"""Shared fixtures for the quantize tests: small registry models as MaseGraphs, optionally pruned."""

from __future__ import annotations

import pytest
import torch

from machop.config import TrainSettings
from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.nn import apply_mask

DATA = {"lenet5": "fashion_mnist", "lenet300": "fashion_mnist", "resnet18": "cifar10"}


def _make_graph(name: str = "lenet5", seed: int = 0) -> MaseGraph:
    """A fresh traced registry model with a context that can be saved."""
    torch.manual_seed(seed)
    info = get_dataset_info(DATA[name])
    graph = MaseGraph(get_model(name, info), context=PassContext(model_name=name, dataset_info=info, training=TrainSettings(seed=seed)))
    graph.model.eval()
    return graph


def _prune_randomly(graph: MaseGraph, layers: list[str], keep: float = 0.5, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random prune masks (as the prune pass would register them) on the named nodes; returns the masks."""
    g = torch.Generator().manual_seed(seed)
    masks = {}
    for node in graph.layer_nodes():
        if node.name in layers:
            module = graph.module_of(node)
            mask = torch.rand(module.weight.shape, generator=g) < keep
            apply_mask(module, mask)
            masks[node.name] = mask
    return masks


def _sample_input(graph: MaseGraph, n: int = 4, seed: int = 0) -> torch.Tensor:
    info = graph.context.dataset_info
    return torch.randn(n, info.in_channels, *info.image_size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def make_graph():
    return _make_graph


@pytest.fixture
def prune_randomly():
    return _prune_randomly


@pytest.fixture
def sample_input():
    return _sample_input


@pytest.fixture
def lenet5() -> MaseGraph:
    return _make_graph("lenet5")
