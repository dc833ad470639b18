"""machop on models it has never seen: every layer kind, every applicable prune method, ties and reuse.

For each model of `zoo.models` and each applicable weight-pruning method (plus
one fixed-point case): prune → quantize → Huffman-encode here, then decode
every file **in a fresh Python process that imports only machop and the
model classes**, and compare its outputs with the encoded model's, bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from machop.ir import GraphTraceError, MaseGraph, load_graph, save_graph
from machop.nn import KMeansWeight, chain, fold_foreign_parametrizations, get_mask, tied_tensors
from machop.passes.graph import PASSES
from machop.passes.graph.transforms.prune import WEIGHT_METHODS

from zoo.models import ZOO

TEST_DIR = Path(__file__).resolve().parent
KMEANS = {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 4}}}
INTEGER = {"by": "type", "default": {"config": {
    "name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 8, "weight_frac_width": 6,
    "bias_width": 8, "bias_frac_width": 5,
}}}


def _graph(name: str) -> tuple[MaseGraph, torch.Tensor]:
    torch.manual_seed(0)
    cls = ZOO[name]
    x = cls.example()
    return MaseGraph(cls(), dummy_input=x), x


def _cases() -> list[tuple[str, str, dict, dict]]:
    """(model, label, prune table, quantize table): every applicable method, then fixed point."""
    cases = []
    for name in ZOO:
        graph, _ = _graph(name)
        kinds = {w.kind.name: w.kind for w in graph.weights()}
        for (scope, granularity), methods in WEIGHT_METHODS.items():
            table = {"sparsity": 0.5, "scope": scope, "granularity": granularity}
            if granularity != "elementwise":
                has = (lambda k: k.kernels) if granularity == "kernelwise" else (lambda k: k.channel_dim is not None)
                types = sorted(n for n, k in kinds.items() if has(k))
                if not types:
                    continue
                table["types"] = types
            if granularity == "channelwise":  # the output layers too: named, so that every weight is pruned
                table["sparsity"] = {"default": 0.5} | {layer: 0.5 for layer in graph.output_layers()}
            for method in methods:
                cases.append((name, f"{scope}-{granularity}-{method}", {"weight": {**table, "method": method}}, KMEANS))
        cases.append((name, "integer", {"weight": {"sparsity": 0.5}}, INTEGER))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def encoded(tmp_path_factory) -> dict:
    """Every case encoded: {case id: (prune info, quantize info, huffman info, file)}; inputs/outputs on disk."""
    out = tmp_path_factory.mktemp("zoo")
    results, tensors = {}, {}
    for name, label, prune, quantize in CASES:
        case = f"{name}/{label}"
        graph, x = _graph(name)
        graph, pinfo = PASSES["prune"](graph, prune)
        graph, qinfo = PASSES["quantize"](graph, quantize)
        graph.model.eval()
        with torch.no_grad():
            expected = graph.model(x)
        path = out / f"{name}-{label}.mchz"
        graph, hinfo = PASSES["huffman_encode"](graph, {"path": str(path)})
        results[case] = (graph, pinfo, qinfo, hinfo, path)
        tensors[case] = [x, expected]
    torch.save(tensors, out / "io.pt")
    return {"dir": out, "results": results}


def test_the_zoo_covers_every_kind_and_at_least_ten_architectures():
    assert len(ZOO) >= 10
    kinds = {w.kind.name for name in ZOO for w in _graph(name)[0].weights()}
    assert kinds >= {"linear", "conv1d", "conv2d", "conv3d", "convtranspose2d", "embedding", "mha", "lstm", "gru",
                     "bilinear", "parameter"}


@pytest.mark.parametrize("name", list(ZOO))
def test_every_weight_is_found_and_named(name):
    graph, _ = _graph(name)
    assert [w.name for w in graph.weights()] == ZOO[name].WEIGHTS


@pytest.mark.parametrize("case", [f"{c[0]}/{c[1]}" for c in CASES])
def test_nothing_is_left_uncompressed_and_every_parameter_counts(encoded, case):
    graph, pinfo, qinfo, hinfo, path = encoded["results"][case]
    name = case.split("/")[0]
    weights = graph.weights()
    pruned = set(pinfo["weight"]["layers"])
    left = {d["name"] for d in pinfo["weight"]["dense"]}
    assert pruned | left == {w.name for w in weights} and not pruned & left
    assert all(d["reason"].startswith("type ") for d in pinfo["weight"]["dense"])  # only types narrowed it
    for w in weights:  # a mask on every pruned weight; 50% of a 1-channel layer rounds to none pruned
        if w.name in pruned:
            assert get_mask(w.module, w.tensor_name) is not None, w.name
    assert 0.3 < pinfo["weight"]["achieved"] < 0.7
    assert len(qinfo["layers"]) == len(weights) and not qinfo["skipped"]
    assert hinfo["raw_layers"] == [] and {r["layer"] for r in hinfo["layers"]} == {w.name for w in weights}
    model = ZOO[name]()
    fold_foreign_parametrizations(model)  # weight_norm's two tensors are one weight to compress
    dense = sum(p.numel() for p in model.parameters())  # parameters() counts a tied tensor once
    assert hinfo["total"]["dense_params"] == dense == pinfo["totals"]["model_params"]
    assert hinfo["file_bytes"] == os.path.getsize(path)
    assert hinfo["total"]["ratio"] == pytest.approx(4 * dense / hinfo["file_bytes"])


@pytest.mark.parametrize("name", list(ZOO))
def test_every_floating_parameter_of_two_or_more_dimensions_is_compressed_or_listed(name):
    graph, _ = _graph(name)
    weights = graph.weights()
    compressed = {id(w.stored()) for w in weights}
    listed = {e["name"] for e in graph.uncompressed()}
    for key, p in graph.model.named_parameters(remove_duplicate=True):
        if p.is_floating_point() and p.dim() >= 2:
            assert id(p) in compressed or key in listed, key
    assert listed == set()  # every weight of the zoo is one machop compresses
    assert len(compressed) == len(weights)  # each tensor once


class _Opaque(nn.Module):
    """A module machop does not know, kept whole (a leaf): its 2-D parameter is used inside its own forward."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Parameter(torch.randn(6, 6))

    def forward(self, x):
        return x @ self.mix


