"""The quantize pass on registry models: k-means weight sharing, selection by type/name/regex, errors, summary."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from machop.config import ConfigError
from machop.passes.graph.analysis.quantization import summarize_quantization
from machop.nn import KMeansWeight
from machop.passes.graph.transforms.quantize import parse_quantize_args, quantize_transform_pass

KMEANS = {"by": "type", "default": {"config": {"name": "kmeans"}}}


def kmeans_layer(module) -> KMeansWeight:
    (p,) = [p for p in module.parametrizations.weight if isinstance(p, KMeansWeight)]
    return p


def test_weights_are_centroids_or_pruned_zeros(lenet5, prune_randomly):
    masks = prune_randomly(lenet5, ["conv2", "fc1"], keep=0.3)
    before = {n.name: lenet5.module_of(n).weight.detach().clone() for n in lenet5.layer_nodes()}
    graph, info = quantize_transform_pass(lenet5, KMEANS)
    for node in graph.layer_nodes():
        module = graph.module_of(node)
        p = kmeans_layer(module)
        w = module.weight.detach()
        bits = 8 if node.name.startswith("conv") else 5
        assert p.bits == bits and p.centroids.numel() <= 2**bits
        assert p.index.dtype == torch.uint8
        on_centroid = (w[..., None] == p.centroids.detach()).any(-1)
        if node.name in masks:
            mask = masks[node.name]
            assert torch.equal(p.mask, mask)
            assert (w[~mask] == 0).all()
            assert on_centroid[mask].all()
        else:
            assert p.mask.all() and on_centroid.all()
        # the clustering used the kept weights only, and moved each by less than the widest cluster
        assert torch.equal(w, p.centroids.detach()[p.index.long()] * p.mask)
        assert (w - before[node.name]).abs()[p.mask].max() < (before[node.name].max() - before[node.name].min()) / 2
        # the original weight is frozen under the parametrization
        assert not module.parametrizations.weight.original.requires_grad
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["fc1"]["arithmetic"] == "kmeans" and rows["fc1"]["bits"] == 5
    assert rows["fc1"]["kept"] == int(masks["fc1"].sum())
    assert rows["fc1"]["weight_size_bits"] == rows["fc1"]["kept"] * 5 + 32 * 2**5
    assert rows["fc1"]["distinct"] <= 32 and rows["conv1"]["distinct"] <= 256
    json.dumps(info)


def test_training_moves_centroids_only(lenet5, prune_randomly, sample_input):
    masks = prune_randomly(lenet5, ["conv2", "fc1"], keep=0.4)
    args = {"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 4}},
            "linear": {"config": {"name": "kmeans", "weight_bits": 3}}}
    graph, _ = quantize_transform_pass(lenet5, args)
    layers = {n.name: graph.module_of(n) for n in graph.layer_nodes()}
    fixed = {k: (kmeans_layer(m).index.clone(), kmeans_layer(m).mask.clone(),
                 m.parametrizations.weight.original.detach().clone()) for k, m in layers.items()}
    cents = {k: kmeans_layer(m).centroids.detach().clone() for k, m in layers.items()}
    graph.model.train()
    opt = torch.optim.SGD(graph.model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    x, y = sample_input(graph, 16), torch.arange(16) % 10
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(graph(x), y).backward()
        opt.step()
    for name, m in layers.items():
        p = kmeans_layer(m)
        index, mask, original = fixed[name]
        assert torch.equal(p.index, index) and torch.equal(p.mask, mask)
        assert torch.equal(m.parametrizations.weight.original, original)
        assert not torch.equal(p.centroids.detach(), cents[name]), name
        w = m.weight.detach()
        assert torch.equal(w, p.centroids.detach()[index.long()] * mask)
        assert (w[..., None] == p.centroids.detach()).any(-1)[mask].all()
        if name in masks:
            assert (w[~masks[name]] == 0).all()


def test_centroid_gradient_is_sum_over_cluster(lenet5, prune_randomly, sample_input):
    prune_randomly(lenet5, ["fc1"], keep=0.5)
    graph, _ = quantize_transform_pass(lenet5, {"by": "name", "fc1": {"config": {"name": "kmeans"}}})
    fc1 = graph.model.fc1
    p = kmeans_layer(fc1)
    with parametrize.cached():
        w = fc1.weight
        w.retain_grad()
        graph(sample_input(graph)).sum().backward()
    expected = torch.zeros_like(p.centroids).index_add_(0, p.index.long()[p.mask], w.grad[p.mask])
    torch.testing.assert_close(p.centroids.grad, expected, rtol=1e-5, atol=1e-6)


def test_zero_layers_and_few_values(lenet5, prune_randomly):
    prune_randomly(lenet5, ["conv1"], keep=0.0)  # fully pruned
    with torch.no_grad():
        lenet5.model.conv2.weight.zero_()  # unpruned, all zero
        lenet5.model.fc2.weight.copy_(torch.tensor([-0.5, 0.0, 0.25, 1.0])[torch.arange(5000) % 4].view(10, 500))
    fc2_before = lenet5.model.fc2.weight.detach().clone()
    graph, info = quantize_transform_pass(lenet5, KMEANS)
    conv1, conv2, fc2 = (kmeans_layer(getattr(graph.model, n)) for n in ("conv1", "conv2", "fc2"))
    assert (graph.model.conv1.weight == 0).all() and not conv1.mask.any() and conv1.centroids.numel() == 1
    assert (graph.model.conv2.weight == 0).all() and conv2.mask.all() and conv2.centroids.tolist() == [0.0]
    assert torch.equal(graph.model.fc2.weight, fc2_before)  # 4 distinct values < 32 clusters: exact
    assert sorted(fc2.centroids.tolist()) == [-0.5, 0.0, 0.25, 1.0]
    rows = {r["name"]: r for r in info["layers"]}
    assert rows["conv1"]["kept"] == 0 and rows["conv1"]["distinct"] == 0
    assert rows["conv2"]["distinct"] == 1 and rows["fc2"]["distinct"] == 4
    # zeros of an unpruned layer are values: the all-zero layer keeps every position
    assert rows["conv2"]["kept"] == graph.model.conv2.weight.numel()


def test_select_by_regex_and_default_na(lenet5):
    args = {
        "by": "regex_name",
        "default": {"config": {"name": "NA"}},
        "fc1": {"config": {"name": "kmeans", "weight_bits": 2, "init": "density"}},
        "fc.*": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8,
                            "weight_frac_width": 6, "bias_width": 8, "bias_frac_width": 6}},
        "conv2": {"config": {"name": "NA"}},
    }
    snapshot = copy.deepcopy(args)
    graph, info = quantize_transform_pass(lenet5, args)
    assert args == snapshot  # the pass never mutates its arguments
    kinds = {r["name"]: (r["arithmetic"], r["bits"]) for r in info["layers"]}
    assert kinds == {"fc1": ("kmeans", 2), "fc2": ("integer", 8)}  # first matching key wins
    assert sorted(s["name"] for s in info["skipped"]) == ["conv1", "conv2"]
    assert not parametrize.is_parametrized(graph.model.conv1)


def test_summarize_quantization(lenet5, prune_randomly):
    prune_randomly(lenet5, ["fc1"], keep=0.1)
    args = {"by": "name", "conv2": {"config": {"name": "kmeans"}},
            "fc1": {"config": {"name": "integer", "data_in_width": "NA", "data_in_frac_width": "NA", "weight_width": 6,
                               "weight_frac_width": 5, "bias_width": 8, "bias_frac_width": 7}}}
    graph, qinfo = quantize_transform_pass(lenet5, args)
    graph, info = summarize_quantization(graph)
    rows = {r["name"]: r for r in info["layers"]}
    assert [r["name"] for r in info["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert rows["conv1"]["arithmetic"] == "none" and rows["conv1"]["size_bits"] == rows["conv1"]["fp32_size_bits"]
    fc1 = rows["fc1"]
    assert fc1["arithmetic"] == "integer" and fc1["bits"] == 6 and fc1["bias_bits"] == 8
    assert fc1["weight_size_bits"] == 6 * 400_000 and fc1["bias_size_bits"] == 8 * 500
    assert fc1["distinct"] <= 2**6 and fc1["data_in_bits"] is None
    conv2 = rows["conv2"]
    assert conv2["weight_size_bits"] == 25_000 * 8 + 32 * 256 and conv2["bias_size_bits"] == 32 * 50
    assert info["total"]["size_bits"] == sum(r["size_bits"] for r in rows.values())
    for node in graph.layer_nodes():
        assert graph.meta(node)["software"]["quantize"] == rows[node.name]
    for r in qinfo["layers"]:  # the pass reports the same rows (plus clustering figures)
        assert {k: v for k, v in r.items() if k not in ("n_iter", "converged", "sse", "relocation")} == rows[r["name"]]
    json.dumps(info)
    with pytest.raises(ConfigError, match="takes no options"):
        summarize_quantization(graph, {"verbose": True})


def int_cfg(**over):
    cfg = {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8, "weight_frac_width": 4,
           "bias_width": 8, "bias_frac_width": 4}
    cfg.update(over)
    return cfg


BAD_ARGS = [
    ({"default": {"config": {"name": "kmeans"}}}, "passes.quantize.by", "is required"),
    ({"by": "op"}, "passes.quantize.by", "'type', 'name', 'regex_name'"),
    ({"by": "type", "linear": {"config": {"name": "fixed"}}}, "passes.quantize.linear.config.name",
     "'integer', 'kmeans', 'NA'"),
    ({"by": "type", "linear": {"config": {}}}, "passes.quantize.linear.config.name", "is required"),
    ({"by": "type", "linear": {"config": int_cfg(weight_width=0)}}, "passes.quantize.linear.config.weight_width",
     r"must be in \[1, 16\], got 0"),
    ({"by": "type", "linear": {"config": int_cfg(data_in_width=17)}}, "passes.quantize.linear.config.data_in_width",
     r"must be in \[1, 16\]"),
    ({"by": "type", "linear": {"config": int_cfg(bias_frac_width=-1)}}, "passes.quantize.linear.config.bias_frac_width",
     r"must be in \[0, 32\]"),
    ({"by": "type", "linear": {"config": int_cfg(data_in_width="NA")}},
     "passes.quantize.linear.config.data_in_width", "NA"),
    ({"by": "type", "linear": {"config": {k: v for k, v in int_cfg().items() if k != "weight_width"}}},
     "passes.quantize.linear.config.weight_width", "is required"),
    ({"by": "type", "linear": {"config": int_cfg(weight_widht=8)}}, "passes.quantize.linear.config.weight_widht",
     "unknown key; allowed keys: bias_frac_width"),
    ({"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 0}}},
     "passes.quantize.conv2d.config.weight_bits", r"must be in \[1, 16\], got 0"),
    ({"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 17}}},
     "passes.quantize.conv2d.config.weight_bits", r"must be in \[1, 16\], got 17"),
    ({"by": "type", "conv2d": {"config": {"name": "kmeans", "init": "kmeans++"}}},
     "passes.quantize.conv2d.config.init", "'linear', 'density', 'random'"),
    ({"by": "type", "conv2d": {"config": {"name": "kmeans", "bits": 4}}}, "passes.quantize.conv2d.config.bits",
     "unknown key"),
    ({"by": "type", "conv2d": {"config": {"name": "NA", "weight_bits": 4}}},
     "passes.quantize.conv2d.config.weight_bits", "NA"),
    ({"by": "type", "relu": {"config": {"name": "kmeans"}}}, "passes.quantize.relu", "linear, conv1d, conv2d"),
    ({"by": "type", "linear": {"cfg": {"name": "kmeans"}}}, "passes.quantize.linear.cfg", "allowed keys: config"),
    ({"by": "type", "linear": "kmeans"}, "passes.quantize.linear", "must be a table"),
    ({"by": "regex_name", "fc[": {"config": {"name": "kmeans"}}}, "passes.quantize.fc[", "regular expression"),
]


@pytest.mark.parametrize("args,key,message", BAD_ARGS)
def test_config_errors(args, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_quantize_args(args)
    assert err.value.key == key


@pytest.mark.parametrize("args,key,valid", [
    ({"by": "name", "conv9": {"config": {"name": "kmeans"}}}, "passes.quantize.conv9",
     "valid names: conv1, conv2, fc1, fc2"),
    ({"by": "regex_name", "conv.*": {"config": {"name": "kmeans"}}, "fc3.*": {"config": {"name": "kmeans"}}},
     "passes.quantize.fc3.*", "valid names: conv1, conv2, fc1, fc2"),
    ({"by": "name", "default": {"config": {"name": "kmeans"}}, "fc1": {"config": {"name": "kmeans"}},
      "pool1": {"config": {"name": "kmeans"}}}, "passes.quantize.pool1", "valid names: conv1"),
])
def test_key_matching_nothing_changes_nothing(lenet5, args, key, valid):
    with pytest.raises(ConfigError, match=valid) as err:
        quantize_transform_pass(lenet5, args)
    assert err.value.key == key
    assert not any(parametrize.is_parametrized(lenet5.module_of(n)) for n in lenet5.layer_nodes())


def test_error_path_uses_step_label_and_shadowed_regex_warns(lenet5, caplog):
    lenet5.context.step = "quantize_fc"
    with pytest.raises(ConfigError) as err:
        quantize_transform_pass(lenet5, {"by": "name", "fc9": {"config": {"name": "kmeans"}}})
    assert err.value.key == "passes.quantize_fc.fc9"
    lenet5.context.step = None
    with caplog.at_level("WARNING"):
        quantize_transform_pass(lenet5, {"by": "regex_name", "fc.": {"config": {"name": "kmeans"}},
                                         "fc1": {"config": {"name": "kmeans"}}})
    assert "passes.quantize.fc1: every weight it matches is taken by an earlier key" in caplog.text


def test_type_key_absent_from_model(make_graph):
    graph = make_graph("lenet300")
    with pytest.raises(ConfigError, match="valid types: linear") as err:
        quantize_transform_pass(graph, {"by": "type", "conv2d": {"config": {"name": "kmeans"}}})
    assert err.value.key == "passes.quantize.conv2d"


def test_frac_width_may_exceed_width(lenet5):
    args = {"by": "name", "fc2": {"config": int_cfg(weight_width=4, weight_frac_width=9)}}
    graph, _ = quantize_transform_pass(lenet5, args)
    w = graph.model.fc2.weight
    original = graph.model.fc2.parametrizations.weight.original
    assert torch.equal(w, torch.fake_quantize_per_tensor_affine(original, 2.0**-9, 0, -8, 7))
    assert w.abs().max() <= 8 * 2.0**-9


def test_quantizing_twice_is_refused(lenet5):
    quantize_transform_pass(lenet5, KMEANS)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_transform_pass(lenet5, {"by": "type", "linear": {"config": int_cfg()}})
