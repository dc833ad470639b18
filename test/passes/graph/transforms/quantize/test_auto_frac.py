"""``frac_width = "auto"``: widths chosen from the weights and a calibration batch (least squared error), checked by brute force;
per-channel weights; the zeroed-model warning; the written-out table; the group's VGG7 table with "auto"."""

from __future__ import annotations

import copy
import json
import logging
import tomllib
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from machop.cli import main
from machop.config import ConfigError
from machop.datasets import MaseDataModule, get_dataset_info
from machop.ir import MaseGraph
from machop.models import get_model
from machop.nn import FixedPoint, apply_mask
from machop.nn.fixed_point import ChannelFixedPoint, auto_frac_width, best_frac_width
from machop.passes.graph import PASSES
from machop.training import DataLoaders

ROOT = Path(__file__).resolve().parents[5]


def _brute_frac(values: torch.Tensor, width: int) -> int:
    """The largest frac width in 0..32 at which no value rounds beyond the positive end of the range."""
    qmax = 2 ** (width - 1) - 1
    ok = [f for f in range(33) if float(torch.round(values.double().abs() * 2.0**f).max()) <= qmax]
    return max(ok) if ok else 0


def _brute_auto(values: torch.Tensor, width: int) -> int:
    """"auto" by brute force: of the range-holding width and the three finer ones, the least squared error of
    round-then-saturate (ties: the coarser)."""
    v = values.double().flatten()
    qmin, qmax = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    f0 = _brute_frac(v, width)
    errors = {}
    for f in range(f0, f0 + 4):
        q = torch.clamp(torch.round(v * 2.0**f), qmin, qmax) / 2.0**f
        errors[f] = float(((q - v) ** 2).sum())
    return min(errors, key=lambda f: (errors[f], f))


def _integer(**over) -> dict:
    return {"name": "integer", "data_in_width": 8, "data_in_frac_width": "auto", "weight_width": 8,
            "weight_frac_width": "auto", "bias_width": 8, "bias_frac_width": "auto"} | over


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def _graph(scale_inputs: float = 3.0) -> tuple[MaseGraph, torch.Tensor]:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():  # channels of very different magnitudes
        model.conv.weight.mul_(torch.tensor([0.01, 0.1, 1.0, 3.0, 0.3, 0.05]).view(-1, 1, 1, 1))
    x = torch.randn(40, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * scale_inputs
    graph = MaseGraph(model, dummy_input=x[:2])
    loader = DataLoader(TensorDataset(x, torch.zeros(40, dtype=torch.long)), batch_size=16)
    graph.context.data_module = DataLoaders(loader, loader)
    return graph, x


def test_auto_widths_match_brute_force(caplog):
    graph, x = _graph()
    before = copy.deepcopy(graph.model)
    graph, info = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": _integer()},
                                            "linear": {"config": _integer()}, "calibration_samples": 32})
    rows = {r["name"]: r for r in info["layers"]}
    with torch.no_grad():
        conv_in = x[:32]
        fc_in = torch.flatten(torch.relu(before.conv(conv_in)), 1)
    for name, module, seen in (("conv", before.conv, conv_in), ("fc", before.fc, fc_in)):
        chosen = rows[name]["frac_widths"]
        assert chosen["weight"] == _brute_auto(module.weight, 8), name
        assert chosen["bias"] == _brute_auto(module.bias, 8), name
        assert chosen["data_in"] == _brute_auto(seen, 8), name  # from the first 32 training inputs only
        assert rows[name]["data_in_max_abs"] == pytest.approx(float(seen.abs().max()))
    q = graph.model.get_submodule("conv_data_in_quantizer")
    assert isinstance(q, FixedPoint) and q.frac_width == rows["conv"]["frac_widths"]["data_in"]
    assert info["warnings"] == []
    # the table written out repeats the step exactly, with numbers
    table = info["table"]
    assert table["by"] == "name" and table["conv"]["config"]["weight_frac_width"] == rows["conv"]["frac_widths"]["weight"]
    again, _ = _graph()
    again, info2 = PASSES["quantize"](again, table)
    assert "table" not in info2
    with torch.no_grad():
        assert torch.equal(again.model(x), graph.model(x))