class _WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.opaque = nn.Linear(6, 6), _Opaque()

    def forward(self, x):
        return self.opaque(self.fc(x))


def test_a_parameter_no_pass_can_reach_is_listed_with_the_reason_in_every_info(tmp_path):
    x = torch.randn(3, 6)
    graph = MaseGraph(_WithOpaque(), dummy_input=x, leaf_modules=(_Opaque,))
    graph, pinfo = PASSES["prune"](graph, {"weight": {"sparsity": 0.5}})
    graph, qinfo = PASSES["quantize"](graph, KMEANS)
    graph, hinfo = PASSES["huffman_encode"](graph, {"path": str(tmp_path / "m.mchz")})
    for info in (pinfo, qinfo, hinfo):
        (entry,) = info["uncompressed"]
        assert entry["name"] == "opaque.mix" and entry["shape"] == [6, 6] and "_Opaque" in entry["reason"]
    assert pinfo["totals"]["model_params"] == sum(p.numel() for p in _WithOpaque().parameters())
    assert hinfo["total"]["dense_params"] == pinfo["totals"]["model_params"]


@pytest.mark.parametrize("name", ["WeightNormNet", "SpectralNormNet"])
def test_weight_and_spectral_norm_are_folded_into_the_weight_they_compute(name):
    torch.manual_seed(0)
    model, x = ZOO[name]().eval(), ZOO[name].example()
    with torch.no_grad():
        expected = model(x)
    graph = MaseGraph(model, dummy_input=x)
    assert not any(chain(graph.model.get_submodule(w.qualname), w.tensor_name) for w in graph.weights())
    assert [w.stored().requires_grad for w in graph.weights()] == [True, True]  # still trainable parameters
    with torch.no_grad():
        assert torch.equal(graph.model.eval()(x), expected)


