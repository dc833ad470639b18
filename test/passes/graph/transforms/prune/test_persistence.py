"""Masks survive training, save/load (pt and mz) and compose over repeated passes; remove bakes them."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from machop.ir import load_graph, save_graph
from machop.passes.graph.analysis.pruning import add_pruning_metadata
from machop.nn import ActivationPrune, get_mask
from machop.passes.graph.transforms.prune import prune_remove_pass, prune_transform_pass


def _x(graph, n=2, seed=0):
    info = graph.context.dataset_info
    return torch.randn(n, info.in_channels, *info.image_size, generator=torch.Generator().manual_seed(seed))


def _outputs(graph, x):
    graph.model.eval()
    with torch.no_grad():
        return graph.model(x)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_pruned_weights_stay_zero_through_training(make_graph, optimizer):
    graph = make_graph("lenet5", data=False)
    prune_transform_pass(graph, {"weight": {"sparsity": 0.8, "method": "l1-norm"}})
    model = graph.model.train()
    masks = {n: get_mask(m).clone() for n, m in model.named_modules() if get_mask(m) is not None}
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1))
    before = {n: model.get_submodule(n).weight.detach().clone() for n in masks}
    for step in range(4):
        x, y = _x(graph, 8, seed=step), torch.randint(0, 10, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        assert torch.equal(get_mask(model.get_submodule(name)), mask)
        assert (w[~mask] == 0).all()  # exactly zero, not just small
        assert not torch.equal(w[mask], before[name][mask])  # the kept weights did train


@pytest.mark.parametrize("load_type", ["pt", "mz"])
def test_save_load_keeps_masks_and_activation_modules(make_graph, tmp_path, load_type):
    graph = make_graph("resnet18")
    prune_transform_pass(graph, {
        "weight": {"sparsity": 0.6, "granularity": "channelwise", "method": "l2-norm-multi", "exclude": ["fc"]},
        "activation": {"sparsity": 0.3, "granularity": "channelwise", "method": "feature-map-l2-norm",
                       "calibration_samples": 4},
    })
    prune_transform_pass(graph, {"activation": {"sparsity": 0.5, "method": "l1-norm"}})  # a stage on the same modules
    x = _x(graph)
    expected = _outputs(graph, x)
    path = save_graph(graph, tmp_path / f"model.{load_type}", load_type=load_type)
    loaded = load_graph(path)
    assert torch.equal(_outputs(loaded, x), expected)
    for (name, a), (_, b) in zip(graph.model.named_modules(), loaded.model.named_modules()):
        if get_mask(a) is not None:
            assert torch.equal(get_mask(a), get_mask(b)), name
            assert b.parametrizations["weight"][0].how == a.parametrizations["weight"][0].how
        if isinstance(a, ActivationPrune):
            assert isinstance(b, ActivationPrune) and b.stages == a.stages
            assert torch.equal(a.channel_mask, b.channel_mask)
    _, info_a = add_pruning_metadata(graph)
    _, info_b = add_pruning_metadata(loaded)
    assert info_a == info_b
    if load_type == "mz":
        node = next(n for n in loaded.nodes if n.name == "layer1_0_conv1")
        assert loaded.meta(node)["software"]["prune"]["weight"]["method"] == "l2-norm-multi"


def test_iterative_weight_pruning_composes(make_graph):
    graph = make_graph("vgg7", data=False)
    prune_transform_pass(graph, {"weight": {"sparsity": 0.5, "method": "random", "seed": 1}})
    first = {n.name: get_mask(graph.module_of(n)).clone() for n in graph.layer_nodes()}
    _, info = prune_transform_pass(graph, {"weight": {"sparsity": 0.8, "method": "l1-norm"}})
    for node in graph.layer_nodes():
        mask = get_mask(graph.module_of(node))
        assert not (mask & ~first[node.name]).any()  # nothing revived
        assert int((~mask).sum()) == round(0.8 * mask.numel())  # earlier pruning counts towards 0.8
        assert len(graph.module_of(node).parametrizations["weight"]) == 1  # ANDed, not stacked
        assert info["layers"][node.name]["weight"]["method"] == "l1-norm"
    _, info = prune_transform_pass(graph, {"weight": {"sparsity": 0.3, "scope": "global"}})
    assert info["weight"]["achieved"] == pytest.approx(0.8, abs=1e-6)  # a lower target changes nothing


def test_iterative_global_and_channel_composition(make_graph):
    graph = make_graph("lenet5")
    prune_transform_pass(graph, {"weight": {"sparsity": 0.4, "granularity": "channelwise"}})
    _, info = prune_transform_pass(graph, {"weight": {"sparsity": 0.7, "scope": "global"}})
    total = sum(get_mask(graph.module_of(n)).numel() for n in graph.layer_nodes())
    pruned = sum(int((~get_mask(graph.module_of(n))).sum()) for n in graph.layer_nodes())
    assert pruned == round(0.7 * total)
    # activation channels: a second pass keeps the first pass's channels pruned and reaches the new count
    prune_transform_pass(graph, {"activation": {"sparsity": 0.2, "granularity": "channelwise",
                                                "method": "feature-map-l1-norm", "calibration_samples": 8}})
    acts = [m for m in graph.model.modules() if isinstance(m, ActivationPrune)]
    first = [a.channel_mask.clone() for a in acts]
    prune_transform_pass(graph, {"activation": {"sparsity": 0.5, "granularity": "channelwise",
                                                "method": "feature-map-similarity", "calibration_samples": 8}})
    acts2 = [m for m in graph.model.modules() if isinstance(m, ActivationPrune)]
    assert len(acts2) == len(acts)  # merged into the same modules
    for a, m in zip(acts2, first):
        assert not (a.channel_mask & ~m).any()
        assert int((~a.channel_mask).sum()) == max(round(0.5 * m.numel()), int((~m).sum()))


def test_remove_bakes_masks_and_keeps_outputs(make_graph):
    graph = make_graph("vgg7")
    prune_transform_pass(graph, {
        "weight": {"sparsity": 0.7},
        "activation": {"sparsity": 0.4, "granularity": "channelwise", "method": "feature-map-l1-norm",
                       "calibration_samples": 4},
    })
    x = _x(graph)
    expected = _outputs(graph, x)
    sparsity = add_pruning_metadata(graph)[1]["totals"]["weight_sparsity"]
    _, info = prune_remove_pass(graph)
    assert info["folded_channel_masks"] == len(graph.layer_nodes())
    assert not any(parametrize.is_parametrized(m) for m in graph.model.modules())
    assert not any(isinstance(m, ActivationPrune) for m in graph.model.modules())
    assert "act_prune" not in str(graph)
    assert torch.allclose(_outputs(graph, x), expected, atol=1e-5)  # channel masks folded into next weights
    _, report = add_pruning_metadata(graph)
    assert report["totals"]["weight_sparsity"] > sparsity  # folded input channels add zeros
    assert all(entry["weight"] is None for entry in report["layers"].values())


def test_remove_flag_in_the_prune_table(make_graph):
    graph = make_graph("lenet300", data=False)
    _, info = prune_transform_pass(graph, {"weight": {"sparsity": 0.9}, "activation": {"sparsity": 0.5},
                                           "remove": True})
    assert info["removed"]["baked_weight_masks"] == 3
    assert info["removed"]["dropped_activation_stages"] == 3
    assert isinstance(graph.model.fc1.weight, nn.Parameter)
    assert int((graph.model.fc1.weight == 0).sum()) == round(0.9 * graph.model.fc1.weight.numel())
    assert info["totals"]["weight_sparsity"] == pytest.approx(0.9, abs=1e-4)


def test_info_and_metadata(make_graph):
    graph = make_graph("lenet5")
    _, info = prune_transform_pass(graph, {"weight": {"sparsity": 0.5, "exclude": ["fc2"]},
                                           "activation": {"sparsity": 0.25, "exclude": ["conv1"]}})
    json.dumps(info)
    conv2 = info["layers"]["conv2"]
    assert conv2["kind"] == "conv2d" and conv2["module"] == "conv2"
    assert conv2["weight"] == {"scope": "local", "granularity": "elementwise", "method": "l1-norm",
                               "target": 0.5, "achieved": 0.5}
    assert conv2["activation"]["method"] == "l1-norm" and conv2["activation"]["achieved"] == round(0.25 * 2880) / 2880
    assert conv2["params"] == 25050 and conv2["nonzero_params"] == 12500 + 50
    assert conv2["macs_dense"] == 50 * 8 * 8 * 20 * 25
    assert conv2["macs_effective"] == pytest.approx(conv2["macs_dense"] * 0.5 * (1 - conv2["activation"]["achieved"]))
    assert info["layers"]["fc2"]["weight"] is None
    assert info["layers"]["conv1"]["activation"] is None
    assert info["layers"]["conv1"]["macs_effective"] == pytest.approx(info["layers"]["conv1"]["macs_dense"] * 0.5)
    node = next(n for n in graph.layer_nodes() if n.name == "conv2")
    assert graph.meta(node)["software"]["prune"] == conv2
    totals = info["totals"]
    assert totals["macs_dense"] == sum(e["macs_dense"] for e in info["layers"].values())


class _Scale(nn.Module):
    """A non-mask parametrization (stands in for weight sharing / fixed point)."""

    def forward(self, X):
        return X * 2


def test_remove_refuses_to_bake_other_parametrizations(make_graph):
    graph = make_graph("lenet300", data=False)
    prune_transform_pass(graph, {"weight": {"sparsity": 0.5}})
    parametrize.register_parametrization(graph.model.fc2, "weight", _Scale())
    with pytest.raises(RuntimeError, match="fc2.*_Scale"):
        prune_remove_pass(graph)
    assert all(parametrize.is_parametrized(graph.module_of(n)) for n in graph.layer_nodes())  # nothing changed
