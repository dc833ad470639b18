"""``codebook``, ``bias`` and ``side``: 16-bit side data chosen in the quantize config, used by the model, saved."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.config import ConfigError
from machop.ir import MaseGraph, load_graph, save_graph
from machop.nn import Compact, KMeansWeight, quantizer_of, round_to, weight_codes
from machop.passes.graph.transforms.quantize import quantize_transform_pass
from machop.passes.graph.transforms.quantize.config import parse_quantize_args

KMEANS16 = {"name": "kmeans", "weight_bits": 4, "codebook": "float16", "bias": "float16"}


@pytest.mark.parametrize("table, key", [
    ({"by": "type", "linear": {"config": {"name": "kmeans", "codebook": "half"}}}, "passes.quantize.linear.config.codebook"),
    ({"by": "type", "linear": {"config": {"name": "kmeans", "bias": "float8"}}}, "passes.quantize.linear.config.bias"),
    ({"by": "type", "linear": {"config": {"name": "kmeans", "codebook": 16}}}, "passes.quantize.linear.config.codebook"),
    ({"by": "type", "side": "fp16"}, "passes.quantize.side"),
    ({"by": "type", "side": 16}, "passes.quantize.side"),
    ({"by": "type", "default": {"config": {"name": "integer", "codebook": "float16"}}}, "passes.quantize.default.config.codebook"),
])
def test_bad_formats_name_the_key(table, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        parse_quantize_args(table)
    assert "\n" not in str(err.value)


def test_config_formats_are_the_core_formats():
    from machop.nn import FLOAT_FORMATS
    from machop.passes.graph.transforms.quantize.config import FloatFormat

    assert FloatFormat.__args__ == FLOAT_FORMATS


def test_defaults_mean_what_they_meant():
    args = parse_quantize_args({"by": "type", "linear": {"config": {"name": "kmeans"}}})
    assert args.side == "float32"
    assert (args.rules["linear"].codebook, args.rules["linear"].bias) == ("float32", "float32")
    # with by = "name", a table called "side" is a layer rule, not the side format
    named = parse_quantize_args({"by": "name", "side": {"config": {"name": "kmeans"}}})
    assert named.side == "float32" and "side" in named.rules


def test_kmeans_codebook_and_bias_formats(lenet5, sample_input, prune_randomly):
    prune_randomly(lenet5, ["conv1", "fc1"], keep=0.4)
    graph, info = quantize_transform_pass(lenet5, {"by": "type", "linear": {"config": KMEANS16},
                                                    "conv2d": {"config": {**KMEANS16, "codebook": "bfloat16", "bias": "float32"}}})
    assert "side" not in info
    fc1, conv1 = graph.model.fc1, graph.model.conv1
    q = quantizer_of(fc1)
    assert isinstance(q, KMeansWeight) and q.codebook == "float16"
    assert torch.equal(weight_codes(fc1).codebook, q.centroids.detach().half().float())
    assert isinstance(fc1.parametrizations.bias[0], Compact)
    assert torch.equal(fc1.bias, fc1.parametrizations.bias.original.detach().half().float())
    assert quantizer_of(conv1).codebook == "bfloat16" and not parametrize.is_parametrized(conv1, "bias")
    assert torch.equal(weight_codes(conv1).codebook, quantizer_of(conv1).centroids.detach().bfloat16().float())


def test_side_rounds_every_other_float_parameter():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 6 * 6, 5)
            self.head = nn.Linear(5, 3)
            self.scale = nn.Parameter(torch.tensor(1.2345678))

        def forward(self, x):
            return self.head(torch.relu(self.fc(self.bn(self.conv(x)).flatten(1)))) * self.scale

    torch.manual_seed(0)
    graph = MaseGraph(Net(), dummy_input=torch.randn(2, 1, 8, 8))
    graph, info = quantize_transform_pass(graph, {"by": "type", "side": "bfloat16",
                                                  "linear": {"config": {"name": "kmeans", "weight_bits": 3}}})
    assert info["side"]["format"] == "bfloat16"
    assert set(info["side"]["tensors"]) == {"conv.bias", "bn.weight", "bn.bias", "fc.bias", "head.bias", "scale"}
    m = graph.model
    assert not parametrize.is_parametrized(m.conv, "weight")  # a compressible weight left alone stays as it was
    for module, name in [(m.conv, "bias"), (m.bn, "weight"), (m.bn, "bias"), (m.fc, "bias"), (m, "scale")]:
        assert isinstance(module.parametrizations[name][0], Compact)
        assert torch.equal(getattr(module, name), round_to(module.parametrizations[name].original.detach(), "bfloat16"))
    assert m.bn.running_mean.dtype == torch.float32  # buffers cannot be parametrized: they stay float32


def test_formats_survive_save_and_load(lenet5, sample_input, tmp_path):
    graph, _ = quantize_transform_pass(lenet5, {"by": "type", "side": "float16", "linear": {"config": KMEANS16}})
    x = sample_input(graph)
    with torch.no_grad():
        before = graph.model(x)
    path = save_graph(graph, tmp_path / "g.mz")
    loaded = load_graph(path)
    assert quantizer_of(loaded.model.fc2).codebook == "float16"
    assert isinstance(loaded.model.conv1.parametrizations.bias[0], Compact)  # side: conv biases too
    assert loaded.model.conv1.parametrizations.bias[0].dtype == "float16"
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), before)
