"""Channelwise pruning never removes a model output unless the config names the output layer, and never empties a layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from machop.config import ConfigError
from machop.ir import MaseGraph
from machop.nn import get_mask
from machop.passes.graph.transforms.prune import WEIGHT_METHODS, prune_transform_pass

CHANNELWISE = [(s, m) for (s, g), methods in WEIGHT_METHODS.items() if g == "channelwise" for m in methods]
SEED_KEYS = {"sparsity": 0.2, "scope": "local", "granularity": "channelwise"}  # the seed's table, without exclude


def _logit_columns_alive(graph: MaseGraph, info) -> torch.Tensor:
    """Per output class: does the logit depend on the input? (A removed class is its bias alone.)"""
    torch.manual_seed(0)
    x = torch.randn(16, info.in_channels, *info.image_size)
    with torch.no_grad():
        out = graph.model.eval()(x)
    return out.std(dim=0) > 0


@pytest.mark.parametrize("model", ["vgg7", "resnet18", "lenet5"])
@pytest.mark.parametrize("scope,method", CHANNELWISE)
def test_seed_keys_keep_every_class(make_graph, model, scope, method):
    graph = make_graph(model)
    (output,) = graph.output_layers()
    _, info = prune_transform_pass(graph, {"weight": {**SEED_KEYS, "scope": scope, "method": method},
                                           "activation": {**SEED_KEYS, "method": "feature-map-l2-norm"}})
    assert info["weight"]["dense"] == [{"name": output, "reason": info["weight"]["dense"][0]["reason"]}]
    assert info["weight"]["dense"][0]["reason"].startswith("output layer")
    assert output not in info["weight"]["layers"]
    assert get_mask(graph.module_of(next(n for n in graph.nodes if n.name == output))) is None
    pruned = [n for n in graph.layer_nodes() if get_mask(graph.module_of(n)) is not None]
    assert len(pruned) == len(graph.layer_nodes()) - 1  # every other layer did lose channels
    alive = _logit_columns_alive(graph, graph.context.dataset_info)
    assert alive.all() and alive.numel() == graph.context.dataset_info.num_classes


def test_naming_the_output_layer_prunes_its_channels(make_graph):
    graph = make_graph("lenet5", data=False)
    (output,) = graph.output_layers()
    prune_transform_pass(graph, {"weight": {**SEED_KEYS, "sparsity": {"default": 0.2, output: 0.2},
                                            "method": "l1-norm-single"}})
    alive = _logit_columns_alive(graph, graph.context.dataset_info)
    assert int((~alive).sum()) == 2  # round(0.2 * 10) classes gone, as asked


class ConvHead(nn.Module):
    """A user model whose classes come out of a 1x1 convolution, pooled and flattened, plus a residual branch."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 5, 1)
        self.skip = nn.Linear(3, 5)

    def forward(self, x):
        y = torch.relu(self.head(torch.relu(self.body(x))))
        return torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1) + self.skip(x.mean(dim=(2, 3)))


def test_output_layers_are_found_through_pooling_reshapes_and_additions():
    graph = MaseGraph(ConvHead())
    assert graph.output_layers() == {"head", "skip"}
    _, info = prune_transform_pass(graph, {"weight": {**SEED_KEYS, "sparsity": 0.5, "method": "l2-norm-single"}})
    assert info["weight"]["layers"] == ["body"]
    assert sorted(d["name"] for d in info["weight"]["dense"]) == ["head", "skip"]


class Narrow(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)
        self.b = nn.Linear(2, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_pruning_every_channel_of_a_layer_is_refused():
    graph = MaseGraph(Narrow())
    with pytest.raises(ConfigError, match=r"passes.prune.weight.sparsity: would prune all 2 channels of a"):
        prune_transform_pass(graph, {"weight": {**SEED_KEYS, "sparsity": 0.8, "method": "l1-norm-single"}})
    assert get_mask(graph.model.a) is None


def test_activation_channels_all_pruned_is_refused(make_graph):
    graph = make_graph("lenet5")
    first = graph.layer_nodes()[0].name  # its input has 1 channel
    with pytest.raises(ConfigError, match=f"all 1 channels of the input of {first}"):
        prune_transform_pass(graph, {"activation": {**SEED_KEYS, "sparsity": {"default": 0.0, first: 0.6},
                                                    "method": "feature-map-l2-norm"}})