def test_fresh_process_with_only_the_model_classes_decodes_bit_identical(encoded):
    files = {case: str(r[4]) for case, r in encoded["results"].items()}
    script = f"""
import json, sys, torch
sys.path.insert(0, {str(TEST_DIR)!r})
import machop
from machop.nn import tied_tensors
from zoo.models import ZOO
files = json.loads({json.dumps(json.dumps(files))})
io = torch.load({str(encoded["dir"] / "io.pt")!r}, weights_only=True)
report = {{}}
for case, path in files.items():
    model = machop.load_compressed(path, model=ZOO[case.split("/")[0]]()).eval()
    x, expected = io[case]
    with torch.no_grad():
        out = model(x)
    report[case] = {{"equal": torch.equal(out, expected), "ties": tied_tensors(model)}}
print(json.dumps(report))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report) == set(files)
    assert [case for case, r in report.items() if not r["equal"]] == []
    for case, r in report.items():
        if case.startswith("TiedEmbedding/"):
            assert r["ties"] == [["emb.weight", "decoder.weight"]], case


def test_tied_weight_has_one_mask_and_one_codebook_and_stays_tied(encoded):
    graph, *_ = encoded["results"]["TiedEmbedding/local-elementwise-l1-norm"]
    model = graph.model
    assert model.emb.parametrizations.weight.original is model.decoder.parametrizations.weight.original
    emb_chain, dec_chain = chain(model.emb), chain(model.decoder)
    assert len(emb_chain) == len(dec_chain) == 2 and all(a is b for a, b in zip(emb_chain, dec_chain))
    assert torch.equal(model.emb.weight, model.decoder.weight)
    assert tied_tensors(model) == [["emb.weight", "decoder.weight"]]


def test_module_called_twice_is_one_weight_quantized_once(encoded):
    graph, pinfo, qinfo, hinfo, _ = encoded["results"]["CalledTwice/local-elementwise-l1-norm"]
    assert len(graph.call_nodes("shared")) == 2
    assert [type(p).__name__ for p in chain(graph.model.shared)] == ["WeightMask", "KMeansWeight"]
    assert [r["name"] for r in qinfo["layers"]] == ["inp", "shared", "outp"]
    assert pinfo["totals"]["model_params"] == sum(p.numel() for p in ZOO["CalledTwice"]().parameters())


def test_prune_remove_keeps_ties_and_outputs():
    graph, x = _graph("TiedEmbedding")
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.6}})
    graph.model.eval()
    before = graph.model(x)
    graph, info = PASSES["prune_remove"](graph, None)
    assert info["baked_weight_masks"] == 2
    assert graph.model.emb.weight is graph.model.decoder.weight
    assert isinstance(graph.model.emb.weight, nn.Parameter)
    assert torch.equal(before, graph.model(x))
    assert float((graph.model.emb.weight == 0).float().mean()) == pytest.approx(0.6, abs=0.01)


def test_save_and_load_keep_a_tie(tmp_path):
    graph, x = _graph("TiedEmbedding")
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5}})
    graph, _ = PASSES["quantize"](graph, KMEANS)
    graph.model.eval()
    path = save_graph(graph, tmp_path / "tied.mz")
    loaded = load_graph(path, model=ZOO["TiedEmbedding"]())
    loaded.model.eval()
    assert torch.equal(graph.model(x), loaded.model(x))
    q = [p for p in chain(loaded.model.emb) if isinstance(p, KMeansWeight)]
    assert q and q[0] is [p for p in chain(loaded.model.decoder) if isinstance(p, KMeansWeight)][0]


def test_a_user_model_file_without_the_model_says_how_to_pass_it(tmp_path):
    graph, _ = _graph("MLP")
    path = save_graph(graph, tmp_path / "mlp.mz")
    with pytest.raises(ValueError, match=r"your own model \(MLP\).*load_graph\(path, model=MLP\(...\)\)"):
        load_graph(path)


def test_a_different_model_is_refused_naming_the_first_tensor(tmp_path):
    graph, _ = _graph("MLP")
    path = save_graph(graph, tmp_path / "mlp.mz")
    with pytest.raises(ValueError, match=r"mlp.mz holds class MLP, not the CalledTwice given"):
        load_graph(path, model=ZOO["CalledTwice"]())
    # said to be MLP renamed, it is checked as any model: the first tensor that differs is named
    with pytest.raises(ValueError, match=r"mlp.mz does not fit the model: the model has no tensor 'fc1.weight'"):
        load_graph(path, model=ZOO["CalledTwice"](), saved_class="MLP")


class _Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return x
        return -x


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.gate = nn.Linear(4, 4), _Gate()

    def forward(self, x):
        return self.gate(self.fc(x))


def test_a_tracing_failure_names_the_module_and_the_way_out():
    with pytest.raises(GraphTraceError) as err:
        MaseGraph(_Gated())
    message = str(err.value)
    assert "module 'gate' (_Gate)" in message and "leaf_modules=(_Gate,)" in message and "concrete_args" in message
    assert len(message.splitlines()) == 1
    model = _Gated()
    graph = MaseGraph(model, leaf_modules=(_Gate,))
    x = torch.randn(2, 4)
    assert torch.equal(graph.model(x), model(x))


def _loaders(name: str, n: int = 64):
    """Plain DataLoaders of random inputs shaped like the model's example, with labels for its outputs."""
    from torch.utils.data import DataLoader, TensorDataset

    from machop.training import DataLoaders

    torch.manual_seed(1)
    x = ZOO[name].example(n)
    data = TensorDataset(x, torch.zeros(n, dtype=torch.long))
    return DataLoaders(DataLoader(data, batch_size=16), DataLoader(data, batch_size=32))


