"""MaseGraph: traced models equal eager ones; metadata; save/load without pickle."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext, load_graph, save_graph
from machop.ir.serialize import load_payload
from machop.models import get_model
from machop.passes.graph.analysis.metadata import add_common_metadata, init_metadata
from machop.nn import apply_mask, get_mask

MODELS = [("lenet300", "fashion_mnist"), ("lenet5", "fashion_mnist"), ("vgg7", "cifar10"), ("resnet18", "cifar10")]


def _input(info, n=4):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, info.in_channels, *info.image_size, generator=g)


@pytest.mark.parametrize("name,dataset", MODELS)
def test_traced_graph_equals_eager_model(name, dataset):
    info = get_dataset_info(dataset)
    torch.manual_seed(0)
    model = get_model(name, info).eval()
    graph = MaseGraph(model)
    x = _input(info)
    with torch.no_grad():
        assert torch.equal(graph.model(x), model(x))
    # the graph really is a graph of the model's layers
    assert len(graph.layer_nodes()) == sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())


def test_common_metadata_shapes_and_ops():
    info = get_dataset_info("fashion_mnist")
    graph = MaseGraph(get_model("lenet5", info), dummy_input=_input(info, 2))
    init_metadata(graph)
    _, result = add_common_metadata(graph)
    assert result["num_params"] == 431_080
    ops = [graph.meta(n)["common"]["mase_op"] for n in graph.nodes]
    assert ops.count("conv2d") == 2 and ops.count("linear") == 2
    first_conv = graph.layer_nodes()[0]
    common = graph.meta(first_conv)["common"]
    assert common["args"][0]["shape"] == [2, 1, 28, 28]
    assert common["results"][0]["shape"] == [2, 20, 24, 24]
    assert common["num_params"] == 20 * 25 + 20


@pytest.mark.parametrize("load_type", ["pt", "mz"])
def test_save_load_keeps_masks_and_outputs(tmp_path, load_type):
    info = get_dataset_info("fashion_mnist")
    torch.manual_seed(0)
    graph = MaseGraph(get_model("lenet5", info), context=PassContext(model_name="lenet5", dataset_info=info))
    graph.dummy_input = _input(info, 2)
    init_metadata(graph)
    add_common_metadata(graph)
    for node in graph.layer_nodes():
        module = graph.module_of(node)
        apply_mask(module, torch.rand(module.weight.shape) > 0.5)
    path = save_graph(graph, tmp_path / f"m.{load_type}", load_type)
    # plain data only: loads with weights_only=True
    payload = load_payload(path)
    assert payload["format"] == f"machop.{load_type}"
    loaded = load_graph(path)
    x = _input(info)
    graph.model.eval(), loaded.model.eval()
    with torch.no_grad():
        assert torch.equal(loaded.model(x), graph.model(x))
    for node in graph.layer_nodes():
        assert torch.equal(get_mask(loaded.model.get_submodule(node.target)), get_mask(graph.module_of(node)))
    if load_type == "mz":
        conv = loaded.layer_nodes()[0]
        assert loaded.meta(conv)["common"]["results"][0]["shape"] == [2, 20, 24, 24]


def test_load_refuses_foreign_and_unknown_classes(tmp_path):
    info = get_dataset_info("fashion_mnist")
    graph = MaseGraph(get_model("lenet300", info), context=PassContext(model_name="lenet300", dataset_info=info))
    path = save_graph(graph, tmp_path / "m.pt", "pt")
    payload = torch.load(path, weights_only=True)
    payload["structure"] = payload["structure"].replace('"parametrizations": []', (
        '"parametrizations": [{"module": "fc1", "tensor": "weight", "chain": [{"class": "os.system", "spec": {}}]}]'))
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="unknown class 'os.system'"):
        load_graph(tmp_path / "evil.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="not a readable PyTorch weights file"):
        load_graph(tmp_path / "junk.pt")
