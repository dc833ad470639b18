"""Config errors: clear, naming the key and the valid choices, raised before the graph is touched."""

from __future__ import annotations

import copy

import pytest
from torch.nn.utils import parametrize

from machop.config import ConfigError
from machop.nn import ActivationPrune
from machop.passes.graph.transforms.prune import parse_prune_args, prune_transform_pass


def _untouched(graph) -> bool:
    modules = dict(graph.model.named_modules())
    return not any(parametrize.is_parametrized(m) for m in modules.values()) and not any(
        isinstance(m, ActivationPrune) for m in modules.values()
    )


def _error(graph, pass_args) -> str:
    with pytest.raises(ConfigError) as e:
        prune_transform_pass(graph, pass_args)
    assert _untouched(graph)
    return str(e.value)


def test_sparsity_out_of_range(make_graph):
    graph = make_graph("lenet5")
    msg = _error(graph, {"weight": {"sparsity": 1.5, "method": "l1-norm"}})
    assert msg == "passes.prune.weight.sparsity: must be in [0, 1), got 1.5"
    msg = _error(graph, {"activation": {"sparsity": -0.1}})
    assert msg == "passes.prune.activation.sparsity: must be in [0, 1), got -0.1"
    msg = _error(graph, {"weight": {"sparsity": 1.0}})
    assert msg == "passes.prune.weight.sparsity: must be in [0, 1), got 1.0"


def test_unknown_method_lists_valid_ones_for_scope_and_granularity(make_graph):
    graph = make_graph("lenet5")
    msg = _error(graph, {"weight": {"sparsity": 0.5, "granularity": "channelwise", "method": "l1-norm"}})
    assert msg.startswith("passes.prune.weight.method: unknown method 'l1-norm' for local channelwise weight pruning")
    for valid in ("l1-norm-single", "l2-norm-single", "l1-norm-multi", "l2-norm-multi"):
        assert valid in msg
    msg = _error(graph, {"activation": {"sparsity": 0.5, "method": "l1-norm-single"}})
    assert "choose from l1-norm, l2-norm, random" in msg


def test_global_channelwise_rejected(make_graph):
    graph = make_graph("lenet5")
    msg = _error(graph, {"weight": {"sparsity": 0.5, "scope": "global", "granularity": "channelwise"}})
    assert msg.startswith("passes.prune.weight.granularity: global channelwise weight pruning is not supported")
    assert "local channelwise: l1-norm-single" in msg and "global elementwise: l1-norm" in msg
    msg = _error(graph, {"activation": {"sparsity": 0.5, "scope": "global", "granularity": "channelwise"}})
    assert msg.startswith("passes.prune.activation.granularity: global channelwise activation pruning")
    msg = _error(graph, {"activation": {"sparsity": 0.5, "granularity": "kernelwise"}})
    assert "local kernelwise activation pruning is not supported" in msg


@pytest.mark.parametrize(
    "pass_args,key",
    [
        ({"weight": {"sparsity": 0.5, "methd": "l1-norm"}}, "passes.prune.weight.methd"),
        ({"weights": {"sparsity": 0.5}}, "passes.prune.weights"),
        ({"activation": {"sparsity": 0.5, "calibration": 3}}, "passes.prune.activation.calibration"),
        ({"weight": {"sparsity": 0.5, "calibration_samples": 3}}, "passes.prune.weight.calibration_samples"),
    ],
)
def test_unknown_key_rejected(make_graph, pass_args, key):
    msg = _error(make_graph("lenet5"), pass_args)
    assert msg.startswith(f"{key}: unknown key; allowed keys: ")


def test_kernelwise_on_linear_names_the_layers(make_graph):
    graph = make_graph("lenet5")
    msg = _error(graph, {"weight": {"sparsity": 0.5, "granularity": "kernelwise"}})
    assert msg.startswith("passes.prune.weight.granularity: kernelwise")
    assert "fc1 (linear), fc2 (linear)" in msg and 'exclude = ["fc1", "fc2"]' in msg
    prune_transform_pass(graph, {"weight": {"sparsity": 0.5, "granularity": "kernelwise", "exclude": ["fc1", "fc2"]}})


def test_unknown_node_names(make_graph):
    graph = make_graph("lenet5")
    msg = _error(graph, {"weight": {"sparsity": 0.5, "exclude": ["fc3"]}})
    assert msg == "passes.prune.weight.exclude: unknown name(s) 'fc3'; valid names: conv1, conv2, fc1, fc2"
    msg = _error(graph, {"activation": {"sparsity": {"default": 0.1, "conv9": 0.5, "fc1": 0.2}}})
    assert msg.startswith("passes.prune.activation.sparsity: unknown name(s) 'conv9'; valid names: conv1")


def test_per_layer_sparsity_rules(make_graph):
    graph = make_graph("lenet5")
    msg = _error(graph, {"weight": {"sparsity": {"default": 0.5}, "scope": "global"}})
    assert "needs scope = 'local'" in msg
    msg = _error(graph, {"weight": {"sparsity": {"conv1": 0.5}}})
    assert "'default'" in msg
    msg = _error(graph, {"weight": {"sparsity": {"default": 0.5, "conv1": 1.2}}})
    assert msg == "passes.prune.weight.sparsity.conv1: must be in [0, 1), got 1.2"


def test_per_layer_sparsity_and_module_name_alias(make_graph):
    graph = make_graph("resnet18", data=False)
    cfg = {"sparsity": {"default": 0.2, "conv1": 0.5, "layer1.0.conv1": 0.7}, "exclude": ["fc"]}
    _, info = prune_transform_pass(graph, {"weight": cfg})
    layers = info["layers"]
    assert layers["conv1"]["weight"]["target"] == 0.5
    assert layers["layer1_0_conv1"]["weight"]["target"] == 0.7
    assert layers["layer1_0_conv1"]["weight"]["achieved"] == pytest.approx(round(0.7 * 36864) / 36864)
    assert layers["layer2_0_conv1"]["weight"]["target"] == 0.2
    assert layers["fc"]["weight"] is None


def test_pass_args_not_mutated_and_defaults(make_graph):
    pass_args = {"weight": {"sparsity": {"default": 0.3}}, "activation": {"sparsity": 0.2}}
    before = copy.deepcopy(pass_args)
    args = parse_prune_args(pass_args)
    assert pass_args == before
    assert (args.weight.scope, args.weight.granularity, args.weight.method) == ("local", "elementwise", "l1-norm")
    assert args.activation.method == "l1-norm" and args.activation.calibration_samples == 256
    assert parse_prune_args(
        {"weight": {"sparsity": 0.5, "granularity": "channelwise"}}
    ).weight.method == "l1-norm-single"
    prune_transform_pass(make_graph("lenet5"), pass_args)
    assert pass_args == before


def test_data_required_before_anything_changes(make_graph):
    graph = make_graph("lenet5", data=False)
    cfg = {"weight": {"sparsity": 0.5}, "activation": {"sparsity": 0.5, "granularity": "channelwise"}}
    with pytest.raises(RuntimeError, match="needs data"):
        prune_transform_pass(graph, cfg)
    assert _untouched(graph)
    # methods that need no data run without a data module
    prune_transform_pass(graph, {"activation": {"sparsity": 0.5, "method": "random"}})


def test_empty_config_is_a_report(make_graph):
    graph, info = prune_transform_pass(make_graph("lenet5"), None)
    assert info["weight"] is None and info["activation"] is None
    assert info["totals"]["weight_sparsity"] == 0.0
    assert _untouched(graph)