def test_per_channel_widths_and_zeros_stay_zero():
    graph, _ = _graph()
    mask = torch.rand(graph.model.conv.weight.shape, generator=torch.Generator().manual_seed(2)) < 0.6
    apply_mask(graph.model.conv, mask)
    with torch.no_grad():
        w = graph.model.conv.weight.detach().clone()
    cfg = _integer(weight_granularity="channel", data_in_width="NA", data_in_frac_width="NA")
    graph, info = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": cfg}})
    fracs = info["layers"][0]["frac_widths"]["weight"]
    assert fracs == [_brute_auto(w[c], 8) for c in range(6)]
    assert len(set(fracs)) > 2  # the channels' magnitudes differ by 300x
    q = graph.model.conv.parametrizations.weight[-1]
    assert isinstance(q, ChannelFixedPoint)
    with torch.no_grad():
        got = graph.model.conv.weight
        for c in range(6):  # each channel on its own grid, within half a step
            step = 2.0 ** -fracs[c]
            assert torch.equal(torch.round(got[c] / step) * step, got[c])
            inside = w[c].abs() <= 127 * step  # a finer step may clip the largest values (less squared error)
            assert float((got[c] - w[c])[inside].abs().max()) <= step / 2
        assert bool((got[~mask] == 0).all())
    row = info["layers"][0]
    assert row["arithmetic"] == "integer" and row["bits"] == 8 and row["weight_size_bits"] == 8 * w.numel()
    # a per-tensor frac width of the same layer would lose the small channels entirely
    assert 2.0 ** -min(fracs) / 2 > float(w[0].abs().max())


def test_per_channel_list_must_fit_the_layer():
    graph, _ = _graph()
    cfg = _integer(weight_granularity="channel", weight_frac_width=[4, 4])
    with pytest.raises(ConfigError, match=r"weight_frac_width: 2 widths for conv, which has 6 output channels"):
        PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": cfg}})
    with pytest.raises(ConfigError, match='weight_granularity = "channel"'):
        PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": _integer(weight_frac_width=[4] * 6)}})


def test_auto_input_needs_data():
    graph, _ = _graph()
    graph.context.data_module = None
    with pytest.raises(RuntimeError, match="needs data"):
        PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": _integer()}})


def test_a_fixed_point_that_zeroes_a_layer_is_warned_about(caplog):
    graph, _ = _graph()
    with torch.no_grad():
        graph.model.fc.weight.mul_(1e-3)  # every |w| < 2**-5: 8.4 keeps none
    cfg = _integer(weight_frac_width=4, data_in_frac_width=4)
    with caplog.at_level(logging.WARNING):
        graph, info = PASSES["quantize"](graph, {"by": "type", "linear": {"config": cfg}})
    (warning,) = info["warnings"]
    assert warning["name"] == "fc" and warning["zeroed"] == 1.0 and '"auto"' in warning["message"]
    assert "rounds 100.0% of its non-zero weights to zero" in caplog.text
    assert float(graph.model.fc.weight.abs().max()) == 0.0
    graph, _ = _graph()
    with torch.no_grad():
        graph.model.fc.weight.mul_(1e-3)
    graph, info = PASSES["quantize"](graph, {"by": "type", "linear": {"config": _integer()}})
    assert info["warnings"] == [] and int((graph.model.fc.weight != 0).sum()) > 0.9 * graph.model.fc.weight.numel()


def test_auto_trades_a_clipped_tail_for_precision():
    """A long tail: one value 100x the rest. "auto" clips it and keeps the bulk's precision."""
    values = torch.cat([torch.linspace(-0.01, 0.01, 1000), torch.tensor([1.0])])
    f = best_frac_width(values, 8)
    assert f == _brute_auto(values, 8) and f > _brute_frac(values, 8)
    uniform = torch.linspace(-1.5, 1.5, 1001)  # fills the range: nothing to gain by clipping
    assert best_frac_width(uniform, 8) == _brute_frac(uniform, 8)


def test_auto_frac_width_edges():
    assert auto_frac_width(127.4, 8) == 0 and auto_frac_width(1.0, 8) == 6 and auto_frac_width(0.0, 8) == 7
    assert auto_frac_width(1000.0, 8) == 0  # saturates: no negative frac widths
    for v in (0.3, 0.03, 1e-5, 63.9):
        assert auto_frac_width(v, 8) == _brute_frac(torch.tensor([v]), 8)


