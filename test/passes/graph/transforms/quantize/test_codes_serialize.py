"""Quantized graphs survive save/load (pt, mz) bit for bit; weight_codes / load_weight_codes round-trip."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parametrize

from machop.ir.serialize import apply_structure, describe_structure, load_graph, save_graph
from machop.nn import WeightMask, get_mask
from machop.nn import FixedPoint, KMeansWeight, WeightCodes, fixed_point_grid, load_weight_codes, weight_codes
from machop.passes.graph.transforms.quantize import quantize_transform_pass

INT_CFG = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 5, "weight_width": 6, "weight_frac_width": 7,
           "bias_width": 8, "bias_frac_width": 6}
MIXED = {"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 6}}, "linear": {"config": INT_CFG}}


@pytest.fixture
def quantized(lenet5, prune_randomly):
    prune_randomly(lenet5, ["conv2", "fc1"], keep=0.3)
    graph, _ = quantize_transform_pass(lenet5, MIXED)
    return graph


@pytest.mark.parametrize("load_type", ["pt", "mz"])
def test_save_load_bit_identical(quantized, sample_input, tmp_path, load_type):
    path = save_graph(quantized, tmp_path / f"model.{load_type}", load_type=load_type)
    loaded = load_graph(path)
    loaded.model.eval()
    x = sample_input(quantized, 8)
    assert torch.equal(quantized(x), loaded(x))
    for name in ("conv1", "conv2"):
        a, b = (dict(g.model.named_modules())[name].parametrizations.weight[-1] for g in (quantized, loaded))
        assert isinstance(b, KMeansWeight) and b.bits == 6
        assert torch.equal(a.centroids, b.centroids) and isinstance(b.centroids, torch.nn.Parameter)
        assert torch.equal(a.index, b.index) and b.index.dtype == torch.uint8
        assert torch.equal(a.mask, b.mask)
    assert torch.equal(get_mask(loaded.model.fc1), get_mask(quantized.model.fc1))
    assert "fc1_data_in_quantizer" in str(loaded)
    if load_type == "mz":
        node = next(n for n in loaded.nodes if n.name == "conv2")
        assert loaded.meta(node)["software"]["quantize"]["arithmetic"] == "kmeans"


def test_weight_codes_contract(quantized):
    for name in ("conv1", "conv2", "fc1", "fc2"):
        module = getattr(quantized.model, name)
        codes = weight_codes(module)
        assert isinstance(codes, WeightCodes)
        assert codes.codes.dtype == torch.int64 and codes.codes.shape == module.weight.shape
        assert codes.codebook.dtype == torch.float32 and codes.codebook.dim() == 1
        assert codes.mask.dtype == torch.bool and codes.codebook.numel() <= 2**codes.bits
        assert torch.equal(codes.codebook[codes.codes] * codes.mask, module.weight)
        assert codes.codes.min() >= 0 and codes.codes.max() < codes.codebook.numel()
    fc1 = weight_codes(quantized.model.fc1)
    assert fc1.kind == "integer" and fc1.bits == 6 and torch.equal(fc1.codebook, fixed_point_grid(6, 7))
    assert fc1.codebook.numel() == 64 and torch.equal(fc1.mask, get_mask(quantized.model.fc1))
    assert weight_codes(quantized.model.fc2).mask.all()  # unpruned: all True
    assert weight_codes(quantized.model.conv2).kind == "kmeans"
    assert weight_codes(quantized.model.fc1, "bias").kind == "integer"


def test_unquantized_gives_none(lenet5, prune_randomly):
    prune_randomly(lenet5, ["fc1"])
    assert weight_codes(lenet5.model.fc1) is None and weight_codes(lenet5.model.conv1) is None


def test_codes_round_trip_into_placeholders(quantized, make_graph, sample_input):
    """weight_codes -> fresh model rebuilt from the structure with zeroed tensors -> load_weight_codes."""
    layers = ("conv1", "conv2", "fc1", "fc2")
    codes = {name: weight_codes(getattr(quantized.model, name)) for name in layers}
    structure = describe_structure(quantized)
    state = quantized.model.state_dict()
    zeros = {k: torch.zeros_like(v) for k, v in state.items()}
    fresh = make_graph("lenet5", seed=123)  # different initial weights
    apply_structure(fresh, structure, zeros)
    # what a decoder restores besides the coded weights: every tensor that is not part of a weight chain
    rest = {k: v for k, v in state.items() if ".parametrizations.weight." not in k}
    fresh.model.load_state_dict(rest, strict=False)
    for name in layers:
        load_weight_codes(getattr(fresh.model, name), codes[name])
    fresh.model.eval()
    x = sample_input(quantized, 8)
    assert torch.equal(fresh(x), quantized(x))
    for name in layers:
        a, b = getattr(quantized.model, name), getattr(fresh.model, name)
        assert torch.equal(a.weight, b.weight)
        for pa, pb in zip(a.parametrizations.weight, b.parametrizations.weight):
            assert type(pa) is type(pb)
            if isinstance(pa, (WeightMask, KMeansWeight)):
                assert torch.equal(pa.mask, pb.mask)
            if isinstance(pa, KMeansWeight):
                assert torch.equal(pa.centroids, pb.centroids) and torch.equal(pa.index, pb.index)
                assert pb.index.dtype == pa.index.dtype
        # the decoded model saves and trains like the original: same state dict keys and shapes
    assert {k: v.shape for k, v in fresh.model.state_dict().items() if "original" not in k} == \
        {k: v.shape for k, v in state.items() if "original" not in k}


def test_load_weight_codes_replaces_placeholder_shapes(lenet5):
    graph, _ = quantize_transform_pass(lenet5, {"by": "name", "fc2": {"config": {"name": "kmeans", "weight_bits": 3}}})
    codes = weight_codes(graph.model.fc2)
    fresh_param = torch.nn.Linear(500, 10)
    parametrize.register_parametrization(
        fresh_param, "weight",
        KMeansWeight(torch.zeros(1), torch.zeros(10, 500, dtype=torch.uint8), torch.zeros(10, 500, dtype=torch.bool)),
        unsafe=True)
    load_weight_codes(fresh_param, codes)
    assert torch.equal(fresh_param.weight, graph.model.fc2.weight)
    assert fresh_param.parametrizations.weight[0].bits == 3


def test_load_weight_codes_refuses_mismatch(quantized):
    codes = weight_codes(quantized.model.fc2)
    with pytest.raises(ValueError, match="k-means quantized"):
        load_weight_codes(quantized.model.conv1, WeightCodes(torch.zeros(20, 1, 5, 5, dtype=torch.long), codes.codebook,
                                                             torch.ones(20, 1, 5, 5, dtype=torch.bool), 6, "integer"))
    bad = WeightCodes(codes.codes, codes.codebook * 2, codes.mask, codes.bits, "integer")
    with pytest.raises(ValueError, match="grid"):
        load_weight_codes(quantized.model.fc2, bad)
    plain = torch.nn.Linear(500, 10)
    with pytest.raises(ValueError, match="no quantizer"):
        load_weight_codes(plain, codes)


def test_integer_codes_are_q_plus_offset(quantized):
    fc2 = quantized.model.fc2
    codes = weight_codes(fc2)
    q = torch.round(fc2.weight * 2**7)
    assert torch.equal(codes.codes, (q + 32).long())
    assert isinstance(fc2.parametrizations.weight[-1], FixedPoint)
