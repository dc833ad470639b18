"""Models of every float dtype (float16, bfloat16, float64; float32 as the control) keep it through every pass.

Prune (every weight and activation method), quantize (k-means: centroids in
the weight's dtype; fixed point: computed in float32 and cast back; 16-bit
side data), save/load, Huffman coding (decoded bit-identical in a fresh
graph, the file recording the dtype) and ONNX export (in the model's dtype
where onnxruntime runs it, else float32, said so). Small models: the module
runs in a few seconds.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import machop
from machop.ir import MaseGraph, load_graph, save_graph
from machop.nn import (
    FixedPoint,
    KMeansWeight,
    fixed_point_grid,
    load_weight_codes,
    quantize_fixed_point,
    quantizer_of,
    weight_codes,
)
from machop.passes.graph import PASSES
from machop.passes.graph.transforms.huffman import CompressedFileError
from machop.ir.mchz.format import pack_container, unpack_container
from machop.ir.mchz.model import file_header
from machop.passes.graph.transforms.prune import WEIGHT_METHODS
from machop.passes.graph.transforms.prune.activation_methods import ACTIVATION_METHODS
from machop.training import DataLoaders

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
if HAS_ORT:
    import onnx

KMEANS = {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 4}}}
INTEGER = {"by": "type", "default": {"config": {
    "name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8, "weight_frac_width": 6,
    "bias_width": 8, "bias_frac_width": 5,
}}}
SIDE16 = {"by": "type", "side": "float16", "default": {"config": {
    "name": "kmeans", "weight_bits": 4, "codebook": "bfloat16", "bias": "float16",
}}}
QUANTIZE = {"kmeans": KMEANS, "integer": INTEGER, "kmeans-16-bit-side": SIDE16}


DTYPES = [torch.float32, torch.float16, torch.float64, torch.bfloat16]


class CNN(nn.Module):
    """Conv2d + BatchNorm (running statistics set) + Linear."""

    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8 * 3 * 3, 10)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


class MLP(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 10)
        self.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(x)))


def _input(cls: type[nn.Module], dtype: torch.dtype, batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (batch, 3, 8, 8) if cls is CNN else (batch, 16)
    return torch.randn(*shape, generator=g).to(dtype)


def _graph(dtype: torch.dtype, cls: type[nn.Module] = CNN) -> tuple[MaseGraph, torch.Tensor]:
    torch.manual_seed(0)
    x = _input(cls, dtype)
    graph = MaseGraph(cls(dtype), dummy_input=x)
    ds = TensorDataset(_input(cls, dtype, 32), torch.zeros(32, dtype=torch.long))
    graph.context.data_module = DataLoaders(DataLoader(ds, batch_size=8), DataLoader(ds, batch_size=8))
    return graph, x


def _assert_dtype(model: nn.Module, dtype: torch.dtype) -> None:
    """Every float parameter and buffer (masks and indices are bool and integers) is in ``dtype``."""
    floats = {k: t.dtype for k, t in model.state_dict().items() if t.is_floating_point()}
    assert floats and all(d == dtype for d in floats.values()), floats


@torch.no_grad()
def _run(graph: MaseGraph, x: torch.Tensor) -> torch.Tensor:
    graph.model.eval()
    y = graph.model(x)
    assert y.dtype == x.dtype and torch.isfinite(y).all()
    return y


def _compressed(dtype: torch.dtype, quantize: str, cls: type[nn.Module] = CNN) -> tuple[MaseGraph, torch.Tensor]:
    graph, x = _graph(dtype, cls)
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5}})
    graph, _ = PASSES["quantize"](graph, QUANTIZE[quantize])
    return graph, x


# --------------------------------------------------------------------------- prune


def _prune_tables() -> list[dict]:
    tables = []
    for (scope, granularity), methods in WEIGHT_METHODS.items():
        for method in methods:
            table = {"sparsity": 0.5, "scope": scope, "granularity": granularity, "method": method}
            tables.append({"weight": table | ({"types": ["conv2d"]} if granularity == "kernelwise" else {})})
    for (scope, granularity), methods in ACTIVATION_METHODS.items():
        for method in methods:
            table = {"sparsity": 0.5, "scope": scope, "granularity": granularity, "method": method}
            channels = {"types": ["conv2d", "linear"]} if granularity == "channelwise" else {}
            tables.append({"activation": table | channels})
    return tables


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_prune_method_keeps_the_dtype(dtype):
    for table in _prune_tables():
        graph, x = _graph(dtype)
        graph, _ = PASSES["prune"](graph, table)
        _assert_dtype(graph.model, dtype)
        _run(graph, x)


# --------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kmeans_centroids_and_weights_are_in_the_weights_dtype(dtype):
    graph, x = _compressed(dtype, "kmeans")
    _assert_dtype(graph.model, dtype)
    for w in graph.weights():
        q = quantizer_of(w.module, w.tensor_name)
        assert isinstance(q, KMeansWeight) and q.centroids.dtype == dtype and q.centroids.numel() <= 16
        weight = getattr(w.module, w.tensor_name)
        assert weight.dtype == dtype
        assert torch.equal(weight, q.centroids[q.index.long()] * q.mask)
        codes = weight_codes(w.module, w.tensor_name)
        assert codes.codebook.dtype == dtype and codes.codebook_format == str(dtype).removeprefix("torch.")
    _run(graph, x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fixed_point_runs_in_the_models_dtype(dtype):
    graph, x = _compressed(dtype, "integer")
    _assert_dtype(graph.model, dtype)
    for w in graph.weights():
        weight = getattr(w.module, w.tensor_name)
        assert weight.dtype == dtype and isinstance(quantizer_of(w.module, w.tensor_name), FixedPoint)
        assert torch.equal(quantize_fixed_point(weight, 8, 6), weight)  # on the grid
    _run(graph, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("width, frac", [(8, 6), (12, 4), (16, 0), (16, 8)])
def test_fixed_point_in_16_bits_is_float32_rounding_cast_back_and_idempotent(dtype, width, frac):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4096, generator=g) * 2.0 ** (width - 1 - frac)).to(dtype)  # saturates some
    y = quantize_fixed_point(x, width, frac)
    qmin, qmax = -(2 ** (width - 1)), 2 ** (width - 1) - 1
    expected = torch.fake_quantize_per_tensor_affine(x.float(), 2.0**-frac, 0, qmin, qmax).to(dtype)
    assert y.dtype == dtype and torch.equal(y, expected)
    assert torch.equal(quantize_fixed_point(y, width, frac), y)  # a decoded weight quantizes to itself
    # the weight as codes into the float32 grid, and back: what the Huffman coder stores and restores
    layer = nn.Linear(64, 64).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(x[:4096].view(64, 64))
    torch.nn.utils.parametrize.register_parametrization(layer, "weight", FixedPoint(width, frac), unsafe=True)
    codes = weight_codes(layer)
    assert torch.equal(codes.codebook, fixed_point_grid(width, frac))
    before = layer.weight.detach().clone()
    with torch.no_grad():
        layer.parametrizations.weight.original.zero_()
    load_weight_codes(layer, codes)
    assert layer.weight.dtype == dtype and torch.equal(layer.weight, before)
    grad = torch.autograd.grad(quantize_fixed_point(x.requires_grad_(), width, frac).sum(), x)[0]
    assert grad.dtype == dtype


# --------------------------------------------------------------------------- save / load


@pytest.mark.parametrize("quantize", ["kmeans", "integer"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_save_and_load_round_trip_dtype_and_values(tmp_path, dtype, quantize):
    graph, x = _compressed(dtype, quantize)
    before = _run(graph, x)
    path = save_graph(graph, tmp_path / "m.mz")
    loaded = load_graph(path, model=CNN(dtype))
    state, got = graph.model.state_dict(), loaded.model.state_dict()
    assert state.keys() == got.keys()
    assert all(got[k].dtype == v.dtype and torch.equal(got[k], v) for k, v in state.items())
    _assert_dtype(loaded.model, dtype)
    assert torch.equal(_run(loaded, x), before)


# --------------------------------------------------------------------------- Huffman


@pytest.mark.parametrize("quantize", list(QUANTIZE))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_huffman_decodes_bit_identical_in_its_dtype_in_a_fresh_graph(tmp_path, dtype, quantize):
    graph, x = _compressed(dtype, quantize)
    before = _run(graph, x)
    path = tmp_path / "m.mchz"
    graph, info = PASSES["huffman_encode"](graph, {"path": str(path)})
    name = str(dtype).removeprefix("torch.")
    header = file_header(path.read_bytes())
    recorded = {k: d for k, _, d in header["tensors"]}
    assert recorded["conv.parametrizations.weight.original"] == recorded["fc.parametrizations.weight.original"] == name
    if quantize == "kmeans":  # the codebook is stored in the weight's dtype (k centroids of its size)
        assert recorded["fc.parametrizations.weight.1.centroids"] == name
        row = next(r for r in info["layers"] if r["layer"] == "fc")
        assert row["codebook_format"] == name and row["codebook_bytes"] % dtype.itemsize == 0
    fresh = MaseGraph(CNN(dtype), dummy_input=x)  # another graph of the dense model: the structure is re-created
    decoded, _ = PASSES["huffman_decode"](fresh, {"path": str(path)})
    _assert_dtype(decoded.model, dtype)
    assert torch.equal(_run(decoded, x), before)
    for w in graph.weights():
        got = getattr(decoded.model.get_submodule(w.qualname), w.tensor_name)
        assert torch.equal(got, getattr(w.module, w.tensor_name))
    model = machop.load_compressed(path, model=CNN(dtype)).eval()
    with torch.no_grad():
        assert torch.equal(model(x), before)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_huffman_pass_verifies_a_user_model_of_its_dtype(tmp_path, dtype):
    graph, x = _compressed(dtype, "kmeans", MLP)
    graph, info = PASSES["huffman"](graph, {"path": str(tmp_path / "m.mchz")})
    assert info["verified"] is True
    _assert_dtype(graph.model, dtype)


def _rewritten(data: bytes, edit) -> bytes:
    header, sections = unpack_container(data)
    header.pop("sections", None)
    edit(header)
    return pack_container(header, list(sections.items()))


def test_a_file_whose_centroids_record_no_float_or_the_wrong_count_is_refused(tmp_path):
    graph, _ = _compressed(torch.float16, "kmeans")
    path = tmp_path / "m.mchz"
    PASSES["huffman_encode"](graph, {"path": str(path)})
    data = path.read_bytes()

    def entry(header: dict) -> list:
        return next(e for e in header["tensors"] if e[0] == "fc.parametrizations.weight.1.centroids")

    for edit, why in [
        (lambda h: entry(h).__setitem__(2, "int16"), "centroids must be recorded as"),  # same size, not a float
        (lambda h: entry(h).__setitem__(1, [entry(h)[1][0] + 1]), "centroids must be recorded as"),
        (lambda h: entry(h).__setitem__(2, "float32"), "section of layer 'fc' has"),  # 4 bytes a centroid: too few
        (lambda h: entry(h).__setitem__(2, "bfloat16"), "centroids are bfloat16, the weight they make float16"),
    ]:
        bad = tmp_path / "bad.mchz"
        bad.write_bytes(_rewritten(data, edit))
        with pytest.raises(CompressedFileError, match=why) as err:
            machop.load_compressed(bad, model=CNN(torch.float16))
        assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- export


def _onnx_input_dtype(path) -> int:
    return onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type


ONNX_TYPE = {torch.float32: 1, torch.float16: 10, torch.float64: 11, torch.bfloat16: 16}  # onnx.TensorProto


@pytest.mark.skipif(not HAS_ORT, reason="needs onnx and onnxruntime (pip install machop[onnx])")
@pytest.mark.parametrize("cls, dtype, exported", [
    (CNN, torch.float32, torch.float32),
    (CNN, torch.float16, torch.float16),
    (MLP, torch.float64, torch.float64),
    (CNN, torch.float64, torch.float32),  # onnxruntime has no float64 Conv on the CPU
    (MLP, torch.bfloat16, torch.float32),  # nor any bfloat16 kernel
    (CNN, torch.bfloat16, torch.float32),
], ids=lambda v: v.__name__ if isinstance(v, type) else str(v).removeprefix("torch."))
def test_export_keeps_the_dtype_where_onnxruntime_runs_it_else_says_float32(tmp_path, cls, dtype, exported, caplog):
    graph, x = _compressed(dtype, "kmeans", cls)
    before = _run(graph, x)
    path = tmp_path / "m.onnx"
    with caplog.at_level("WARNING"):
        graph, info = PASSES["export"](graph, {"path": str(path)})
    name = str(dtype).removeprefix("torch.")
    assert info["verified"] is True and info["model_dtype"] == name
    assert info["dtype"] == str(exported).removeprefix("torch.") and _onnx_input_dtype(path) == ONNX_TYPE[exported]
    assert info["max_abs_diff"] <= info["tolerance"] * float(before.abs().max())
    if exported == dtype:
        assert info["fallback"] is None and info["model_max_abs_diff"] is None
    else:
        assert info["fallback"].startswith(f"onnxruntime's CPU provider cannot run this {name} model")
        assert f"cannot run this {name} model" in caplog.text
        assert info["model_max_abs_diff"] <= 0.05 * float(before.abs().max())  # against the model's own outputs
    _assert_dtype(graph.model, dtype)  # the graph is untouched
    _, info = PASSES["export"](graph, {"path": str(tmp_path / "u.onnx"), "check": False})
    assert info["dtype"] == name and info["verified"] is None
    assert _onnx_input_dtype(tmp_path / "u.onnx") == ONNX_TYPE[dtype]