def _group3_quantize(auto: bool) -> dict:
    table = tomllib.loads((ROOT / "configs" / "examples" / "group3.toml").read_text())["passes"]["quantize"]
    table = copy.deepcopy(table)
    if auto:
        table["calibration_samples"] = 32
        for op in ("linear", "conv2d"):
            table[op]["config"]["weight_frac_width"] = "auto"
            table[op]["config"]["data_in_frac_width"] = "auto"
            table[op]["config"]["bias_frac_width"] = "auto"
    return table


def test_group3_vgg7_table_with_auto_keeps_the_model(caplog):
    """The group's 8-bit table on VGG7 (real colored Fashion-MNIST images): 8/4 rounds every weight of a freshly
    initialised VGG7 to zero (warned), "auto" keeps the float model's predictions."""
    info = get_dataset_info("colored_fashion_mnist")
    dm = MaseDataModule("colored_fashion_mnist", batch_size=32, train_limit=64, test_limit=64, num_workers=0)
    dm.setup()
    x, _ = next(iter(dm.test_dataloader()))
    torch.manual_seed(0)
    model = get_model("vgg7", info).eval()
    with torch.no_grad():
        reference = model(x)

    def quantized(auto: bool):
        graph = MaseGraph(copy.deepcopy(model), dummy_input=x[:2])
        graph.context.data_module = dm
        graph, qinfo = PASSES["quantize"](graph, _group3_quantize(auto))
        graph.model.eval()
        with torch.no_grad():
            return graph.model(x), qinfo

    with caplog.at_level(logging.WARNING):
        fixed, fixed_info = quantized(auto=False)
    assert len(fixed_info["warnings"]) >= 6  # the convolutions (|w| < 1/32 nearly everywhere) lose all weights
    out, auto_info = quantized(auto=True)
    assert auto_info["warnings"] == []
    agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
    assert agree >= 0.95, agree
    assert float((out - reference).abs().max() / reference.abs().max()) < 0.1
    assert float((fixed - reference).abs().max() / reference.abs().max()) > 0.5
    widths = {r["name"]: r["frac_widths"]["weight"] for r in auto_info["layers"]}
    assert len(widths) == 9 and all(f > 4 for f in widths.values())


def test_chosen_widths_are_written_into_the_runs_config(tmp_path):
    """``ch transform``: the run's config.toml holds the quantize step with the widths "auto" chose, as numbers."""
    config = tmp_path / "auto.toml"
    config.write_text('''model = "lenet5"
dataset = "fashion_mnist"
project = "auto"
[passes.quantize]
by = "type"
calibration_samples = 64
[passes.quantize.conv2d.config]
name = "integer"
data_in_width = 8
data_in_frac_width = "auto"
weight_width = 8
weight_frac_width = "auto"
bias_width = 8
bias_frac_width = "auto"
[passes.quantize.linear.config]
name = "integer"
data_in_width = 8
data_in_frac_width = "auto"
weight_width = 8
weight_frac_width = "auto"
bias_width = "NA"
bias_frac_width = "NA"
weight_granularity = "channel"
''')
    assert main(["transform", "--config", str(config), "--project-dir", str(tmp_path / "out"), "--train-limit", "128",
                 "--test-limit", "32", "--no-progress"]) == 0
    (run,) = (tmp_path / "out").glob("*/transform_*")
    written = tomllib.loads((run / "config.toml").read_text())["passes"]["quantize"]
    report = json.loads((run / "report.json").read_text())
    rows = {r["name"]: r for r in report["steps"][0]["info"]["layers"]}
    assert written["by"] == "name" and set(rows) <= set(written)
    for name, row in rows.items():
        config = written[name]["config"]
        assert config["weight_frac_width"] == row["frac_widths"]["weight"]
        assert config["data_in_frac_width"] == row["frac_widths"]["data_in"]
        assert isinstance(config["data_in_frac_width"], int)
    assert all(isinstance(written[n]["config"]["bias_frac_width"], int) for n, r in rows.items()
               if r["type"] == "conv2d")
    assert all(isinstance(written[n]["config"]["weight_frac_width"], list) for n, r in rows.items()
               if r["type"] == "linear")
