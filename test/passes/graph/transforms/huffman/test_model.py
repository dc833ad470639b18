"""prune → quantize → huffman_encode → huffman_decode: bit-identical models, honest sizes, refused bad files."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from machop.config import TrainSettings
from machop.config import ConfigError
from machop.datasets import DatasetInfo, MaseDataModule, get_dataset_info
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.passes.graph import PASSES
from machop.passes.graph.transforms.huffman import (
    DEFAULT_FILENAME,
    CompressedFileError,
    decode_model,
    encode_model,
    huffman_decode_pass,
    huffman_encode_pass,
    huffman_pass,
    load_compressed,
    parse_huffman_args,
)
from machop.nn import dense_parameter_count
from machop.ir.mchz.model import gap_decode, gap_encode
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.nn import weight_codes
from machop.passes.graph.transforms.quantize import quantize_transform_pass

KMEANS = {"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 5}},
          "linear": {"config": {"name": "kmeans", "weight_bits": 4}}}
INTEGER = {"by": "type", "default": {"config": {
    "name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 6, "weight_frac_width": 7,
    "bias_width": 8, "bias_frac_width": 6}}}


def make_graph(name: str, info: DatasetInfo, tmp_path=None, seed: int = 0) -> MaseGraph:
    torch.manual_seed(seed)
    ctx = PassContext(model_name=name, dataset_info=info, training=TrainSettings(seed=seed), output_dir=tmp_path)
    graph = MaseGraph(get_model(name, info), context=ctx)
    graph.model.eval()
    return graph


def compress(graph: MaseGraph, sparsity: float = 0.9, quantize: dict = KMEANS) -> MaseGraph:
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": sparsity}})
    graph, _ = quantize_transform_pass(graph, quantize)
    return graph


@torch.no_grad()
def outputs(graph: MaseGraph, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    graph.model.eval()
    return [graph.model(x) for x in batches]


def assert_identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def fashion_batches() -> list[torch.Tensor]:
    dm = MaseDataModule("fashion_mnist", batch_size=128, test_limit=256)
    return [x for x, _ in dm.test_dataloader()]


TINY = DatasetInfo("tiny", 10, 1, (4, 4))


def tiny_graph(tmp_path=None) -> MaseGraph:
    """lenet300 on 1×4×4 images, pruned 90% and 2-bit k-means: its file is a few kB."""
    return compress(make_graph("lenet300", TINY, tmp_path), 0.9,
                    {"by": "type", "linear": {"config": {"name": "kmeans", "weight_bits": 2}}})


@pytest.fixture(scope="module")
def tiny_file() -> tuple[bytes, MaseGraph]:
    """(file bytes, graph) of `tiny_graph`; tests must not modify the graph."""
    graph = tiny_graph()
    data, _ = encode_model(graph)
    return data, graph


# --------------------------------------------------------------------------- relative positions


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3000), st.floats(0.0, 1.0), st.integers(1, 16), st.integers(0, 2**32 - 1))
def test_gap_coding_round_trip(numel, density, index_bits, seed):
    mask = np.random.default_rng(seed).random(numel) < density
    positions = np.flatnonzero(mask)
    gaps = gap_encode(positions, index_bits)
    filler = 2**index_bits - 1
    assert gaps.min(initial=0) >= 0 and gaps.max(initial=0) <= filler
    skipped = np.diff(positions, prepend=-1) - 1
    assert np.count_nonzero(gaps == filler) == int((skipped // filler).sum())  # fillers carry no value
    assert np.count_nonzero(gaps != filler) == positions.size
    np.testing.assert_array_equal(gap_decode(gaps, index_bits, numel), positions)


def test_gap_decode_refuses_inconsistent_streams():
    with pytest.raises(CompressedFileError):
        gap_decode(np.array([0, 31]), 5, 100)  # trailing filler
    with pytest.raises(CompressedFileError):
        gap_decode(np.array([40]), 5, 100)  # out of the alphabet
    with pytest.raises(CompressedFileError):
        gap_decode(np.array([30, 30, 30, 30]), 5, 100)  # beyond the weight


# --------------------------------------------------------------------------- end to end


def test_lenet5_bit_identical_on_fashion_mnist(tmp_path, fashion_batches):
    graph = compress(make_graph("lenet5", get_dataset_info("fashion_mnist"), tmp_path))
    before = outputs(graph, fashion_batches)
    _, info = huffman_encode_pass(graph, {})
    path = tmp_path / DEFAULT_FILENAME
    assert info["path"] == str(path) and info["file_bytes"] == os.path.getsize(path) == info["total"]["file_bytes"]
    dense = dense_parameter_count(get_model("lenet5", get_dataset_info("fashion_mnist")))
    assert info["total"]["dense_bytes"] == 4 * dense == 4 * 431_080
    assert info["total"]["ratio"] == pytest.approx(4 * dense / os.path.getsize(path))
    assert info["total"]["ratio"] > 25
    assert info["total"]["bits_per_parameter"] == pytest.approx(32 / info["total"]["ratio"])
    assert json.loads(json.dumps(info)) == info  # JSON-serialisable as it is
    rows = {r["layer"]: r for r in info["layers"]}
    assert set(rows) == {"conv1", "conv2", "fc1", "fc2"}
    assert rows["fc1"]["nnz"] == round(0.1 * 800 * 500)
    assert 0 < rows["fc1"]["bits_per_weight"] <= 4.2 and 0 < rows["fc1"]["bits_per_index"] < 6
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))

    # 1) the file alone (registry + file)
    loaded = load_compressed(path)
    assert loaded.context.model_name == "lenet5"
    assert_identical(before, outputs(loaded, fashion_batches))
    # 2) into a fresh dense lenet5 graph (another structure: rebuilt, context kept)
    fresh = make_graph("lenet5", get_dataset_info("fashion_mnist"), tmp_path, seed=7)
    decoded, dinfo = huffman_decode_pass(fresh, {})
    assert dinfo["path"] == str(path) and decoded.context is fresh.context
    assert_identical(before, outputs(decoded, fashion_batches))
    # 3) in place into the graph that was encoded, after scrambling its weights
    with torch.no_grad():
        for p in graph.model.parameters():
            p.add_(1.0)
    same, _ = huffman_decode_pass(graph, {"path": str(path)})
    assert same is graph
    assert_identical(before, outputs(graph, fashion_batches))
    for name in ("conv1", "fc1"):
        a, b = weight_codes(getattr(graph.model, name)), weight_codes(getattr(loaded.model, name))
        assert torch.equal(a.mask, b.mask) and torch.equal(a.codebook, b.codebook)
        assert torch.equal(a.codes[a.mask], b.codes[b.mask])


def test_resnet18_bit_identical(tmp_path):
    info = get_dataset_info("colored_fashion_mnist")
    graph = compress(make_graph("resnet18", info, tmp_path))
    with torch.no_grad():  # non-trivial batch-norm statistics, so the raw section matters
        for m in graph.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    x = [torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(1))]
    before = outputs(graph, x)
    graph, info = huffman_pass(graph, {})
    assert info["verified"] and info["file_bytes"] == os.path.getsize(info["path"])
    assert info["total"]["dense_bytes"] == 4 * 11_173_962
    assert info["total"]["ratio"] > 25
    assert_identical(before, outputs(load_compressed(info["path"]), x))


def test_fixed_point_layers_and_inserted_modules(tmp_path, fashion_batches):
    """Fixed-point codes, input quantizers and activation-pruning modules inserted in the fx graph."""
    graph = make_graph("lenet5", get_dataset_info("fashion_mnist"), tmp_path)
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": 0.8}, "activation": {"sparsity": 0.3}})
    graph, _ = quantize_transform_pass(graph, INTEGER)
    inserted = {n.target for n in graph.nodes if n.op == "call_module"} - {"conv1", "conv2", "fc1", "fc2", "pool1",
                                                                          "pool2", "relu"}
    assert len(inserted) >= 4  # activation masks + input quantizers
    fashion_batches = fashion_batches[:1]
    before = outputs(graph, fashion_batches)
    _, info = huffman_encode_pass(graph, {"index_bits": 3})
    assert {r["kind"] for r in info["layers"]} == {"integer"}
    loaded = load_compressed(info["path"])
    assert {n.target for n in loaded.nodes if n.op == "call_module"} >= inserted
    assert_identical(before, outputs(loaded, fashion_batches))
    fresh, _ = huffman_decode_pass(make_graph("lenet5", get_dataset_info("fashion_mnist"), tmp_path, seed=3), {})
    assert_identical(before, outputs(fresh, fashion_batches))


@pytest.mark.parametrize("index_bits", [1, 2, 8, 16])
def test_index_bits(tiny_file, index_bits, tmp_path):
    _, graph = tiny_file
    x = [torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(2))]
    data, report = encode_model(graph, index_bits=index_bits)
    assert report["index_bits"] == index_bits
    assert_identical(outputs(graph, x), outputs(decode_model(data), x))


def test_unpruned_quantized_model_round_trips(tmp_path):
    graph, _ = quantize_transform_pass(make_graph("lenet300", TINY), {"by": "type", "default": {"config": {
        "name": "kmeans", "weight_bits": 3}}})
    data, report = encode_model(graph)
    assert all(r["density"] == 1.0 and r["bits_per_index"] < 0.05 for r in report["layers"])  # all gaps 0: 0 bits
    x = [torch.randn(3, 1, 4, 4)]
    assert_identical(outputs(graph, x), outputs(decode_model(data), x))


def test_live_maps_false_codes_flat_positions(tmp_path):
    graph = make_graph("lenet300", TINY)
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "granularity": "channelwise",
                                                  "method": "l1-norm-single"}})
    graph, _ = quantize_transform_pass(graph, {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 3}}})
    infos = {}
    for maps in (True, False):
        _, infos[maps] = PASSES["huffman"](graph, {"path": str(tmp_path / f"{maps}.mchz"), "live_maps": maps})
    assert any(r["position_map"] for r in infos[True]["layers"])
    assert not any(r["position_map"] for r in infos[False]["layers"])
    assert infos[True]["file_bytes"] < infos[False]["file_bytes"]


# --------------------------------------------------------------------------- refusals


def test_unquantized_layer_is_named_unless_allow_raw(tmp_path):
    graph, _ = prune_transform_pass(make_graph("lenet5", get_dataset_info("fashion_mnist"), tmp_path),
                                    {"weight": {"sparsity": 0.5}})
    graph, _ = quantize_transform_pass(graph, {"by": "type", "linear": {"config": {"name": "kmeans"}}})
    with pytest.raises(ValueError, match=r"weight conv1 \(conv2d\) is not quantized.*allow_raw"):
        huffman_encode_pass(graph, {})
    assert not (tmp_path / DEFAULT_FILENAME).exists()
    _, info = huffman_encode_pass(graph, {"allow_raw": True})
    assert [r["name"] for r in info["raw_layers"]] == ["conv1", "conv2"] and {r["layer"] for r in info["layers"]} == {"fc1", "fc2"}
    x = [torch.randn(2, 1, 28, 28)]
    assert_identical(outputs(graph, x), outputs(load_compressed(info["path"]), x))


def test_every_single_byte_change_and_truncation_of_a_model_file_is_refused(tiny_file):
    data, graph = tiny_file
    assert 1000 < len(data) < 8000
    target = make_graph("lenet300", TINY)
    snapshot = copy.deepcopy(target.model.state_dict())
    buf = bytearray(data)
    for i in range(len(buf)):
        for flip in ((0x01, 0x80, 0xFF) if i < 64 else (0xFF,)):
            buf[i] ^= flip
            with pytest.raises(CompressedFileError):
                decode_model(bytes(buf), target)
            buf[i] ^= flip
    for cut in range(len(data)):
        with pytest.raises(CompressedFileError):
            decode_model(data[:cut], target)
    after = target.model.state_dict()
    assert all(torch.equal(snapshot[k], after[k]) for k in snapshot)  # nothing was touched
    decode_model(data, target)  # the intact file still loads


def test_other_architecture_is_refused_before_any_weight_changes(tmp_path, tiny_file):
    data, _ = tiny_file
    lenet5 = make_graph("lenet5", get_dataset_info("fashion_mnist"))
    snapshot = copy.deepcopy(lenet5.model.state_dict())
    with pytest.raises(CompressedFileError, match="lenet300.*lenet5"):
        decode_model(data, lenet5)
    # same registry name, other input size: named by the first differing tensor
    big = make_graph("lenet300", get_dataset_info("fashion_mnist"))
    big.context.model_name = None
    with pytest.raises(CompressedFileError, match="fc1.weight"):
        decode_model(data, big)
    after = lenet5.model.state_dict()
    assert all(torch.equal(snapshot[k], after[k]) for k in snapshot)
    with pytest.raises(CompressedFileError, match="not a machop compressed file"):
        decode_model(b"\x00" * 100, lenet5)


def test_missing_context_and_missing_file(tmp_path, tiny_file):
    _, graph = tiny_file
    with pytest.raises(ConfigError, match="passes.huffman_encode.path"):
        huffman_encode_pass(graph, {})  # no output_dir, no path
    with pytest.raises(FileNotFoundError):
        huffman_decode_pass(graph, {"path": str(tmp_path / "none.mchz")})
    with pytest.raises(FileNotFoundError):
        load_compressed(tmp_path / "none.mchz")


# --------------------------------------------------------------------------- arguments


def test_parse_args_defaults_and_errors():
    args = parse_huffman_args(None)
    assert (args.is_huffman, args.index_bits, args.allow_raw, args.path, args.verify) == (True, 5, False, None, True)
    table = {"is_huffman": False, "index_bits": 16, "path": "NA"}
    assert parse_huffman_args(table).path is None
    assert table == {"is_huffman": False, "index_bits": 16, "path": "NA"}  # not mutated
    with pytest.raises(ConfigError, match=r"passes.huffman.index_bit: unknown key; allowed keys: allow_raw, "):
        parse_huffman_args({"index_bit": 5})
    with pytest.raises(ConfigError, match=r"passes.huffman.index_bits: must be in \[1, 16\], got 17"):
        parse_huffman_args({"index_bits": 17})
    with pytest.raises(ConfigError, match=r"passes.huffman.index_bits: must be in \[1, 16\], got 0"):
        parse_huffman_args({"index_bits": 0})
    with pytest.raises(ConfigError, match="passes.huffman.is_huffman: must be true or false"):
        parse_huffman_args({"is_huffman": "yes"})
    with pytest.raises(ConfigError, match="passes.x.path"):
        parse_huffman_args({"path": " "}, "passes.x")


def test_is_huffman_false_skips_everything(tmp_path, tiny_file):
    _, graph = tiny_file
    graph = copy.copy(graph)
    graph.context = PassContext(model_name="lenet300", dataset_info=TINY, output_dir=tmp_path)
    for fn in (huffman_pass, huffman_encode_pass, huffman_decode_pass):
        out, info = fn(graph, {"is_huffman": False})
        assert out is graph and info == {"is_huffman": False}
    assert os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match="passes.huffman.bogus"):
        huffman_pass(graph, {"bogus": 1})


def test_huffman_pass_checks_outputs(tmp_path, monkeypatch):
    graph = tiny_graph(tmp_path)
    graph.dummy_input = torch.randn(3, 1, 4, 4)
    out, info = huffman_pass(graph, {"index_bits": 4})
    # the pass returns the model rebuilt from the file alone, on the same context
    assert out is not graph and out.context is graph.context
    assert info["verified"] and info["path"] == str(tmp_path / DEFAULT_FILENAME)
    assert info["file_bytes"] == os.path.getsize(info["path"]) and info["index_bits"] == 4
    graph.context.output_dir = None
    with pytest.raises(ConfigError, match="passes.huffman.path"):
        huffman_pass(graph, {})
    graph.context.output_dir = tmp_path

    from machop.ir.mchz import model as mchz_model

    def broken(data, g, name, **kwargs):  # a decoder that loses a bias: the check must notice
        g = decode_model(data, g, name, **kwargs)
        with torch.no_grad():
            g.model.fc3.bias.add_(1e-3)
        return g

    monkeypatch.setattr(mchz_model, "decode_model", broken)  # what the pass's load_compressed decodes with
    with pytest.raises(RuntimeError, match="outputs differ"):
        huffman_pass(graph, {})