@pytest.mark.parametrize("name", ["MLP", "ResBlockNet", "CalledTwice"])
def test_activation_masks_before_input_quantizers_survive_the_huffman_pass(name, tmp_path):
    """Two modules inserted before one layer (an activation mask feeding the input quantizer) are rebuilt on
    the dense copy, whose fx graph still holds the names of the nodes taken out of it."""
    graph, x = _graph(name)
    graph.context.data_module = _loaders(name)
    graph, _ = PASSES["prune"](graph, {"activation": {"sparsity": 0.3}, "weight": {"sparsity": 0.5}})
    graph, _ = PASSES["quantize"](graph, INTEGER)
    kinds = [type(graph.module_of(n)).__name__ for n in graph.nodes if n.op == "call_module"]
    assert "ActivationPrune" in kinds and "FixedPoint" in kinds
    graph, info = PASSES["huffman"](graph, {"path": str(tmp_path / "m.mchz")})
    assert info["verified"] is True
    assert [type(graph.module_of(n)).__name__ for n in graph.nodes if n.op == "call_module"] == kinds


@pytest.mark.parametrize("name", list(ZOO))
def test_activation_pruning_on_user_models_and_the_huffman_pass_verifies_them(name, tmp_path):
    """Elementwise activation pruning on every model (channelwise, calibrated on plain DataLoaders, where a
    layer has channels), weight pruning, k-means, then the huffman pass rebuilds the model from the file
    alone on a dense copy of it and checks the outputs bit for bit."""
    graph, x = _graph(name)
    graph.context.data_module = _loaders(name)
    layers = any(w.node is not None for w in graph.weights())  # FunctionalNet has no layer modules: nothing to insert
    graph, info = PASSES["prune"](graph, {"activation": {"sparsity": 0.3}, "weight": {"sparsity": 0.5}})
    inserted = [n for n in graph.nodes if n.op == "call_module" and type(graph.module_of(n)).__name__ == "ActivationPrune"]
    assert len(inserted) == len(info["activation"]["layers"]) and bool(inserted) == layers
    assert all(d["name"] != n.name for d in info["activation"]["dense"] for n in inserted)
    convs = [k for k in ("conv1d", "conv2d", "conv3d") if any(w.kind.name == k for w in graph.weights())]
    if convs:
        graph, info = PASSES["prune"](graph, {"activation": {
            "sparsity": 0.25, "granularity": "channelwise", "method": "feature-map-l2-norm", "calibration_samples": 40}})
        assert info["activation"]["layers"]
    graph, _ = PASSES["quantize"](graph, KMEANS)
    encoded = graph.model.eval()
    graph, info = PASSES["huffman"](graph, {"path": str(tmp_path / "m.mchz")})
    assert info["verified"] is True and info["raw_layers"] == []
    decoded = graph.model.eval()
    with torch.no_grad():  # the encoded model still runs: rebuilding on a dense copy left it alone
        assert torch.equal(encoded(x), decoded(x))
    rebuilt = [n for n in graph.nodes if n.op == "call_module" and type(graph.module_of(n)).__name__ == "ActivationPrune"]
    assert [n.target for n in rebuilt] == [n.target for n in inserted]
    fresh, _ = PASSES["huffman_decode"](MaseGraph(ZOO[name](), dummy_input=x), {"path": str(tmp_path / "m.mchz")})
    with torch.no_grad():
        assert torch.equal(fresh.model.eval()(x), decoded(x))


class _MoreKinds(nn.Module):
    """The remaining kinds: a transformer decoder layer, EmbeddingBag, a plain RNN, 1-D and 3-D transposed convs."""

    def __init__(self):
        super().__init__()
        self.bag = nn.EmbeddingBag(30, 8, mode="mean")
        self.dec = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.rnn = nn.RNN(8, 8, batch_first=True)
        self.up1 = nn.ConvTranspose1d(8, 4, 3, stride=2)
        self.up3 = nn.ConvTranspose3d(1, 2, 2, stride=2)

    def forward(self, tokens, seq, vol):
        memory = self.bag(tokens).unsqueeze(1)
        h, _ = self.rnn(self.dec(seq, memory))
        return self.up1(h.transpose(1, 2)).mean() + self.up3(vol).mean()


