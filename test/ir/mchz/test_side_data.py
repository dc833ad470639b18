"""Format version 2: 16-bit codebooks and biases stored as the model uses them, a smaller header, the byte breakdown."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from machop.config import TrainSettings
from machop.datasets import MaseDataModule
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.ir.mchz import decode_model, encode_model
from machop.passes.graph.transforms.huffman import huffman_pass
from machop.ir.mchz.format import VERSION, version_of
from machop.ir.mchz.model import _encode_stream, file_header
from machop.ir.mchz import codec
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.passes.graph.transforms.quantize import quantize_transform_pass

DATA = Path(__file__).parent / "data"
SPARSITY = {"default": 0.9, "conv1": 0.35, "conv2": 0.85, "fc1": 0.95, "fc2": 0.75}  # the main job's last round


def quantize_args(fmt: str) -> dict:
    """8-bit conv / 5-bit fc k-means, codebooks and biases in ``fmt``."""
    cfg = {"name": "kmeans", "codebook": fmt, "bias": fmt}
    return {"by": "type", "conv2d": {"config": {**cfg, "weight_bits": 8}}, "linear": {"config": {**cfg, "weight_bits": 5}}}


@pytest.fixture(scope="module")
def fashion() -> MaseDataModule:
    dm = MaseDataModule("fashion_mnist", batch_size=64, train_limit=640, test_limit=256)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def pruned_state(fashion) -> dict:
    """A LeNet-5 pruned as the main job's last round (not trained: the breakdown matters, not accuracy)."""
    graph = lenet5(fashion)
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": SPARSITY}})
    return {k: v.clone() for k, v in graph.model.state_dict().items()}


def lenet5(dm: MaseDataModule, state: dict | None = None) -> MaseGraph:
    torch.manual_seed(0)
    ctx = PassContext(model_name="lenet5", dataset_info=dm.info, training=TrainSettings(seed=0))
    graph = MaseGraph(get_model("lenet5", dm.info), context=ctx, dummy_input=dm.dummy_input(2))
    if state is not None:
        graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": SPARSITY}})
        graph.model.load_state_dict(state)
    return graph


