"""What each method means: L1 and L2 differ where they can, multi-layer reads downstream, similarity, randomness."""

from __future__ import annotations

import torch
from torch import nn

from machop.ir import MaseGraph
from machop.nn import ActivationPrune, get_mask
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.passes.graph.transforms.prune.activation_methods import FeatureMapSimilarity


class TwoConv(nn.Module):
    def __init__(self, c_in=2, c_mid=4, c_out=3):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_mid, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_mid)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_mid, c_out, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_out, 5)

    def forward(self, x):
        x = self.relu(self.bn(self.conv1(x)))
        x = self.pool(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


class Data:
    def __init__(self, x):
        self.x = x

    def calibration_batch(self, n):
        return self.x[:n], torch.zeros(min(n, len(self.x)))


def _set(w: torch.Tensor, rows: list[list[float]]) -> None:
    with torch.no_grad():
        w.copy_(torch.tensor(rows, dtype=w.dtype).reshape(w.shape))


def test_kernelwise_l1_and_l2_differ():
    # kernel A: one large value (L1 3, L2 3); kernel B: nine values of 0.5 (L1 4.5, L2 1.5)
    net = TwoConv(c_in=1, c_mid=2)
    a = [0.0] * 8 + [3.0]
    b = [0.5] * 9
    _set(net.conv1.weight, [a, b])
    results = {}
    for method in ("l1-norm", "l2-norm"):
        graph = MaseGraph(TwoConv(c_in=1, c_mid=2))
        graph.model.load_state_dict(net.state_dict())
        prune_transform_pass(graph, {"weight": {"sparsity": 0.5, "granularity": "kernelwise", "method": method,
                                                "exclude": ["conv2", "fc"]}})
        results[method] = get_mask(graph.model.conv1)[:, 0, 0, 0].tolist()
    assert results == {"l1-norm": [False, True], "l2-norm": [True, False]}


def test_channelwise_l1_and_l2_single_differ():
    net = TwoConv(c_in=1, c_mid=2)
    _set(net.conv1.weight, [[0.0] * 8 + [3.0], [0.5] * 9])
    got = {}
    for method in ("l1-norm-single", "l2-norm-single"):
        graph = MaseGraph(TwoConv(c_in=1, c_mid=2))
        graph.model.load_state_dict(net.state_dict())
        prune_transform_pass(graph, {"weight": {"sparsity": 0.5, "granularity": "channelwise", "method": method,
                                                "exclude": ["conv2", "fc"]}})
        got[method] = get_mask(graph.model.conv1)[:, 0, 0, 0].tolist()
    assert got == {"l1-norm-single": [False, True], "l2-norm-single": [True, False]}


def test_multi_drops_a_channel_nothing_downstream_reads_first():
    torch.manual_seed(0)
    net = TwoConv()
    with torch.no_grad():
        net.conv1.weight[2] *= 100  # the largest filter by far ...
        net.conv2.weight[:, 2] = 0  # ... but nothing reads its channel (through BN and ReLU)
    for method, dropped_first in [("l1-norm-single", False), ("l1-norm-multi", True), ("l2-norm-multi", True)]:
        graph = MaseGraph(TwoConv(), dummy_input=torch.randn(2, 2, 6, 6))
        graph.model.load_state_dict(net.state_dict())
        prune_transform_pass(graph, {"weight": {"sparsity": 0.25, "granularity": "channelwise", "method": method,
                                                "exclude": ["conv2", "fc"]}})
        keep = get_mask(graph.model.conv1).flatten(1).all(dim=1)
        assert int((~keep).sum()) == 1
        assert (not bool(keep[2])) == dropped_first, method


class _ResidualMish(nn.Module):
    """conv1 → Mish → (conv2 + shortcut) → pool → fc: a channel of conv1 is read by conv2 and, through the
    residual add, by fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.act, self.pool, self.fc = nn.Mish(), nn.AdaptiveAvgPool2d(1), nn.Linear(4, 3)

    def forward(self, x):
        y = self.act(self.conv1(x))
        return self.fc(torch.flatten(self.pool(y + self.conv2(y)), 1))


def test_multi_reads_every_reader_of_a_channel_through_mish_and_a_residual_add():
    torch.manual_seed(3)
    net = _ResidualMish()
    with torch.no_grad():  # channel 0: the smallest filter, but read strongly downstream
        net.conv1.weight[0] *= 0.1
        net.conv2.weight[:, 0] *= 10
        net.fc.weight[:, 0] *= 10
    w1, w2, wf = net.conv1.weight.detach(), net.conv2.weight.detach(), net.fc.weight.detach()
    readers = torch.cat([w2.transpose(0, 1).flatten(1), wf.t()], dim=1)  # per conv1 channel: conv2's and fc's slices
    scores = w1.flatten(1).abs().sum(1) * readers.abs().sum(1)
    graph = MaseGraph(_ResidualMish(), dummy_input=torch.randn(2, 2, 5, 5))
    graph.model.load_state_dict(net.state_dict())
    prune_transform_pass(graph, {"weight": {"sparsity": 0.25, "granularity": "channelwise", "method": "l1-norm-multi",
                                            "group": False, "exclude": ["conv2", "fc"]}})
    keep = get_mask(graph.model.conv1).flatten(1).all(dim=1)
    assert (~keep).nonzero().flatten().tolist() == [int(scores.argmin())]
    assert int(w1.flatten(1).abs().sum(1).argmin()) == 0 != int(scores.argmin())  # the filter norm alone picks 0


def test_multi_scores_match_hand_computation_through_flatten():
    """conv2 → avgpool → flatten → fc: each conv2 channel is read by one fc column."""
    torch.manual_seed(1)
    net = TwoConv()
    w2, wf = net.conv2.weight.detach(), net.fc.weight.detach()
    for p, method in [(1, "l1-norm-multi"), (2, "l2-norm-multi")]:
        scores = torch.linalg.vector_norm(w2.flatten(1), ord=p, dim=1) * torch.linalg.vector_norm(wf, ord=p, dim=0)
        graph = MaseGraph(TwoConv(), dummy_input=torch.randn(2, 2, 6, 6))
        graph.model.load_state_dict(net.state_dict())
        prune_transform_pass(graph, {"weight": {"sparsity": 0.34, "granularity": "channelwise", "method": method,
                                                "exclude": ["conv1", "fc"]}})
        keep = get_mask(graph.model.conv2).flatten(1).all(dim=1)
        assert (~keep).nonzero().flatten().tolist() == [int(scores.argmin())]


def test_multi_falls_back_to_single_at_the_model_output():
    torch.manual_seed(2)
    net = TwoConv()
    masks = {}
    for method in ("l2-norm-single", "l2-norm-multi"):
        graph = MaseGraph(TwoConv(), dummy_input=torch.randn(2, 2, 6, 6))
        graph.model.load_state_dict(net.state_dict())
        prune_transform_pass(graph, {"weight": {"sparsity": {"default": 0.4, "fc": 0.4}, "granularity": "channelwise",
                                                "method": method, "exclude": ["conv1", "conv2"]}})
        masks[method] = get_mask(graph.model.fc)
    assert masks["l2-norm-single"] is not None
    assert torch.equal(masks["l2-norm-single"], masks["l2-norm-multi"])


def test_random_is_seeded_and_deterministic(make_graph):
    def run(seed):
        graph = make_graph("lenet5", data=False)
        prune_transform_pass(graph, {"weight": {"sparsity": 0.5, "method": "random", "seed": seed}})
        return get_mask(graph.model.fc1)

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    graph = make_graph("lenet5", data=False)
    graph.context.training.seed = 3
    prune_transform_pass(graph, {"weight": {"sparsity": 0.5, "method": "random"}})
    assert torch.equal(get_mask(graph.model.fc1), run(3))  # default seed: graph.context.training.seed


def _first_act(graph) -> ActivationPrune:
    return next(m for m in graph.model.modules() if isinstance(m, ActivationPrune))


def test_per_sample_elementwise_zeroes_each_samples_smallest():
    torch.manual_seed(0)
    graph = MaseGraph(TwoConv(), dummy_input=torch.randn(2, 2, 6, 6))
    prune_transform_pass(graph, {"activation": {"sparsity": 0.25, "method": "l1-norm", "exclude": ["conv2", "fc"]}})
    act = _first_act(graph)
    x = torch.randn(4, 2, 5, 5)
    x[1] *= 100  # another scale per sample: a per-batch threshold would prune sample 1 far less
    out = act(x)
    k = round(0.25 * 50)
    for s in range(4):
        flat, kept = x[s].flatten(), out[s].flatten()
        dropped = (kept == 0).nonzero().flatten()
        assert len(dropped) == k
        assert set(dropped.tolist()) == set(flat.abs().argsort()[:k].tolist())


def test_random_activation_is_fixed_and_seeded():
    graph = MaseGraph(TwoConv(), dummy_input=torch.randn(2, 2, 6, 6))
    prune_transform_pass(graph, {"activation": {"sparsity": 0.5, "method": "random", "seed": 7,
                                                "exclude": ["conv2", "fc"]}})
    act = _first_act(graph)
    x = torch.randn(3, 2, 5, 5) + 10  # no zeros
    a, b = act(x), act(x)
    assert torch.equal(a, b)
    assert ((a == 0).flatten(1).sum(1) == 25).all()
    assert torch.equal(a[0] == 0, a[2] == 0)  # the same positions in every sample


def test_feature_map_l1_and_l2_differ():
    # channel 0: one big value per map (L1 = 4, L2 = 4); channel 1: all 0.5 (L1 = 12.5, L2 = 2.5)
    x = torch.zeros(1, 2, 5, 5)
    x[0, 0, 2, 2] = 4.0
    x[0, 1] = 0.5
    dropped = {}
    for method in ("feature-map-l1-norm", "feature-map-l2-norm"):
        graph = MaseGraph(TwoConv(), dummy_input=torch.randn(2, 2, 6, 6))
        graph.context.data_module = Data(x)
        prune_transform_pass(graph, {"activation": {"sparsity": 0.5, "granularity": "channelwise", "method": method,
                                                    "exclude": ["conv2", "fc"]}})
        dropped[method] = (~_first_act(graph).channel_mask).nonzero().flatten().tolist()
    assert dropped == {"feature-map-l1-norm": [0], "feature-map-l2-norm": [1]}


def test_feature_map_similarity_drops_a_near_duplicate():
    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 4, 5, 5, generator=g)
    x = base.clone()
    x[:, 3] = 2 * base[:, 1] + 0.01 * torch.rand(6, 5, 5, generator=g)  # channel 3 ≈ channel 1 (cosine ≈ 1)
    graph = MaseGraph(TwoConv(c_in=4))
    graph.context.data_module = Data(x)
    prune_transform_pass(graph, {"activation": {"sparsity": 0.25, "granularity": "channelwise",
                                                "method": "feature-map-similarity", "exclude": ["conv2", "fc"]}})
    dropped = (~_first_act(graph).channel_mask).nonzero().flatten().tolist()
    assert dropped in ([1], [3])


def test_similarity_against_brute_force_per_channel_vectors():
    """Cosine per channel over (batch, positions) only; greedy order matches a plain-Python reference."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 6, 4, 4, generator=g)
    cal = FeatureMapSimilarity()
    cal.update(x[:2], 1)
    cal.update(x[2:], 1)  # accumulated over two chunks
    k = 4
    order = cal.scores(torch.zeros(6, dtype=torch.bool), k)
    vec = [torch.cat([x[b, c].flatten() for b in range(3)]).double() for c in range(6)]
    cos = [[float(vec[i] @ vec[j] / (vec[i].norm() * vec[j].norm())) for j in range(6)] for i in range(6)]
    alive, ref = set(range(6)), []
    for _ in range(k):
        best = max(sorted(alive), key=lambda i: max(cos[i][j] for j in alive if j != i))
        ref.append(best)
        alive.remove(best)
    assert [int(i) for i in order.argsort()[:k]] == ref


def test_global_activation_threshold_spreads_pruning_by_magnitude():
    """Inputs of conv1 are large, of conv2 small: one threshold prunes mostly conv2's input."""
    torch.manual_seed(0)
    net = TwoConv()
    with torch.no_grad():
        net.conv1.weight.mul_(0.01)
        net.bn.weight.fill_(0.01)
    graph = MaseGraph(net)
    graph.context.data_module = Data(10 * torch.randn(8, 2, 5, 5))
    prune_transform_pass(graph, {"activation": {"sparsity": 0.3, "scope": "global", "exclude": ["fc"],
                                                "calibration_samples": 8}})
    acts = {n.name: graph.module_of(n.args[0]) for n in graph.layer_nodes() if n.name != "fc"}
    k1 = round(acts["conv1"].stages[0]["sparsity"] * 50)
    k2 = round(acts["conv2"].stages[0]["sparsity"] * 100)
    assert k1 + k2 == round(0.3 * 150)
    assert k2 > k1
