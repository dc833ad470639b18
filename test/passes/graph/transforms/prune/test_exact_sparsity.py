"""Every method reaches exactly round(sparsity * n) pruned elements/groups on lenet5, vgg7 and resnet18."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from machop.nn import ActivationPrune, get_mask
from machop.passes.graph.transforms.prune import ACTIVATION_METHODS, WEIGHT_METHODS, prune_transform_pass

MODELS = ["lenet5", "vgg7", "resnet18"]
SPARSITY = 0.37  # not a round fraction of any layer size: rounding is exercised
GROUP_SIZE = {
    "elementwise": lambda w: 1,
    "kernelwise": lambda w: math.prod(w.shape[2:]),
    "channelwise": lambda w: math.prod(w.shape[1:]),
}
WEIGHT_CASES = [(s, g, m) for (s, g), methods in WEIGHT_METHODS.items() for m in methods]
ACTIVATION_CASES = [(s, g, m) for (s, g), methods in ACTIVATION_METHODS.items() for m in methods]


def _linear_names(graph):
    return [n.name for n in graph.layer_nodes() if isinstance(graph.module_of(n), nn.Linear)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scope,granularity,method", WEIGHT_CASES)
def test_weight_sparsity_exact(make_graph, model, scope, granularity, method):
    graph = make_graph(model, data=False)
    exclude = _linear_names(graph) if granularity == "kernelwise" else []
    cfg = {"sparsity": SPARSITY, "scope": scope, "granularity": granularity, "method": method, "exclude": exclude}
    graph, info = prune_transform_pass(graph, {"weight": cfg})
    json.dumps(info)
    dense = {d["name"]: d["reason"] for d in info["weight"]["dense"]}
    if granularity == "channelwise":  # the classifier's rows are the classes: left alone unless named
        assert set(dense) == graph.output_layers() and len(dense) == 1
        assert all(r.startswith("output layer") for r in dense.values())
    pruned_total = elems_total = 0
    for node in graph.layer_nodes():
        module = graph.module_of(node)
        mask = get_mask(module)
        if node.name in exclude or node.name in dense:
            assert mask is None
            continue
        w = module.weight
        group = GROUP_SIZE[granularity](w)
        pruned = mask.numel() - int(torch.count_nonzero(mask))
        assert pruned % group == 0  # whole groups only
        assert w.numel() - int(torch.count_nonzero(w)) == pruned  # the effective weight is zero exactly there
        if scope == "local":
            assert pruned // group == round(SPARSITY * (w.numel() // group)), node.name
            assert info["layers"][node.name]["weight"]["achieved"] == pytest.approx(pruned / w.numel())
        pruned_total += pruned
        elems_total += w.numel()
    if scope == "global":
        assert pruned_total == round(SPARSITY * elems_total)
    assert info["weight"]["achieved"] == pytest.approx(pruned_total / elems_total)


def _per_sample_pruned(graph, x):
    """Run ``x``; per ActivationPrune node, the number of inputs it prunes per sample (from its keep mask)."""
    counts, handles = {}, []
    for node in graph.nodes:
        module = graph.module_of(node)
        if isinstance(module, ActivationPrune):
            (user,) = node.users

            def hook(mod, inputs, output, name=user.name):
                keep = mod.keep_mask(inputs[0]).reshape(inputs[0].shape[0], -1)
                counts[name] = ((~keep).sum(dim=1).tolist(), keep.shape[1])
                assert torch.equal(output, inputs[0] * keep.reshape(inputs[0].shape))

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        graph.model.eval()(x)
    for h in handles:
        h.remove()
    return counts


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scope,granularity,method", ACTIVATION_CASES)
def test_activation_sparsity_exact(make_graph, model, scope, granularity, method):
    graph = make_graph(model)
    cfg = {"sparsity": SPARSITY, "scope": scope, "granularity": granularity, "method": method,
           "calibration_samples": 4}
    graph, info = prune_transform_pass(graph, {"activation": cfg})
    json.dumps(info)
    info_ = graph.context.dataset_info
    x = torch.randn(3, info_.in_channels, *info_.image_size, generator=torch.Generator().manual_seed(1))
    counts = _per_sample_pruned(graph, x)
    layers = graph.layer_nodes()
    assert set(counts) == {n.name for n in layers}
    if granularity == "channelwise":
        for node in layers:
            act = graph.module_of(node.args[0])
            channels = act.channel_mask.numel()
            assert int((~act.channel_mask).sum()) == round(SPARSITY * channels), node.name
            per_sample, n = counts[node.name]
            assert all(c == (n // channels) * round(SPARSITY * channels) for c in per_sample)
    elif scope == "local":
        for node in layers:
            per_sample, n = counts[node.name]
            assert per_sample == [round(SPARSITY * n)] * 3, node.name
            assert info["layers"][node.name]["activation"]["achieved"] == round(SPARSITY * n) / n
    else:
        total = sum(n for _, n in counts.values())
        for s in range(3):
            assert sum(c[s] for c, _ in counts.values()) == round(SPARSITY * total)