def fine_tune(graph: MaseGraph, dm: MaseDataModule, steps: int = 4) -> None:
    """A few Adam steps through the masks, codebooks and rounding (the centroids and biases move)."""
    opt = torch.optim.Adam([p for p in graph.model.parameters() if p.requires_grad], lr=1e-3)
    graph.model.train()
    for _, (x, y) in zip(range(steps), dm.train_dataloader()):
        loss = torch.nn.functional.cross_entropy(graph.model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    graph.model.eval()


@torch.no_grad()
def outputs(graph: MaseGraph, dm: MaseDataModule) -> list[torch.Tensor]:
    graph.model.eval()
    return [graph.model(x) for x, _ in dm.test_dataloader()]


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_lenet5_with_16_bit_side_data_decodes_bit_identically_and_is_smaller(fashion, pruned_state, fmt):
    files = {}
    for f in ("float32", fmt):
        graph = lenet5(fashion, pruned_state)
        graph, _ = quantize_transform_pass(graph, quantize_args(f))
        fine_tune(graph, fashion)
        data, report = encode_model(graph)
        decoded = decode_model(data)
        assert all(torch.equal(a, b) for a, b in zip(outputs(graph, fashion), outputs(decoded, fashion)))
        files[f] = (data, report, graph)
    (small, rs, graph), (big, rb, _) = files[fmt], files["float32"]
    # the model uses exactly what is stored: centroids and biases are 16-bit values after training
    for name in ("conv1", "conv2", "fc1", "fc2"):
        module = getattr(graph.model, name)
        assert torch.equal(module.bias, module.bias.to(getattr(torch, fmt)).float())
        codebook = module.parametrizations.weight[-1].codebook_values()
        assert torch.equal(codebook, codebook.to(getattr(torch, fmt)).float())
    ps, pb = rs["total"]["parts"], rb["total"]["parts"]
    assert sum(ps.values()) == len(small) and sum(pb.values()) == len(big)
    # indices and masks are the same: only codebooks and biases shrink, to half
    assert (ps["values"], ps["positions"]) == (pb["values"], pb["positions"])
    centroids = 2 * 256 + 2 * 32
    biases = 20 + 50 + 500 + 10
    assert pb["codebooks"] == 4 * centroids and ps["codebooks"] == 2 * centroids
    assert pb["raw"] == 4 * biases and ps["raw"] == 2 * biases
    assert rs["total"]["raw_bytes_by_format"] == {fmt: 2 * biases}
    assert 0 <= ps["header"] - pb["header"] <= 60  # the chains name the formats: a few bytes
    assert len(big) - len(small) >= 2 * (centroids + biases) - 60
    # the registry reader (what ch test does), and the huffman pass's own bit-exact check
    reloaded = decode_model(small)
    assert all(torch.equal(a, b) for a, b in zip(outputs(graph, fashion), outputs(reloaded, fashion)))


def test_huffman_pass_verifies_16_bit_side_data(fashion, pruned_state, tmp_path):
    graph = lenet5(fashion, pruned_state)
    graph, _ = quantize_transform_pass(graph, {**quantize_args("float16"), "side": "float16"})
    fine_tune(graph, fashion, 2)
    decoded, info = huffman_pass(graph, {"path": str(tmp_path / "m.mchz")})
    assert info["verified"] and info["file_bytes"] == (tmp_path / "m.mchz").stat().st_size
    assert set(info["total"]["parts"]) == {"values", "positions", "codebooks", "raw", "header"}
    assert all("values_bytes" in row and "positions_bytes" in row and "codebook_bytes" in row for row in info["layers"])
    assert version_of((tmp_path / "m.mchz").read_bytes()) == VERSION == 3


def test_main_job_like_header_is_small(fashion, pruned_state):
    graph = lenet5(fashion, pruned_state)
    graph, _ = quantize_transform_pass(graph, quantize_args("float32"))
    data, report = encode_model(graph)
    # version 1 spent ~1,200 bytes on this header (zlib, no dictionary, Huffman tables for 256 rare symbols)
    assert report["total"]["header_bytes"] < 750, report["total"]["parts"]
    header = file_header(data)
    assert all("node" not in layer for layer in header["layers"])  # the node is the name: not repeated


def test_a_version_1_file_still_decodes():
    """A file machop wrote before version 2 (lenet300 on 4x4 images, k-means fc1, fixed-point fc2 and fc3)."""
    data = (DATA / "lenet300_tiny_v1.mchz").read_bytes()
    assert version_of(data) == 1
    graph = decode_model(data)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = graph.model.eval()(x)
    assert hashlib.sha256(y.numpy().tobytes()).hexdigest() == \
        "fb20599d5f869173a4f0477dfbc4961cf8ca7892ebd2a9b1e75e6df4a1ffcb35"
    again, _ = encode_model(graph)  # re-written as the current version: smaller (no fixed-point grids, dictionary)
    assert version_of(again) == VERSION and len(again) < len(data) - 300
    with torch.no_grad():
        assert torch.equal(decode_model(again).model.eval()(x), y)


def test_flat_code_when_the_table_costs_more_than_it_saves():
    rng = np.random.default_rng(0)
    few = rng.integers(0, 256, 325)  # conv1 of the main job: 325 weights in 256 clusters
    stream = _encode_stream(few)
    lengths = stream.table.lengths
    assert lengths.max() - lengths.min() <= 1  # the flat code
    assert np.array_equal(codec.decode(stream), few)
    skewed = np.minimum(rng.geometric(0.3, 20000) - 1, 31)  # many weights, few symbols: Huffman pays
    stream = _encode_stream(skewed)
    assert stream.nbits == codec.encode(skewed).nbits and np.array_equal(codec.decode(stream), skewed)


def test_fixed_point_biases_are_stored_as_their_integer_codes(fashion):
    graph = lenet5(fashion)
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": 0.8}})
    cfg = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 6, "weight_frac_width": 7}
    graph, _ = quantize_transform_pass(graph, {"by": "type", "conv2d": {"config": {**cfg, "bias_width": 12, "bias_frac_width": 9}},
                                               "linear": {"config": {**cfg, "bias_width": 8, "bias_frac_width": 6}}})
    fine_tune(graph, fashion, 2)
    data, report = encode_model(graph)
    assert report["total"]["raw_bytes_by_format"] == {"int16": 2 * (20 + 50), "int8": 500 + 10}
    assert report["total"]["parts"]["codebooks"] == 0  # fixed-point grids are not stored
    decoded = decode_model(data)
    assert all(torch.equal(a, b) for a, b in zip(outputs(graph, fashion), outputs(decoded, fashion)))
    for name in ("conv1", "fc2"):
        assert torch.equal(getattr(decoded.model, name).bias, getattr(graph.model, name).bias)


@pytest.mark.parametrize("name", ["ResBlockNet", "TinyTransformer", "LSTMNet", "AttentionGRU", "TiedEmbedding", "CalledTwice"])
def test_16_bit_side_data_on_user_models(name, tmp_path):
    """Norm layers, attention and RNN biases, ties: rounded by ``side``, stored in 16 bits, decoded bit for bit."""
    from zoo.models import ZOO

    torch.manual_seed(0)
    cls = ZOO[name]
    graph = MaseGraph(cls(), dummy_input=cls.example())
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": 0.5}})
    graph, qinfo = quantize_transform_pass(graph, {"by": "type", "side": "bfloat16", "default": {"config": {
        "name": "kmeans", "weight_bits": 4, "codebook": "float16", "bias": "float16"}}})
    decoded, info = huffman_pass(graph, {"path": str(tmp_path / "m.mchz")})  # rebuilt on a dense copy, outputs compared
    assert info["verified"]
    formats = info["total"]["raw_bytes_by_format"]
    assert set(formats) - {"float16", "bfloat16"} <= {"float32", "int64", "bool"}  # buffers (running stats, masks)
    assert formats.get("float16", 0) + formats.get("bfloat16", 0) > 0
    assert all(row["codebook_format"] == "float16" for row in info["layers"])