def test_the_remaining_kinds_round_trip(tmp_path):
    torch.manual_seed(0)
    x = (torch.randint(0, 30, (2, 4)), torch.randn(2, 5, 8), torch.randn(2, 1, 3, 3, 3))
    graph = MaseGraph(_MoreKinds(), dummy_input=x)
    assert [(w.name, w.kind.name) for w in graph.weights()] == [
        ("bag", "embedding"), ("dec.self_attn.in_proj_weight", "mha"), ("dec.self_attn.out_proj", "mha"),
        ("dec.multihead_attn.in_proj_weight", "mha"), ("dec.multihead_attn.out_proj", "mha"),
        ("dec.linear1", "linear"), ("dec.linear2", "linear"), ("rnn.weight_ih_l0", "rnn"),
        ("rnn.weight_hh_l0", "rnn"), ("up1", "convtranspose1d"), ("up3", "convtranspose3d"),
    ]
    graph, _ = PASSES["add_common_metadata"](graph, None)  # shapes from a tuple of inputs
    assert graph.meta(next(n for n in graph.nodes if n.name == "up3"))["common"]["results"][0]["shape"] == [2, 2, 6, 6, 6]
    assert graph.output_layers() == {"up1", "up3"}  # named: their channels are the outputs
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": {"default": 0.5, "up1": 0.5, "up3": 0.5},
                                                  "granularity": "channelwise",
                                                  "types": ["convtranspose1d", "convtranspose3d"]}})
    mask = get_mask(graph.model.up1)
    keep = mask.all(dim=2).all(dim=0)  # a transposed conv's output channels are its weight's dim 1
    assert int(keep.sum()) == 2 and mask[:, keep].all() and not mask[:, ~keep].any()
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "types": ["embedding", "mha", "linear", "rnn"]}})
    graph, _ = PASSES["quantize"](graph, KMEANS)
    graph.model.eval()
    with torch.no_grad():
        expected = graph.model(*x)
    graph, info = PASSES["huffman"](graph, {"path": str(tmp_path / "more.mchz")})
    assert info["raw_layers"] == [] and len(info["layers"]) == 11 and info["verified"] is True
    with torch.no_grad():
        assert torch.equal(graph.model.eval()(*x), expected)


class _TiedClassifier(nn.Module):
    """A classifier whose second projection reuses the first one's weight."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(12, 12), nn.Linear(12, 12)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(torch.relu(self.dec(torch.relu(self.enc(x)))))


def test_training_keeps_a_tie_its_mask_and_its_codebook():
    """The train pass on your own DataLoaders: the tied weight stays one parameter, pruned entries stay 0,
    and its one set of centroids is trained."""
    from torch.utils.data import DataLoader, TensorDataset

    from machop.config import TrainSettings
    from machop.training import DataLoaders

    torch.manual_seed(0)
    x = torch.randn(256, 12)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    data = TensorDataset(x, y)
    graph = MaseGraph(_TiedClassifier(), dummy_input=x[:2])
    graph.context.data_module = DataLoaders(DataLoader(data, batch_size=32, shuffle=True), DataLoader(data, batch_size=64))
    graph.context.training = TrainSettings(max_epochs=2, learning_rate=1e-2, accelerator="cpu")
    graph.context.progress_bar = False
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5}})
    graph, _ = PASSES["quantize"](graph, KMEANS)
    model = graph.model
    centroids = [p for p in chain(model.enc) if isinstance(p, KMeansWeight)][0].centroids.detach().clone()
    pruned = ~get_mask(model.enc)
    graph, info = PASSES["train"](graph, {})
    assert info["epochs"] == 2 and "test_acc" in info
    q = [p for p in chain(model.enc) if isinstance(p, KMeansWeight)][0]
    assert q is [p for p in chain(model.dec) if isinstance(p, KMeansWeight)][0]
    assert model.enc.parametrizations.weight.original is model.dec.parametrizations.weight.original
    assert not torch.equal(q.centroids.detach(), centroids)  # trained
    assert torch.equal(model.enc.weight, model.dec.weight) and not model.enc.weight[pruned].any()
