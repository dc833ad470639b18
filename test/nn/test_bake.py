"""`machop.plain_model`: the compressed model back as the user's own class, every weight a plain tensor with exactly
the compressed values (oracle: the compressed graph's own outputs, compared with ``torch.equal``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import machop
from machop.datasets import get_dataset_info
from machop.ir import MaseGraph
from machop.models import LeNet5, get_model
from machop.nn import ActivationPrune, KMeansWeight, baked_state
from machop.passes.graph import PASSES

from zoo.models import ZOO, SmallCNN

KMEANS = {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 3, "bias": "float16"}}}
FIXED = {"by": "type", "default": {"config": {"name": "integer", "data_in_width": "NA", "data_in_frac_width": "NA",
                                              "weight_width": 6, "weight_frac_width": 5, "bias_width": 8,
                                              "bias_frac_width": 5}}}


def _compressed(model: nn.Module, x, quantize: dict | None = KMEANS, prune: dict | None = None) -> MaseGraph:
    graph = MaseGraph(model, dummy_input=x)
    graph, _ = PASSES["prune"](graph, prune or {"weight": {"sparsity": 0.6}})
    if quantize is not None:
        graph, _ = PASSES["quantize"](graph, quantize)
    graph.model.eval()
    return graph


def _is_plain(m: nn.Module) -> None:
    assert not any(parametrize.is_parametrized(sub) for sub in m.modules())
    assert not any("original" in k or "centroids" in k or "mask" in k for k, _ in m.named_parameters())
    assert not any(k.endswith((".mask", ".index")) for k, _ in m.named_buffers())


def _same(a: nn.Module, b: nn.Module, x) -> bool:
    with torch.no_grad():
        ya, yb = a(x), b(x)
    ya, yb = (ya, yb) if isinstance(ya, torch.Tensor) else (ya[0], yb[0])
    return torch.equal(ya, yb)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_model_comes_back_as_its_class_with_the_compressed_values(name):
    torch.manual_seed(0)
    cls = ZOO[name]
    x = cls.example()
    graph = _compressed(cls(), x)
    plain = machop.plain_model(graph, model=cls())
    assert type(plain) is cls
    _is_plain(plain)
    assert _same(graph.model, plain.eval(), x)
    for w in graph.weights():  # every compressed weight holds exactly the effective value, in the model's dtype
        baked = plain.get_parameter(f"{w.qualname}.{w.tensor_name}".lstrip("."))
        assert torch.equal(baked, w.value()) and baked.dtype == w.value().dtype


def test_k_means_values_are_the_centroids_and_pruned_weights_are_zero():
    torch.manual_seed(0)
    graph = _compressed(ZOO["MLP"](), ZOO["MLP"].example())
    plain = machop.plain_model(graph, model=ZOO["MLP"]())
    kmeans = graph.model.fc1.parametrizations.weight[-1]
    assert isinstance(kmeans, KMeansWeight)
    w = plain.fc1.weight
    assert set(w[kmeans.mask].tolist()) <= set(kmeans.codebook_values().tolist())
    assert int((w == 0).sum()) >= int((~kmeans.mask).sum())


def test_fixed_point_values_are_on_the_grid():
    torch.manual_seed(0)
    x = ZOO["MLP"].example()
    graph = _compressed(ZOO["MLP"](), x, quantize=FIXED)
    plain = machop.plain_model(graph, model=ZOO["MLP"]())
    _is_plain(plain)
    assert _same(graph.model, plain.eval(), x)
    scaled = plain.fc2.weight * 2**5
    assert torch.equal(scaled, scaled.round()) and scaled.abs().max() <= 2**5


def test_the_traced_instance_is_copied_and_the_graph_keeps_working():
    torch.manual_seed(0)
    model, x = ZOO["ResBlockNet"]().eval(), ZOO["ResBlockNet"].example()
    graph = _compressed(model, x)
    with torch.no_grad():
        before = graph.model(x)
    plain = machop.plain_model(graph, model=model)  # the instance the graph shares its layers with
    assert plain is not model and isinstance(plain, ZOO["ResBlockNet"])
    _is_plain(plain)
    with torch.no_grad():
        assert torch.equal(graph.model(x), before) and torch.equal(plain.eval()(x), before)
    assert parametrize.is_parametrized(graph.model.stem)  # the graph still compressed


def test_the_traced_instance_still_holding_masks_after_huffman_is_copied(tmp_path):
    torch.manual_seed(0)
    model, x = ZOO["ResBlockNet"]().eval(), ZOO["ResBlockNet"].example()
    graph = _compressed(model, x)
    graph, _ = PASSES["huffman"](graph, {"path": str(tmp_path / "m.mchz")})  # the graph's layers are new now
    assert not any(m is graph.model.stem for m in model.modules())
    plain = machop.plain_model(graph, model=model)  # model still carries the masks it was pruned with
    assert plain is not model
    _is_plain(plain)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), graph.model.eval()(x))


def test_a_tied_weight_stays_tied():
    torch.manual_seed(0)
    x = ZOO["TiedEmbedding"].example()
    graph = _compressed(ZOO["TiedEmbedding"](), x)
    plain = machop.plain_model(graph, model=ZOO["TiedEmbedding"]())
    tied = [p for p in plain.parameters()]  # parameters() lists a tied tensor once
    assert len(tied) == len(list(ZOO["TiedEmbedding"]().parameters()))
    assert _same(graph.model, plain.eval(), x)


def test_registry_model_through_a_shrunk_file(tmp_path):
    """Channelwise prune → shrink → prune → k-means → .mchz; back to a plain, smaller LeNet5 by name."""
    torch.manual_seed(0)
    info = get_dataset_info("fashion_mnist")
    x = torch.randn(4, 1, 28, 28)
    graph = MaseGraph(get_model("lenet5", info), dummy_input=x)
    graph.context.model_name, graph.context.dataset_info = "lenet5", info
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "granularity": "channelwise",
                                                  "method": "l1-norm-single"}})
    graph, _ = PASSES["shrink"](graph, {})
    graph = _compressed(graph.model, x)
    graph.context.model_name, graph.context.dataset_info, graph.context.shrunk = "lenet5", info, True
    graph, _ = PASSES["huffman_encode"](graph, {"path": str(tmp_path / "m.mchz")})
    decoded = machop.load_compressed(tmp_path / "m.mchz").eval()
    for plain in (machop.plain_model(decoded), machop.plain_model(tmp_path / "m.mchz"), machop.plain_model(graph)):
        assert type(plain) is LeNet5
        _is_plain(plain)
        assert plain.fc1.weight.shape[0] < get_model("lenet5", info).fc1.weight.shape[0]  # the shrunk size
        assert _same(decoded, plain.eval(), x) and _same(graph.model, plain, x)


def test_user_model_file_needs_the_class(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    graph = _compressed(SmallCNN(), x)
    graph, _ = PASSES["huffman_encode"](graph, {"path": str(tmp_path / "m.mchz")})
    decoded = machop.load_compressed(tmp_path / "m.mchz", model=SmallCNN()).eval()
    with pytest.raises(ValueError, match=r"model=SmallCNN\(\)"):
        machop.plain_model(decoded)
    plain = machop.plain_model(tmp_path / "m.mchz", model=SmallCNN())
    assert type(plain) is SmallCNN and _same(decoded, plain.eval(), x)
    with pytest.raises(ValueError, match="not the MLP given"):
        machop.plain_model(decoded, model=ZOO["MLP"]())


def test_inserted_modules_are_refused_until_folded():
    torch.manual_seed(0)
    x = torch.randn(4, 1, 28, 28)
    info = get_dataset_info("fashion_mnist")
    graph = _compressed(get_model("lenet5", info), x, quantize=None)
    fc2 = next(n for n in graph.nodes if n.op == "call_module" and n.target == "fc2")
    keep = torch.rand(graph.model.fc2.in_features) > 0.5
    graph.insert_before(fc2, 0, "fc2_act", ActivationPrune(channel_dim=-1, channel_mask=keep))
    with pytest.raises(ValueError, match=r"fc2_act.*ActivationPrune.*prune_remove"):
        machop.plain_model(graph, model=get_model("lenet5", info))
    with torch.no_grad():
        expected = graph.model(x)
    graph, removed = PASSES["prune_remove"](graph, {})
    assert removed["folded_channel_masks"] == 1
    plain = machop.plain_model(graph, model=get_model("lenet5", info))
    _is_plain(plain)
    with torch.no_grad():
        assert torch.equal(plain.eval()(x), expected)


def test_baked_state_keys_are_the_plain_models():
    torch.manual_seed(0)
    graph = _compressed(ZOO["ResBlockNet"](), ZOO["ResBlockNet"].example())
    assert set(baked_state(graph.model)) == set(ZOO["ResBlockNet"]().state_dict())


@pytest.mark.parametrize("quantize", [KMEANS, FIXED], ids=["kmeans", "fixed"])
def test_prune_remove_bakes_a_quantized_weight_whole(quantize):
    torch.manual_seed(0)
    x = ZOO["ResBlockNet"].example()
    graph = _compressed(ZOO["ResBlockNet"](), x, quantize=quantize)
    with torch.no_grad():
        expected = graph.model(x)
    values = {w.name: w.value().clone() for w in graph.weights()}
    graph, info = PASSES["prune_remove"](graph, {})
    assert sorted(info["baked_quantized"]) == sorted(values) and info["baked_weight_masks"] == len(values)
    for w in graph.weights():
        assert not parametrize.is_parametrized(w.module, w.tensor_name)
        assert torch.equal(w.value(), values[w.name])
    with torch.no_grad():
        assert torch.equal(graph.model(x), expected)


def test_passes_refuse_a_plain_model_and_the_documented_export_works(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    graph = _compressed(SmallCNN(), x)
    graph, _ = PASSES["huffman_encode"](graph, {"path": str(tmp_path / "m.mchz")})
    model = machop.load_compressed(tmp_path / "m.mchz", model=SmallCNN())
    with pytest.raises(TypeError, match=r"export_pass takes a MaseGraph, not a SmallCNN.*MaseGraph\(model, dummy_input"):
        PASSES["export"](model, {"path": str(tmp_path / "m.onnx")})
    graph = MaseGraph(model, dummy_input=torch.randn(1, 1, 28, 28))  # the documented way
    graph, info = PASSES["export"](graph, {"path": str(tmp_path / "m.onnx")})
    assert info["verified"] and (tmp_path / "m.onnx").is_file()
