"""Automatic choices from sensitivity curves inside the passes: ``weight_bits = "auto"`` (quantize)."""

from __future__ import annotations

import pytest
import torch

from machop.config import ConfigError
from machop.ir import MaseGraph, PassContext
from machop.nn import weight_codes
from machop.passes.graph import PASSES
from machop.passes.graph.analysis.allocation import choose_bits
from machop.passes.graph.analysis.sensitivity import Sensitivity

from zoo.models import SmallCNN

AUTO = {"by": "type", "max_acc_drop": 0.004, "samples": 400,
        "linear": {"config": {"name": "kmeans", "weight_bits": "auto", "codebook": "float16"}},
        "conv2d": {"config": {"name": "kmeans", "weight_bits": 6}}}


def graph_of(data, state) -> MaseGraph:
    model = SmallCNN()
    model.load_state_dict(state)
    return MaseGraph(model, context=PassContext(data_module=data, progress_bar=False))


def test_auto_bits_are_the_allocation_of_the_measured_curves_and_are_written_out(data, trained):
    graph, info = PASSES["quantize"](graph_of(data, trained), AUTO)
    sens = Sensitivity.from_json(info["sensitivity"])
    assert [layer.name for layer in sens.layers] == ["fc1", "fc2"]  # conv is not auto: not measured
    expected = choose_bits(sens, 0.004, 16)
    assert info["allocation"]["bits"] == expected
    for name, bits in expected.items():
        codes = weight_codes(*next((w.module, w.tensor_name) for w in graph.weights() if w.name == name))
        assert codes.bits == bits and codes.codebook.numel() <= 2**bits
    # the written-out table repeats the step exactly
    again, info2 = PASSES["quantize"](graph_of(data, trained), info["table"])
    assert "sensitivity" not in info2 and info["table"]["by"] == "name"
    assert info["table"]["conv"]["config"]["weight_bits"] == 6
    x = torch.randn(8, 1, 28, 28)
    assert torch.equal(graph.model(x), again.model(x))


def test_auto_bits_stay_within_the_loss_they_allow(data, trained):
    """On the measurement's own samples, each chosen width loses no more than the summed allowance."""
    graph, info = PASSES["quantize"](graph_of(data, trained), AUTO | {"max_acc_drop": 0.0})
    sens = Sensitivity.from_json(info["sensitivity"])
    for layer in sens.layers:
        chosen = info["allocation"]["bits"][layer.name]
        acc = dict((b, a) for b, a, _ in layer.bits)[chosen]
        assert acc >= sens.baseline_acc
        assert all(a < sens.baseline_acc for b, a, _ in layer.bits if b < chosen)  # no smaller width was free


def test_auto_bits_need_data_and_valid_options(trained):
    with pytest.raises(RuntimeError, match="pass 'quantize' needs data"):
        PASSES["quantize"](MaseGraph(SmallCNN()), AUTO)
    with pytest.raises(ConfigError, match=r"passes.quantize.max_acc_drop: must be in \[0, 1\], got 1.5"):
        PASSES["quantize"](MaseGraph(SmallCNN()), AUTO | {"max_acc_drop": 1.5})
