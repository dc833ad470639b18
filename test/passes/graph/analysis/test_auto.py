"""Automatic choices from sensitivity curves inside the passes: ``sparsity = "auto"`` (prune, one-shot and
gradual) and ``weight_bits = "auto"`` (quantize); a run's ``config.toml`` repeats them exactly."""

from __future__ import annotations

import json
import tomllib

import pytest
import torch

from machop.cli import main

from machop.config import ConfigError
from machop.ir import MaseGraph, PassContext
from machop.nn import get_mask, weight_codes
from machop.passes.graph import PASSES
from machop.passes.graph.analysis.allocation import PruneTarget, choose_bits, choose_sparsities
from machop.passes.graph.analysis.sensitivity import LayerSensitivity, Sensitivity
from machop.passes.graph.transforms.quantize import quantize

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


def test_auto_bits_in_a_value_budget_are_its_allocation_and_widen_with_it(data, trained):
    """``value_bits``: the allocation of the measured curves in that byte budget; a bigger budget, wider codes."""
    table = {k: v for k, v in AUTO.items() if k != "max_acc_drop"}
    chosen = {}
    for value_bits in (1.5, 4.0):
        graph, info = PASSES["quantize"](graph_of(data, trained), table | {"value_bits": value_bits})
        sens = Sensitivity.from_json(info["sensitivity"])
        bits = choose_bits(sens, codebook_bits=16, value_bits=value_bits)
        assert info["allocation"] == {"value_bits": value_bits, "bits": bits}
        entropy = {layer.name: {b: h for b, _, h in layer.bits} for layer in sens.layers}
        values = sum(layer.nonzero * entropy[layer.name][bits[layer.name]] for layer in sens.layers)
        assert values <= value_bits * sum(layer.nonzero for layer in sens.layers)
        for name, b in bits.items():
            codes = weight_codes(*next((w.module, w.tensor_name) for w in graph.weights() if w.name == name))
            assert codes.bits == b
        chosen[value_bits] = bits
    assert sum(chosen[1.5].values()) < sum(chosen[4.0].values())


def test_auto_bits_need_data_and_valid_options(trained):
    with pytest.raises(RuntimeError, match="pass 'quantize' needs data"):
        PASSES["quantize"](MaseGraph(SmallCNN()), AUTO)
    with pytest.raises(ConfigError, match=r"passes.quantize.max_acc_drop: must be in \[0, 1\], got 1.5"):
        PASSES["quantize"](MaseGraph(SmallCNN()), AUTO | {"max_acc_drop": 1.5})
    with pytest.raises(ConfigError, match=r"passes.quantize.value_bits: give max_acc_drop or value_bits, not both"):
        PASSES["quantize"](MaseGraph(SmallCNN()), AUTO | {"value_bits": 3})
    with pytest.raises(ConfigError, match=r"passes.quantize.value_bits: must be in \(0, 32\], got 0.0"):
        PASSES["quantize"](MaseGraph(SmallCNN()), {"by": "type", "value_bits": 0})


def masks(graph: MaseGraph) -> dict[str, torch.Tensor]:
    return {w.name: get_mask(w.module, w.tensor_name) for w in graph.weights()}


def test_auto_sparsities_meet_the_density_at_the_allocated_sparsities(data, trained):
    table = {"weight": {"sparsity": "auto", "auto": {"density": 0.2, "samples": 400}}}
    graph, info = PASSES["prune"](graph_of(data, trained), table)
    sens = Sensitivity.from_json(info["sensitivity"])
    chosen = choose_sparsities(sens, PruneTarget(density=0.2), 0, 0)
    assert info["allocation"]["sparsity"] == chosen and info["weight"]["sparsity"] == {"default": 0.0, **chosen}
    sizes = {w.name: w.stored().numel() for w in graph.weights()}
    kept = {name: sizes[name] if m is None else int(m.sum()) for name, m in masks(graph).items()}
    assert kept == {name: sizes[name] - round(chosen[name] * sizes[name]) for name in sizes}
    assert sum(kept.values()) <= 0.2 * sum(sizes.values())
    assert "auto" not in info["table"]["weight"] and table["weight"]["sparsity"] == "auto"  # pass_args untouched
    again, _ = PASSES["prune"](graph_of(data, trained), info["table"])
    assert masks(graph).keys() == masks(again).keys()
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(masks(graph).values(), masks(again).values()))


