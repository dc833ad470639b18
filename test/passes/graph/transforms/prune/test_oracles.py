"""The weight methods against torch.nn.utils.prune (the oracle) and brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from machop.ir import MaseGraph
from machop.nn import get_mask
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.nn import lowest_k_mask, prune_count

SPARSITIES = [0.1, 0.37, 0.5, 0.9, 0.999]


class Net(nn.Module):
    """Conv and Linear layers of assorted shapes; forward is not used by these tests except tracing."""

    def __init__(self, shapes):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k) for i, o, k in shapes["conv"])
        self.fcs = nn.ModuleList(nn.Linear(i, o) for i, o in shapes["fc"])

    def forward(self, x):
        for c in self.convs:
            x = c(x)
        x = torch.flatten(x, 1)
        for f in self.fcs:
            x = f(x)
        return x


SHAPES = [
    {"conv": [(3, 8, 3), (8, 16, 5)], "fc": [(16 * 2 * 2, 33), (33, 7)]},
    {"conv": [(1, 5, 1), (5, 64, 3)], "fc": [(64 * 6 * 6, 10)]},
]
INPUT = {0: (1, 3, 8, 8), 1: (1, 1, 8, 8)}


def _random_net(shape_index: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = Net(SHAPES[shape_index])
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p))  # continuous: no ties
    return net


def _layers(net):
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@pytest.mark.parametrize("shape_index", [0, 1])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_local_l1_equals_l1_unstructured(shape_index, sparsity):
    net = _random_net(shape_index, seed=shape_index)
    oracle = _random_net(shape_index, seed=shape_index)
    graph = MaseGraph(net)
    prune_transform_pass(graph, {"weight": {"sparsity": sparsity, "method": "l1-norm"}})
    for ours, ref in zip(_layers(graph.model), _layers(oracle)):
        tprune.l1_unstructured(ref, "weight", amount=sparsity)
        assert torch.equal(get_mask(ours), ref.weight_mask.bool())


@pytest.mark.parametrize("shape_index", [0, 1])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_l1_equals_global_unstructured(shape_index, sparsity):
    net = _random_net(shape_index, seed=10 + shape_index)
    oracle = _random_net(shape_index, seed=10 + shape_index)
    graph = MaseGraph(net)
    prune_transform_pass(graph, {"weight": {"sparsity": sparsity, "scope": "global", "method": "l1-norm"}})
    refs = _layers(oracle)
    tprune.global_unstructured([(m, "weight") for m in refs], pruning_method=tprune.L1Unstructured, amount=sparsity)
    for ours, ref in zip(_layers(graph.model), refs):
        assert torch.equal(get_mask(ours), ref.weight_mask.bool())


def _output_layer(shape_index: int) -> str:
    return f"fcs_{len(SHAPES[shape_index]['fc']) - 1}"


@pytest.mark.parametrize("shape_index", [0, 1])
@pytest.mark.parametrize("sparsity", SPARSITIES[:-1])  # 0.999 would prune every channel: refused below
def test_l2_norm_single_equals_ln_structured(shape_index, sparsity):
    net = _random_net(shape_index, seed=20 + shape_index)
    oracle = _random_net(shape_index, seed=20 + shape_index)
    graph = MaseGraph(net)
    per_layer = {"default": sparsity, _output_layer(shape_index): sparsity}  # named: its channels are pruned too
    prune_transform_pass(
        graph, {"weight": {"sparsity": per_layer, "granularity": "channelwise", "method": "l2-norm-single"}}
    )
    for ours, ref in zip(_layers(graph.model), _layers(oracle)):
        tprune.ln_structured(ref, "weight", amount=sparsity, n=2, dim=0)
        assert torch.equal(get_mask(ours), ref.weight_mask.bool())


@pytest.mark.parametrize("p,method", [(1, "l1-norm"), (2, "l2-norm")])
@pytest.mark.parametrize("sparsity", [0.3, 0.75])
def test_kernelwise_matches_brute_force(p, method, sparsity):
    net = _random_net(0, seed=3)
    convs = [c.weight.detach().clone() for c in net.convs]
    graph = MaseGraph(net)
    prune_transform_pass(
        graph,
        {"weight": {"sparsity": sparsity, "granularity": "kernelwise", "method": method, "exclude": ["fcs_0", "fcs_1"]}},
    )
    for conv, w in zip(_layers(graph.model), convs):
        o, i = w.shape[:2]
        norms = {(a, b): float(w[a, b].abs().pow(p).sum() ** (1 / p)) for a in range(o) for b in range(i)}
        k = round(sparsity * o * i)
        dropped = set(sorted(norms, key=norms.get)[:k])
        mask = get_mask(conv)
        for (a, b) in norms:
            assert bool(mask[a, b].any()) == ((a, b) not in dropped)
            assert bool(mask[a, b].all()) == ((a, b) not in dropped)  # whole kernels
    for fc in _layers(graph.model)[len(convs):]:
        assert get_mask(fc) is None  # excluded


def test_lowest_k_is_exact_and_breaks_ties_by_position():
    scores = torch.tensor([3.0, 1.0, 1.0, 2.0, 1.0, 0.0])
    keep = lowest_k_mask(scores, 3)
    assert keep.tolist() == [True, False, False, True, True, False]  # 0.0, then the first two 1.0s
    keep = lowest_k_mask(scores, 0)
    assert keep.all()
    assert not lowest_k_mask(scores, 6).any()
    rows = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 3.0, 2.0, 1.0]])
    assert lowest_k_mask(rows, 2, rowwise=True).tolist() == [[False, False, True, True], [True, True, False, False]]


@pytest.mark.parametrize("n", [1, 7, 10, 1001])
@pytest.mark.parametrize("sparsity", [0.0, 0.05, 0.5, 0.95])
def test_prune_count_rounds_like_torch(n, sparsity):
    assert prune_count(sparsity, n) == tprune._compute_nparams_toprune(sparsity, n)
    keep = lowest_k_mask(torch.zeros(n), prune_count(sparsity, n))  # all tied: still exact
    assert int((~keep).sum()) == prune_count(sparsity, n)


def test_lowest_k_beyond_quantile_limit():
    """More than 16M scores (torch.quantile's limit): still exact."""
    scores = torch.rand(17_000_000, generator=torch.Generator().manual_seed(0))
    keep = lowest_k_mask(scores, 8_500_000)
    assert int((~keep).sum()) == 8_500_000
    assert float(scores[~keep].max()) <= float(scores[keep].min())
