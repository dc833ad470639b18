"""``[passes.export] int8 = true`` and ``kmeans_gather = true``, checked in onnxruntime against machop's own model.

Oracles: machop's fake-quantized model (the export's reference), the integer
grid itself (the file's int8 weights times their scales are the layer's
weights), and onnxruntime's optimised graph (which operators it really runs).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import numpy_helper  # noqa: E402

from machop.config import ConfigError  # noqa: E402
from machop.ir import MaseGraph  # noqa: E402
from machop.passes.graph import PASSES  # noqa: E402
from machop.passes.graph.transforms.export import parse_export_args  # noqa: E402
from zoo.models import CalledTwice, DepthwiseNet, MLP, ResBlockNet, ShrinkCNN  # noqa: E402

LAYERS = {
    "linear": (lambda bias: nn.Linear(12, 7, bias=bias), (5, 12)),
    "conv1d": (lambda bias: nn.Conv1d(3, 6, 3, padding=1, bias=bias), (5, 3, 10)),
    "conv2d": (lambda bias: nn.Conv2d(3, 6, 3, padding=1, bias=bias), (5, 3, 6, 6)),
}


def _integer(granularity: str = "tensor", data_in_frac=4, **over) -> dict:
    return {"name": "integer", "data_in_width": 8, "data_in_frac_width": data_in_frac, "weight_width": 8,
            "weight_frac_width": "auto", "bias_width": "NA", "bias_frac_width": "NA",
            "weight_granularity": granularity} | over


def _ort(path, x: torch.Tensor, optimized=None) -> torch.Tensor:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _quantized(model: nn.Module, x: torch.Tensor, table: dict) -> MaseGraph:
    graph = MaseGraph(model.eval(), dummy_input=x[:2])
    graph, _ = PASSES["quantize"](graph, table)
    graph.model.eval()
    return graph


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_every_integer_layer_kind_exports_int8_within_one_step(tmp_path, kind, bias, granularity):
    make, shape = LAYERS[kind]
    torch.manual_seed(0)
    layer = make(bias)
    with torch.no_grad():  # output channels of different magnitudes (per-channel scales differ)
        layer.weight.mul_(torch.logspace(-1.5, 0.5, layer.weight.shape[0]).view(-1, *[1] * (layer.weight.dim() - 1)))
    model = nn.Sequential(layer)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 2
    graph = _quantized(model, x, {"by": "type", kind: {"config": _integer(granularity)}})
    path = tmp_path / "m.onnx"
    graph, info = PASSES["export"](graph, {"path": str(path), "int8": True})
    (row,) = info["int8"]["layers"]
    assert row["arithmetic"] == "int8" and row["scales"] == f"per-{granularity}"
    assert info["int8"]["float_layers"] == [] and info["verified"]
    with torch.no_grad():
        expected = graph.model(x)
        weight = graph.model.get_submodule("0").weight.detach()
    got = _ort(path, x)
    fracs = [f for f in _fracs(graph)]
    step = 2.0**-4 * max(2.0**-f for f in fracs)  # one step of the accumulator: s_x * s_w (coarsest channel)
    assert float((got - expected).abs().max()) <= step + 1e-6 * float(expected.abs().max())
    # the file holds the weight as int8, whose values times the scales are machop's weights exactly
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    ints = [a for a in inits.values() if a.dtype.name == "int8" and a.shape == tuple(weight.shape)]
    assert len(ints) == 1
    assert not any(a.dtype.name == "float32" and a.shape == tuple(weight.shape) for a in inits.values())
    scales = torch.tensor([2.0**-f for f in fracs]).view(-1, *[1] * (weight.dim() - 1))
    assert torch.equal(torch.from_numpy(ints[0].astype("float32")) * scales, weight)
    if bias:
        assert any(a.dtype.name == "int32" and a.shape == (weight.shape[0],) for a in inits.values())


def _fracs(graph: MaseGraph) -> list[int]:
    module = graph.model.get_submodule("0")
    q = module.parametrizations.weight[-1]
    return list(q.frac_widths) if hasattr(q, "frac_widths") else [q.frac_width] * module.weight.shape[0]


@pytest.mark.parametrize("data_in_width", [8, 4])
def test_conv_relu_pool_chain_runs_as_integer_kernels(tmp_path, data_in_width):
    """conv-bn-relu-conv-pool-linear (zoo ShrinkCNN): the batch norm is folded, the Relus absorbed, and
    onnxruntime runs every layer as QLinearConv / QGemm (inputs narrower than 8 bits: clipped in uint8)."""
    torch.manual_seed(0)
    model = ShrinkCNN()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(-1.5, 1.5)  # negative scales too
    x = ShrinkCNN.example(16)
    cfg = _integer(data_in_frac=5 if data_in_width == 8 else 2, data_in_width=data_in_width)
    graph = _quantized(model, x, {"by": "type", "conv2d": {"config": cfg}, "linear": {"config": cfg}})
    path = tmp_path / "m.onnx"
    graph, info = PASSES["export"](graph, {"path": str(path), "int8": True})
    rows = {r["name"]: r for r in info["int8"]["layers"]}
    clips = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer if t.name.startswith("clip_max")]
    assert sorted(int(c) for c in clips) == [2 ** (data_in_width - 1) - 1] * 2
    assert rows["conv1"]["batchnorm"] == "bn" and all(r["arithmetic"] == "int8" for r in rows.values())
    assert info["int8"]["relus_absorbed"] == 2 and "Relu" not in info["int8"]["ops"]
    with torch.no_grad():
        expected = graph.model(x)
    got = _ort(path, x, tmp_path / "opt.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") == 1 and "Conv" not in ops and "Gemm" not in ops
    assert len(info["int8"]["integer_kernels"]) == 3 and info["int8"]["float_kernels"] == []
    # the int32 bias (half an accumulator step) can move a value across a rounding boundary of the next input:
    # one input step there, coarse at 4 bits
    bound = 0.02 if data_in_width == 8 else 0.1
    assert float((got - expected).abs().max()) <= bound * float(expected.abs().max())
    assert float((got.argmax(1) == expected.argmax(1)).float().mean()) >= 0.9


@pytest.mark.parametrize("cls", [ResBlockNet, DepthwiseNet, CalledTwice])
def test_zoo_models_export_int8(tmp_path, cls):
    torch.manual_seed(0)
    model = cls()
    x = cls.example(8)
    table = {"by": "type", "default": {"config": {"name": "NA"}}}
    kinds = {type(m).__name__.lower() for m in model.modules()} & {"linear", "conv1d", "conv2d"}
    for kind in kinds:
        table[kind] = {"config": _integer(data_in_frac=5)}
    graph = _quantized(model, x, table)
    path = tmp_path / "m.onnx"
    graph, info = PASSES["export"](graph, {"path": str(path), "int8": True})
    assert info["verified"]
    assert [r["name"] for r in info["int8"]["layers"]] == cls.WEIGHTS
    assert all(r["arithmetic"] == "int8" for r in info["int8"]["layers"])
    if cls is ResBlockNet:  # conv2 (+ bn2) feeds the residual addition, stem's Relu also feeds it: no quantizer
        assert sorted(k["node"] for k in info["int8"]["float_kernels"]) == ["/conv2/Conv", "/stem/Conv"]
    with torch.no_grad():
        expected = graph.model(x)
    got = _ort(path, x)
    assert float((got - expected).abs().max()) <= 0.05 * float(expected.abs().max())


def test_layers_that_stay_float_are_listed_with_the_reason(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    x = MLP.example(4)
    table = {"by": "name", "fc1": {"config": _integer(data_in_frac=5)},
             "fc2": {"config": _integer(weight_width=12, data_in_frac=5)},
             "fc3": {"config": {"name": "kmeans", "weight_bits": 3}}}
    graph = _quantized(model, x, table)
    _, info = PASSES["export"](graph, {"path": str(tmp_path / "m.onnx"), "int8": True})
    reasons = {f["name"]: f["reason"] for f in info["int8"]["float_layers"]}
    assert set(reasons) == {"fc2", "fc3"}
    assert "12-bit" in reasons["fc2"] and "k-means" in reasons["fc3"]
    assert [r["name"] for r in info["int8"]["layers"]] == ["fc1"]


def test_int8_file_is_smaller_than_fp32(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))
    x = torch.randn(8, 64)
    plain = MaseGraph(copy.deepcopy(model).eval(), dummy_input=x[:2])
    _, fp32 = PASSES["export"](plain, {"path": str(tmp_path / "fp32.onnx")})
    graph = _quantized(model, x, {"by": "type", "linear": {"config": _integer(data_in_frac=5)}})
    _, int8 = PASSES["export"](graph, {"path": str(tmp_path / "int8.onnx"), "int8": True})
    assert int8["onnx_bytes"] <= 0.3 * fp32["onnx_bytes"]


def test_kmeans_layers_stored_as_indices_and_codebook(tmp_path):
    torch.manual_seed(0)
    model = ShrinkCNN(width=32)
    x = ShrinkCNN.example(8)
    graph = MaseGraph(model.eval(), dummy_input=x[:2])
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5}})
    graph, _ = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 4}},
                                          "linear": {"config": {"name": "kmeans", "weight_bits": 5}}})
    graph.model.eval()
    plain_path, gather_path = tmp_path / "plain.onnx", tmp_path / "gather.onnx"
    _, plain = PASSES["export"](graph, {"path": str(plain_path)})
    _, info = PASSES["export"](graph, {"path": str(gather_path), "kmeans_gather": True})
    stored = {r["name"]: r for r in info["kmeans_gather"]["layers"]}
    assert set(stored) == {"conv1", "conv2", "fc"} and info["kmeans_gather"]["not_stored"] == []
    assert stored["conv1"]["codebook"] == 16 + 1 and stored["conv1"]["index"] == "uint8"  # + the pruned zero
    with torch.no_grad():
        expected = graph.model(x)
    assert torch.allclose(_ort(gather_path, x), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))
    assert info["onnx_bytes"] < 0.3 * plain["onnx_bytes"]  # 1 byte per weight instead of 4
    ops = [n.op_type for n in onnx.load(str(gather_path)).graph.node]
    assert ops.count("Gather") == 3


def test_export_args_are_typed():
    assert parse_export_args({"int8": True, "kmeans_gather": True}).int8
    with pytest.raises(ConfigError, match=r"passes\.export\.int8: must be true or false"):
        parse_export_args({"int8": "yes"})
    with pytest.raises(ConfigError, match=r"passes\.export\.kmeans_gather: must be true or false"):
        parse_export_args({"kmeans_gather": 1})
    with pytest.raises(ConfigError, match=r"passes\.export\.opset: int8 = true needs opset 13"):
        parse_export_args({"int8": True, "opset": 11})