@pytest.mark.parametrize("table, message", [
    ({"sparsity": "auto"}, r"weight.sparsity: sparsity = \"auto\" and an auto table"),
    ({"sparsity": 0.5, "auto": {"ratio": 50}}, r"weight.auto: sparsity = \"auto\" and an auto table"),
    ({"sparsity": "auto", "auto": {"ratio": 50}, "scope": "global"}, r"weight.sparsity: .* needs scope = \"local\""),
    ({"sparsity": "auto", "auto": {"ratio": 50, "density": 0.1}}, r"weight.auto: give exactly one"),
    ({"sparsity": "auto", "auto": {"ratio": 0.5}}, r"weight.auto.ratio: must be in \[1, inf\]"),
])
def test_bad_auto_tables_name_the_key(table, message):
    with pytest.raises(ConfigError, match=r"passes.prune." + message):
        PASSES["prune"](MaseGraph(SmallCNN()), {"weight": table})
    with pytest.raises(ConfigError, match=r"passes.prune.activation.sparsity: \"auto\" chooses weight sparsities"):
        PASSES["prune"](MaseGraph(SmallCNN()), {"activation": {"sparsity": "auto"}})


PIPELINE = """
model = "lenet300"
max_epochs = 1
[passes.agp]
pass = "prune"
[passes.agp.weight]
sparsity = "auto"
auto = { ratio = 20, value_bits = 5, samples = 200 }
[passes.agp.gradual]
ramp_epochs = 1
[passes.agp.gradual.training]
max_epochs = 2
[passes.quantize]
by = "type"
max_acc_drop = 0.01
samples = 200
linear = { config = { name = "kmeans", weight_bits = "auto", codebook = "float16", bias = "float16" } }
[passes.huffman]
"""


def test_the_run_folder_config_repeats_the_automatic_choices_bit_for_bit(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "auto.toml").write_text(PIPELINE)
    slice_ = ["--train-limit", "600", "--test-limit", "100", "--no-progress"]
    assert main(["transform", "--config", "auto.toml", "--project-dir", "a", *slice_]) == 0, capsys.readouterr().err
    first = next((tmp_path / "a" / "default").glob("transform_*"))
    config = tomllib.loads((first / "config.toml").read_text())
    report = json.loads((first / "report.json").read_text())
    agp, quantize = report["steps"][0]["info"], report["steps"][1]["info"]
    assert config["passes"]["agp"]["pass"] == "prune" and "auto" not in config["passes"]["agp"]["weight"]
    assert config["passes"]["agp"]["weight"]["sparsity"] == {"default": 0.0, **agp["allocation"]["sparsity"]}
    assert config["passes"]["quantize"]["by"] == "name"
    assert {k: v["config"]["weight_bits"] for k, v in config["passes"]["quantize"].items()
            if isinstance(v, dict) and k != "default"} == quantize["allocation"]["bits"]
    assert (first / "sensitivity_agp.png").is_file() and (first / "sensitivity_quantize.png").is_file()
    assert main(["transform", "--config", str(first / "config.toml"), "--project-dir", "b", *slice_]) == 0
    second = next((tmp_path / "b" / "default").glob("transform_*"))
    assert (second / "model.mchz").read_bytes() == (first / "model.mchz").read_bytes()


def test_a_ratio_no_sparsity_meets_is_refused_naming_the_key(data, trained):
    """A ratio beyond what the largest measured sparsity gives: one ConfigError, the model unchanged."""
    graph = graph_of(data, trained)
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}
    table = {"weight": {"sparsity": "auto", "auto": {"ratio": 1000, "sparsities": [0.5], "samples": 200}}}
    with pytest.raises(ConfigError, match=r"passes.prune.weight.auto: ratio 1000 .* cannot be met .* over the budget"):
        PASSES["prune"](graph, table)
    assert graph.model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in graph.model.state_dict().items())


def test_a_loss_no_width_stays_within_is_refused_naming_the_key(data, trained, monkeypatch):
    lossy = Sensitivity(0.9, 400, "val", [LayerSensitivity(name, 10, 10, [], [(b, 0.8, 1.0) for b in range(1, 9)])
                                          for name in ("fc1", "fc2")])
    monkeypatch.setattr(quantize, "measure_sensitivity", lambda *a, **k: lossy)
    with pytest.raises(ConfigError, match=r"passes.quantize.max_acc_drop: no k-means widths .* over the limit"):
        PASSES["quantize"](graph_of(data, trained), AUTO)
