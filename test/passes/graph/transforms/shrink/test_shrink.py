"""The shrink pass: channel masks become a physically smaller network that computes what the masked one did.

Random-init models (with batch-norm statistics and affines randomised, so a
pruned channel's constant output is not zero) on small inputs, eval mode.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from machop.cli import main
from machop.config import ConfigError, TrainSettings
from machop.datasets import get_dataset_info
from machop.ir import ArchitectureMismatch, MaseGraph, load_graph, save_graph
from machop.ir.serialize import load_model
from machop.models import get_model
from machop.nn import get_mask
from machop.passes.graph import PASSES, REGISTRY
from machop.passes.graph.analysis.stats import weight_stats
from machop.passes.graph.transforms.huffman import load_compressed
from machop.ir.mchz.format import pack_container, unpack_container
from machop.passes.graph.transforms.shrink import shrunk_like
from machop.training import DataLoaders
from zoo.models import MLP, Conv1dNet, ConvTransposeAE, DepthwiseNet, ResBlockNet, TinyTransformer

DATA = {"lenet5": "fashion_mnist", "vgg7": "cifar10", "resnet18": "cifar10"}


class FakeData:
    """What the prune pass needs of a data module to calibrate activation masks."""

    def __init__(self, example):
        self.example = example

    def calibration_batch(self, n: int = 256):
        x = self.example(n)
        return x, torch.zeros(n, dtype=torch.long)


class ConcatNet(nn.Module):
    """Two branches concatenated, batch norm over the concatenation, a depthwise conv, a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 6, 1), nn.Conv2d(8, 10, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 12, 1, bias=False)
        self.proj = nn.Conv2d(8, 12, 1)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(12 * 4 * 4, 20), nn.Linear(20, 5)

    def forward(self, x):
        s = F.relu(self.stem(x))
        y = F.relu(self.bn(torch.cat([self.a(s), self.b(s)], dim=1)))
        y = self.pw(F.relu6(self.dw(y))) + self.proj(s)
        y = self.pool(F.relu(y))
        return self.fc2(F.relu(self.fc1(y.view(y.size(0), -1))))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))


def _randomise_norms(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)


def _registry(name: str) -> MaseGraph:
    torch.manual_seed(0)
    info = get_dataset_info(DATA[name])
    model = get_model(name, info)
    _randomise_norms(model)
    x = torch.randn(2, info.in_channels, *info.image_size, generator=torch.Generator().manual_seed(1))
    graph = MaseGraph(model, dummy_input=x)
    graph.context.model_name, graph.context.dataset_info = name, info
    graph.context.data_module = FakeData(lambda n: torch.randn(n, info.in_channels, *info.image_size,
                                                               generator=torch.Generator().manual_seed(n)))
    return graph


def _user(cls) -> MaseGraph:
    torch.manual_seed(0)
    model = cls()
    _randomise_norms(model)
    graph = MaseGraph(model, dummy_input=cls.example(2))
    graph.context.data_module = FakeData(cls.example)
    return graph


def _outputs(graph: MaseGraph, x: torch.Tensor) -> torch.Tensor:
    graph.model.eval()
    with torch.no_grad():
        return graph.model(x)


def _channelwise(sparsity: float, **extra) -> dict:
    return {"weight": {"sparsity": sparsity, "granularity": "channelwise", "method": "l1-norm-single", **extra}}


def _pruned_rows(graph: MaseGraph) -> dict[str, int]:
    """Node name → number of all-zero output channels of each conv/Linear layer."""
    out = {}
    for node in graph.layer_nodes((nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        w = graph.module_of(node).weight.detach()
        out[node.name] = int((~w.reshape(w.shape[0], -1).ne(0).any(dim=1)).sum())
    return out


def shrink_exactly(graph: MaseGraph, x: torch.Tensor, pass_args: dict | None = None) -> tuple[MaseGraph, dict]:
    """Shrink ``graph``; assert its outputs on ``x`` equal the masked model's (1e-5 of the output scale)."""
    before = _outputs(graph, x)
    pruned = _pruned_rows(graph)
    graph, info = PASSES["shrink"](graph, pass_args or {})
    after = _outputs(graph, x)
    assert after.shape == before.shape
    scale = before.abs().max().item()
    assert (after - before).abs().max().item() <= 1e-5 * scale, ((after - before).abs().max().item(), scale)
    # every pruned output channel is removed, or reported with a reason
    kept = {}
    for entry in info["kept"]:
        assert entry["reason"]
        kept[entry["layer"]] = kept.get(entry["layer"], 0) + len(entry["channels"])
    for layer in info["layers"]:
        if layer["name"] in pruned:
            removed = layer["out_channels"][0] - layer["out_channels"][1]
            # (more may go: a channel every reader gives all-zero weights is dead)
            assert removed >= pruned[layer["name"]] - kept.get(layer["name"], 0), layer
    return graph, info


# --------------------------------------------------------------------------- registry models


@pytest.mark.parametrize("name,sparsity", [("lenet5", 0.3), ("lenet5", 0.5), ("vgg7", 0.5), ("resnet18", 0.5)])
def test_registry_model_shrinks_exactly(name, sparsity):
    graph = _registry(name)
    x = graph.dummy_input.clone()
    graph, _ = PASSES["prune"](graph, _channelwise(sparsity))
    params = sum(p.numel() for p in graph.model.parameters())
    graph, info = shrink_exactly(graph, x)
    p0, p1 = info["totals"]["params"]
    assert p0 == params and p1 < p0
    m0, m1 = info["totals"]["macs"]
    assert m1 < m0
    if name == "vgg7":  # a chain: every pruned channel goes but one carrier per zero-padded conv
        assert p1 < 0.26 * p0 and m1 < 0.26 * m0
        assert all("carry" in k["reason"] for k in info["kept"])
        assert len(info["carriers"]) == 5
    if name == "lenet5":  # no zero padding, no coupling: every pruned channel goes
        assert info["kept"] == [] and info["carriers"] == []
        keep = 1 - sparsity
        assert graph.model.conv1.out_channels == round(20 * keep) and graph.model.fc1.out_features == round(500 * keep)
        assert graph.model.fc1.in_features == graph.model.conv2.out_channels * 16
    if name == "resnet18":  # coupled channels were pruned together: every residual stream shrinks
        assert all("carry" in k["reason"] for k in info["kept"])
        dense = dict(_registry(name).model.named_modules())
        for q, m in graph.model.named_modules():  # half of each, and at most a carrier or two per stream
            if isinstance(m, nn.Conv2d):
                assert 0 <= m.out_channels - dense[q].out_channels // 2 <= 2, q
        assert 256 <= graph.model.fc.in_features <= 258
        # bias-free convs read by a batch norm alone: the norm's running mean absorbs the constants, no new bias
        assert info["biases_added"] == [] and graph.model.get_submodule("layer2.0.shortcut.0").bias is None
    assert graph.context.model_name == name and graph.context.shrunk and info["registry_model"] == name


def test_masks_of_kept_weights_are_kept_restricted():
    graph = _registry("lenet5")
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "granularity": "channelwise"}})
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.8}})  # elementwise on top
    x = graph.dummy_input.clone()
    graph, info = shrink_exactly(graph, x)
    fc1 = graph.model.fc1
    mask = get_mask(fc1)
    assert mask is not None and mask.shape == fc1.weight.shape
    assert torch.count_nonzero(fc1.weight[~mask]) == 0
    assert 0.5 < 1 - mask.float().mean().item() < 0.8  # the elementwise zeros left in the kept channels
    assert isinstance(fc1, nn.Linear) and fc1.out_features <= 250  # fc2's all-zero columns: dead channels go too


# --------------------------------------------------------------------------- activation channel masks


@pytest.mark.parametrize("name", ["lenet5", "vgg7"])
def test_activation_channel_masks_are_removed(name):
    graph = _registry(name)
    x = graph.dummy_input.clone()
    graph, _ = PASSES["prune"](graph, {"activation": {"sparsity": 0.5, "granularity": "channelwise",
                                                      "method": "feature-map-l1-norm", "calibration_samples": 8}})
    graph, info = shrink_exactly(graph, x)
    assert info["totals"]["params"][1] < info["totals"]["params"][0]
    assert sum(layer["out_channels"][0] - layer["out_channels"][1] for layer in info["layers"]) > 0


def test_weight_and_activation_masks_together():
    graph = _registry("lenet5")
    x = graph.dummy_input.clone()
    graph, _ = PASSES["prune"](graph, {**_channelwise(0.3), "activation": {
        "sparsity": 0.3, "granularity": "channelwise", "method": "feature-map-l2-norm", "calibration_samples": 8}})
    graph, info = shrink_exactly(graph, x)
    assert info["kept"] == []


# --------------------------------------------------------------------------- user models


@pytest.mark.parametrize("cls", [ResBlockNet, DepthwiseNet, Conv1dNet, ConcatNet])
@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_user_models_shrink_exactly(cls, sparsity):
    graph = _user(cls)
    x = cls.example(3)
    graph, _ = PASSES["prune"](graph, _channelwise(sparsity))
    graph, info = shrink_exactly(graph, x)
    assert info["totals"]["params"][1] < info["totals"]["params"][0]


def test_concat_offsets_depthwise_and_flatten_columns():
    graph = _user(ConcatNet)
    m = graph.model
    x = ConcatNet.example(3)
    # prune by hand: a's channel 1, b's channels 0 and 9 (cat offsets 1, 6, 15) with the depthwise channels they
    # feed (a constant through a zero-padded depthwise conv is not constant at the borders), pw and proj 3, fc1 2
    with torch.no_grad():
        for layer, rows in ((m.a, [1]), (m.b, [0, 9]), (m.dw, [1, 6, 15]), (m.pw, [3]), (m.proj, [3]), (m.fc1, [2])):
            layer.weight[rows] = 0
    graph, info = shrink_exactly(graph, x)
    m = graph.model
    assert (m.a.out_channels, m.b.out_channels, m.bn.num_features, m.dw.out_channels, m.dw.groups) == (5, 8, 13, 13, 13)
    assert m.pw.in_channels == 13 and m.pw.out_channels == 11 and m.proj.out_channels == 11
    assert m.fc1.in_features == 11 * 16 and m.fc1.out_features == 19 and m.fc2.in_features == 19
    assert info["kept"] == []

    graph = _user(ConcatNet)  # without the depthwise rows, b's channels stay, and the report says why
    with torch.no_grad():
        graph.model.b.weight[0] = 0
        graph.model.b.bias[0] = 0.1  # positive after the batch norm and ReLU, below ReLU6's clipping after dw
    graph, info = shrink_exactly(graph, x)
    assert graph.model.b.out_channels == 10
    assert [(k["layer"], k["channels"]) for k in info["kept"]] == [("b", [0])] and "depthwise dw" in info["kept"][0]["reason"]


def test_residual_group_needs_every_member():
    graph = _user(ResBlockNet)
    m = graph.model
    with torch.no_grad():
        m.stem.weight[[1, 2]] = 0  # stem and conv2 share the residual channels through the add
        m.stem.bias[[1, 2]] = -1  # relu(-1) = 0: no constant to carry into the zero-padded conv1
        m.conv2.weight[[2, 5]] = 0
    graph, info = shrink_exactly(graph, ResBlockNet.example(3))
    m = graph.model
    assert m.stem.out_channels == 7 and m.conv2.out_channels == 7 and m.head.in_features == 7  # channel 2 only
    reasons = {k["layer"]: k for k in info["kept"]}
    assert reasons["stem"]["channels"] == [1] and "conv2" in reasons["stem"]["reason"]
    assert reasons["conv2"]["channels"] == [5] and "stem" in reasons["conv2"]["reason"]


def test_grouped_conv_and_output_layer_are_reported_not_removed():
    graph = _user(DepthwiseNet)
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": {"default": 0.5, "fc": 0.3}, "granularity": "channelwise"}})
    graph, info = shrink_exactly(graph, DepthwiseNet.example(3))
    reasons = " | ".join(f"{k['layer']}: {k['reason']}" for k in info["kept"])
    assert "grouped" in reasons and "fc: " in reasons and "output" in reasons
    assert graph.model.fc.out_features == 3  # the model's outputs never go


def test_exclude_keeps_a_layer_and_bad_args_name_their_key():
    graph = _registry("lenet5")
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    with pytest.raises(ConfigError, match=r"passes\.shrink\.exclude: unknown name"):
        PASSES["shrink"](graph, {"exclude": ["nope"]})
    with pytest.raises(ConfigError, match=r"passes\.shrink"):
        PASSES["shrink"](graph, {"exlude": ["conv1"]})
    args = {"exclude": ["conv1"]}
    graph, info = shrink_exactly(graph, graph.dummy_input.clone(), args)
    assert args == {"exclude": ["conv1"]}  # not mutated
    assert graph.model.conv1.out_channels == 20 and graph.model.conv2.out_channels == 25
    assert any(k["layer"] == "conv1" and "excluded" in k["reason"] for k in info["kept"])
    assert REGISTRY["shrink"].parse({"borders": "keep"}, "passes.shrink").borders == "keep"
    with pytest.raises(ConfigError, match=r"passes\.shrink\.borders"):
        PASSES["shrink"](graph, {"borders": "drop"})


def test_borders_keep_keeps_the_channels_instead():
    graph = _registry("vgg7")
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, info = shrink_exactly(graph, graph.dummy_input.clone(), {"borders": "keep"})
    assert info["carriers"] == [] and any('borders = "keep"' in k["reason"] for k in info["kept"])


# --------------------------------------------------------------------------- later passes


def test_quantized_model_is_refused():
    graph = _registry("lenet5")
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, _ = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 4}}})
    with pytest.raises(ValueError, match="shrink before quantizing"):
        PASSES["shrink"](graph, {})


def test_shrunk_registry_model_through_quantize_huffman_and_files(tmp_path):
    graph = _registry("lenet5")
    x = graph.dummy_input.clone()
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, _ = shrink_exactly(graph, x)
    info_ds = graph.context.dataset_info

    # save / load: the file holds the new shapes; a fresh registry model resized to them takes it
    path = save_graph(graph, tmp_path / "shrunk.mz", "mz")
    loaded = load_graph(path, model=shrunk_like(get_model("lenet5", info_ds), path))
    assert torch.equal(_outputs(loaded, x), _outputs(graph, x))
    assert get_mask(loaded.model.get_submodule("fc1")) is not None

    # quantize (k-means) + Huffman encode / decode (a bit-exact check inside the huffman pass)
    graph, _ = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": {"name": "kmeans"}},
                                          "linear": {"config": {"name": "kmeans"}}})
    expected = _outputs(graph, x)
    graph, info = PASSES["huffman"](graph, {"path": str(tmp_path / "shrunk.mchz")})
    assert info["verified"] and torch.equal(_outputs(graph, x), expected)
    fresh = MaseGraph(shrunk_like(get_model("lenet5", info_ds), path), dummy_input=x)
    decoded, _ = PASSES["huffman_decode"](fresh, {"path": str(tmp_path / "shrunk.mchz")})
    assert torch.equal(_outputs(decoded, x), expected)


def test_shrunk_user_model_round_trips_and_trains(tmp_path):


    graph = _user(ConcatNet)
    x = ConcatNet.example(3)
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, info = shrink_exactly(graph, x)
    json.dumps(info)
    assert info["biases_added"] == ["pw"]  # the 1x1 conv without bias reads removed constant channels
    assert graph.model.pw.bias is not None
    path = save_graph(graph, tmp_path / "concat.pt", "pt")
    loaded = load_graph(path, model=shrunk_like(ConcatNet(), path))
    assert torch.allclose(_outputs(loaded, x), _outputs(graph, x), atol=0, rtol=0)

    data = TensorDataset(ConcatNet.example(32), torch.randint(0, 5, (32,), generator=torch.Generator().manual_seed(0)))
    graph.context.data_module = DataLoaders(DataLoader(data, batch_size=16), DataLoader(data, batch_size=16))
    graph.context.training = TrainSettings(max_epochs=1, accelerator="cpu")
    graph.context.progress_bar = False
    masks = {n: get_mask(m).clone() for n, m in graph.model.named_modules() if get_mask(m) is not None}
    graph, info = PASSES["train"](graph, {"test": False})
    for n, mask in masks.items():
        m = graph.model.get_submodule(n)
        assert torch.equal(get_mask(m), mask) and torch.count_nonzero(m.weight[~mask]) == 0


@pytest.mark.parametrize("cls", [ConvTransposeAE, TinyTransformer, MLP])
def test_models_it_cannot_follow_are_left_exact_and_reported(cls):
    graph = _user(cls)
    x = cls.example(3)
    types = ["conv2d", "convtranspose2d"] if cls is ConvTransposeAE else ["linear"]
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": {"default": 0.5, **({"dec2": 0.0} if cls is ConvTransposeAE else {})},
                                                  "granularity": "channelwise", "types": types}})
    graph, info = shrink_exactly(graph, x)
    json.dumps(info)
    pruned_layers = {k["layer"] for k in info["kept"]}
    if cls is ConvTransposeAE:  # enc1 feeds enc2 (shrunk); enc2 feeds a transposed conv (not followed)
        assert graph.model.enc1.out_channels == 4 + len(info["carriers"])
        assert any("ConvTranspose2d is not followed" in k["reason"] for k in info["kept"] if k["layer"] == "enc2")
        assert any("ConvTranspose2d is not followed" in k["reason"] for k in info["kept"] if k["layer"] == "dec1")
    if cls is TinyTransformer:  # the encoder layer is one graph node: its Linear layers are reported, not followed
        assert {"enc.linear1", "enc.linear2"} <= pruned_layers
        assert all("inside another module" in k["reason"] for k in info["kept"])
    if cls is MLP:
        assert graph.model.fc1.out_features == 16 and graph.model.fc2.out_features == 8 and info["kept"] == []


def test_iterative_prune_and_shrink_and_shrinking_twice_changes_nothing():
    graph = _user(ConcatNet)
    x = ConcatNet.example(3)
    graph, _ = PASSES["prune"](graph, _channelwise(0.3))
    graph, first = shrink_exactly(graph, x)
    graph, _ = PASSES["prune"](graph, _channelwise(0.3))  # prunes the shrunk layers again, through their masks
    graph, second = shrink_exactly(graph, x)
    assert second["totals"]["params"][1] < second["totals"]["params"][0] == first["totals"]["params"][1]
    graph, third = shrink_exactly(graph, x)
    assert third["layers"] == [] and third["totals"]["params"][0] == third["totals"]["params"][1]


# --------------------------------------------------------------------------- export (ONNX; the optional onnx extra)


def _onnx_run(path, x: torch.Tensor) -> torch.Tensor:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def test_shrunk_quantized_registry_model_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    graph = _registry("lenet5")
    x = graph.dummy_input.clone()
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, _ = shrink_exactly(graph, x)
    graph, _ = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": {"name": "kmeans"}},
                                          "linear": {"config": {"name": "kmeans"}}})
    expected = _outputs(graph, x)
    graph, info = PASSES["export"](graph, {"path": str(tmp_path / "m.onnx")})
    json.dumps(info)
    assert info["verified"] and info["max_abs_diff"] <= 1e-4 * expected.abs().max().item()
    assert torch.equal(_outputs(graph, x), expected)  # the graph keeps its codebooks
    assert torch.allclose(_onnx_run(tmp_path / "m.onnx", torch.cat([x, x, x])), torch.cat([expected] * 3), atol=1e-5)  # any batch
    onnx = pytest.importorskip("onnx")
    weights = {i.name: list(i.dims) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    shapes = sorted(weights.values())
    assert list(graph.model.conv1.weight.shape) in shapes and list(graph.model.fc1.weight.shape) in shapes
    assert not any("centroid" in name or "mask" in name for name in weights)  # plain weights only


def test_user_model_with_activation_mask_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    graph = _user(ConcatNet)
    x = ConcatNet.example(3)
    graph, _ = PASSES["prune"](graph, {**_channelwise(0.3), "activation": {
        "sparsity": 0.3, "granularity": "channelwise", "method": "feature-map-l1-norm", "calibration_samples": 8}})
    graph, _ = shrink_exactly(graph, x)
    graph, info = PASSES["export"](graph, {"path": str(tmp_path / "c.onnx"), "opset": 13})
    assert info["verified"]
    assert torch.allclose(_onnx_run(tmp_path / "c.onnx", x), _outputs(graph, x), atol=1e-5)


def test_export_args_name_their_key(tmp_path):
    pytest.importorskip("onnxruntime")
    graph = _user(ConcatNet)
    with pytest.raises(ConfigError, match=r"passes\.export\.opset"):
        PASSES["export"](graph, {"path": str(tmp_path / "x.onnx"), "opset": 3})
    with pytest.raises(ConfigError, match=r"passes\.export\.path"):
        PASSES["export"](graph, {})  # no path and no output folder
    with pytest.raises(ConfigError, match=r"passes\.export\.path"):
        REGISTRY["export"].check(graph, REGISTRY["export"].parse({"path": str(tmp_path)}, "passes.export"),
                                 "passes.export", [])
    assert not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------- files of a shrunk registry model load by name


def _shrunk_lenet5() -> tuple[MaseGraph, torch.Tensor]:
    graph = _registry("lenet5")
    x = graph.dummy_input.clone()
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, _ = shrink_exactly(graph, x)
    assert graph.model.conv1.out_channels == 10 and graph.model.fc1.out_features == 250
    return graph, x


def _rewrite(path, change) -> None:
    """Rewrite a save_graph file, ``change(payload)`` applied to its loaded (plain data) payload."""
    payload = torch.load(path, weights_only=True)
    change(payload)
    torch.save(payload, path)


def _structure(path) -> dict:
    return json.loads(torch.load(path, weights_only=True)["structure"])


@pytest.mark.parametrize("load_type", ["pt", "mz"])
def test_shrunk_registry_model_files_load_by_name(tmp_path, load_type):

    graph, x = _shrunk_lenet5()
    expected = _outputs(graph, x)
    path = save_graph(graph, tmp_path / f"shrunk.{load_type}", load_type)
    assert _structure(path)["model"] == "lenet5" and _structure(path)["shrunk"] is True

    loaded = load_graph(path)  # no model: built by name, resized to the file's shapes
    assert loaded.context.model_name == "lenet5" and loaded.context.shrunk
    assert loaded.model.conv1.out_channels == 10 and loaded.model.fc1.out_features == 250
    assert get_mask(loaded.model.get_submodule("fc1")) is not None  # the masks are re-created too
    assert torch.equal(_outputs(loaded, x), expected)

    # as `ch test --load` and `load_name` open it
    by_config = load_model(path, load_type, model_name="lenet5", dataset_info=graph.context.dataset_info)
    assert by_config.context.model_name == "lenet5"
    assert torch.equal(_outputs(by_config, x), expected)

    # a loaded shrunk model's file is shrunk too: the flag survives a round trip
    again = load_graph(save_graph(loaded, tmp_path / f"again.{load_type}", load_type))
    assert torch.equal(_outputs(again, x), expected)

    # the old way (a skeleton built by hand) keeps working
    by_hand = load_graph(path, model=shrunk_like(get_model("lenet5", graph.context.dataset_info), path))
    assert torch.equal(_outputs(by_hand, x), expected)


def test_shrunk_file_is_checked_as_strictly_as_any(tmp_path):

    graph, _ = _shrunk_lenet5()
    path = save_graph(graph, tmp_path / "shrunk.pt", "pt")
    key = "fc1.parametrizations.weight.original"

    def errors(p) -> str:
        with pytest.raises(ValueError) as e:
            load_graph(p)
        message = str(e.value)
        assert len(message.splitlines()) == 1 and str(p) in message, message
        return message

    # a layer larger than the registry's (lenet5's fc1 has 500 outputs) is refused before anything is built
    larger = tmp_path / "larger.pt"
    larger.write_bytes(path.read_bytes())
    _rewrite(larger, lambda p: p["state_dict"].__setitem__(key, torch.zeros(600, 400)))
    message = errors(larger)
    assert "'fc1'" in message and "500 out_features" in message and "600" in message and "larger" in message
    with pytest.raises(ArchitectureMismatch):
        load_graph(larger)

    # a layer of another rank or kernel is not a shrunk one
    kernel = tmp_path / "kernel.pt"
    kernel.write_bytes(path.read_bytes())
    _rewrite(kernel, lambda p: p["state_dict"].__setitem__("conv1.parametrizations.weight.original",
                                                          torch.zeros(10, 1, 3, 3)))
    assert "'conv1'" in errors(kernel) and "only loses channels" in errors(kernel)

    # without "shrunk" the same (smaller) file is a plain lenet5 of the wrong shape: refused as before
    plain = tmp_path / "plain.pt"
    plain.write_bytes(path.read_bytes())

    def unshrink(p):
        structure = json.loads(p["structure"])
        del structure["shrunk"]
        p["structure"] = json.dumps(structure)

    _rewrite(plain, unshrink)
    assert "does not fit the model" in errors(plain)

    # "shrunk" must be a boolean
    for bad in ('"yes"', "1"):
        odd = tmp_path / "odd.pt"
        odd.write_bytes(path.read_bytes())
        _rewrite(odd, lambda p: p.__setitem__("structure", p["structure"].replace('"shrunk": true', f'"shrunk": {bad}')))
        assert "bad structure record" in errors(odd) and "shrunk" in errors(odd)


def test_shrunk_compressed_file_decodes_by_name_and_refuses_a_larger_layer(tmp_path):

    graph, x = _shrunk_lenet5()
    graph, _ = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": {"name": "kmeans"}},
                                          "linear": {"config": {"name": "kmeans"}}})
    expected = _outputs(graph, x)
    path = tmp_path / "shrunk.mchz"
    PASSES["huffman_encode"](graph, {"path": str(path)})
    decoded = load_compressed(path)  # no model, no context: by the name the file records
    assert decoded.context.model_name == "lenet5" and decoded.context.shrunk
    assert torch.equal(_outputs(decoded, x), expected)
    # into a fresh (full-size) graph of the registry model: the shrunk one is built in its place
    fresh = _registry("lenet5")
    into, _ = PASSES["huffman_decode"](fresh, {"path": str(path)})
    assert into is not fresh and torch.equal(_outputs(into, x), expected)

    # a header claiming fc1 larger than the registry's (every tensor of its shape) is refused unread
    header, sections = unpack_container(path.read_bytes())
    header.pop("sections", None)
    old = [250, 400]
    for entry in header["tensors"]:
        if entry[0].startswith("fc1.parametrizations.weight.") and entry[1] == old:
            entry[1] = [600, 400]
    for layer in header["layers"]:
        if layer["name"] == "fc1":
            layer["shape"] = [600, 400]
    larger = tmp_path / "larger.mchz"
    larger.write_bytes(pack_container(header, list(sections.items())))
    with pytest.raises(ValueError) as e:
        load_compressed(larger)
    assert len(str(e.value).splitlines()) == 1 and "'fc1'" in str(e.value) and "larger" in str(e.value), str(e.value)
    # and without "shrunk", the original file's smaller shapes are a mismatch, as for any lenet5 file
    header, sections = unpack_container(path.read_bytes())
    header.pop("sections", None)
    del header["structure"]["shrunk"]
    plain = tmp_path / "plain.mchz"
    plain.write_bytes(pack_container(header, list(sections.items())))
    with pytest.raises(ValueError, match="does not match"):
        load_compressed(plain)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists(),
                    reason="apt-get install dataset-fashion-mnist")
def test_ch_test_loads_a_shrunk_file_by_name(tmp_path, capsys, monkeypatch):

    monkeypatch.delenv("MACHOP_DATA_DIR", raising=False)
    graph, _ = _shrunk_lenet5()
    path = save_graph(graph, tmp_path / "shrunk.mz", "mz")
    code = main(["test", "lenet5", "fashion_mnist", "--load", str(path), "--load-type", "mz", "--test-limit", "64",
                 "--batch-size", "32", "--accelerator", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "test_acc" in out, out
    graph, _ = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": {"name": "kmeans"}},
                                          "linear": {"config": {"name": "kmeans"}}})
    PASSES["huffman_encode"](graph, {"path": str(tmp_path / "shrunk.mchz")})
    code = main(["test", "lenet5", "fashion_mnist", "--load", str(tmp_path / "shrunk.mchz"), "--load-type", "huffman",
                 "--test-limit", "64", "--batch-size", "32", "--accelerator", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "test_acc" in out, out
    code = main(["test", "lenet300", "fashion_mnist", "--load", str(path), "--load-type", "mz", "--no-progress"])
    assert code == 2 and "holds a lenet5" in capsys.readouterr().err


def test_onnx_of_a_decoded_mchz_runs_in_onnxruntime_within_1e5_of_torch(tmp_path):
    """Must-show: shrink + k-means LeNet-5 → .mchz → decoded by name → ONNX → onnxruntime within 1e-5 of torch."""
    pytest.importorskip("onnxruntime")

    graph, x = _shrunk_lenet5()
    graph, _ = PASSES["quantize"](graph, {"by": "type", "conv2d": {"config": {"name": "kmeans"}},
                                          "linear": {"config": {"name": "kmeans"}}})
    before = _outputs(graph, x)
    path = tmp_path / "lenet5.mchz"
    _, info = PASSES["huffman_encode"](graph, {"path": str(path)})
    assert info["file_bytes"] == path.stat().st_size

    decoded = load_compressed(path)  # a new graph from the file alone (by name: no model handed in)
    assert decoded.model is not graph.model and decoded.model.conv1.out_channels == 10
    torch_out = _outputs(decoded, x)
    assert torch.equal(torch_out, before)  # bit-identical to the model before encoding

    decoded.dummy_input = x
    onnx_path = tmp_path / "lenet5.onnx"
    decoded, export_info = PASSES["export"](decoded, {"path": str(onnx_path)})
    assert export_info["verified"] and onnx_path.stat().st_size > 0
    ort_out = _onnx_run(onnx_path, x)
    assert ort_out.shape == torch_out.shape
    assert torch.allclose(ort_out, torch_out, rtol=0, atol=1e-5), (ort_out - torch_out).abs().max().item()
    assert torch.allclose(ort_out, before, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- coupled channels: pruned together, removed


def _l1_rows(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).abs().sum(dim=1)


def _pruned_set(module: nn.Module) -> set[int]:
    mask = get_mask(module, "weight")
    return set((~mask.reshape(mask.shape[0], -1).any(dim=1)).nonzero().flatten().tolist())


def _lowest(scores: torch.Tensor, k: int) -> set[int]:
    return set(scores.argsort(stable=True)[:k].tolist())


def test_residual_writers_prune_the_same_channels_by_their_mean_score_and_shrink_removes_them():
    graph = _user(ResBlockNet)
    m = graph.model
    stream = (_l1_rows(m.stem.weight) + _l1_rows(m.conv2.weight)) / 2  # the oracle: mean of the writers' filter norms
    expected, alone = _lowest(stream, 4), _lowest(_l1_rows(m.conv1.weight), 4)
    graph, info = PASSES["prune"](graph, _channelwise(0.5))
    assert info["weight"]["coupled"] == [{"layers": ["stem", "conv2"], "channels": 8, "pruned": 4, "sparsity": 0.5}]
    assert _pruned_set(m.stem) == _pruned_set(m.conv2) == expected and _pruned_set(m.conv1) == alone
    graph, info = shrink_exactly(graph, ResBlockNet.example(3))
    assert all("carry" in k["reason"] for k in info["kept"])
    assert graph.model.head.in_features == 4 + sum(c["reader"] == "conv1" for c in info["carriers"])


def test_group_false_prunes_each_layer_alone_as_ln_structured_and_shrink_reports_the_coupling():
    graph = _user(ResBlockNet)
    m = graph.model
    reference = {name: _lowest(_l1_rows(getattr(m, name).weight), 4) for name in ("stem", "conv1", "conv2")}
    for name in reference:  # torch.nn.utils.prune's L1 structured pruning agrees with the brute-force reference
        copy_ = nn.Conv2d(1, 1, 1)
        copy_.weight = nn.Parameter(getattr(m, name).weight.detach().clone())
        torch.nn.utils.prune.ln_structured(copy_, "weight", amount=4, n=1, dim=0)
        assert set((copy_.weight_mask.reshape(8, -1).sum(1) == 0).nonzero().flatten().tolist()) == reference[name]
    assert reference["stem"] != reference["conv2"]  # so the coupling matters below
    graph, info = PASSES["prune"](graph, _channelwise(0.5, group=False))
    assert "coupled" not in info["weight"]
    assert {name: _pruned_set(getattr(m, name)) for name in reference} == reference
    graph, info = shrink_exactly(graph, ResBlockNet.example(3))
    assert any(k["layer"] == "stem" and "coupled" in k["reason"] for k in info["kept"])


def test_a_coupled_layer_left_out_leaves_the_others_pruned_alone_and_says_so():
    graph = _user(ResBlockNet)
    alone = _lowest(_l1_rows(graph.model.stem.weight), 4)
    graph, info = PASSES["prune"](graph, _channelwise(0.5, exclude=["conv2"]))
    assert info["weight"]["coupled"] == [{"layers": ["stem", "conv2"], "alone": "conv2 not pruned by this table"}]
    assert _pruned_set(graph.model.stem) == alone


def test_depthwise_conv_and_its_input_layer_prune_together():
    graph = _user(DepthwiseNet)
    m = graph.model
    expected = _lowest((_l1_rows(m.expand.weight) + _l1_rows(m.depthwise.weight)) / 2, 6)
    graph, info = PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "granularity": "channelwise",
                                                     "exclude": ["grouped"]}})
    assert {"layers": ["expand", "depthwise"], "channels": 12, "pruned": 6, "sparsity": 0.5} in info["weight"]["coupled"]
    assert _pruned_set(m.expand) == _pruned_set(m.depthwise) == expected
    graph, info = shrink_exactly(graph, DepthwiseNet.example(3))
    assert graph.model.expand.out_channels == graph.model.depthwise.out_channels == 6
    assert graph.model.pointwise.in_channels == 6


def test_group_applies_to_channelwise_weights_only():
    graph = _user(ResBlockNet)
    with pytest.raises(ConfigError, match=r"passes\.prune\.weight\.group: applies to channelwise weight pruning"):
        PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "group": True}})
    with pytest.raises(ConfigError, match=r"passes\.prune\.activation\.group"):
        PASSES["prune"](graph, {"activation": {"sparsity": 0.5, "granularity": "channelwise", "group": False}})


def test_borders_bias_removes_carriers_exact_inside_and_no_bias_is_added_before_a_batch_norm():
    graph = _registry("resnet18")
    x = graph.dummy_input.clone()
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    masked = _outputs(graph, x)
    dense = dict(_registry("resnet18").model.named_modules())
    graph, info = PASSES["shrink"](graph, {"borders": "bias"})
    assert info["kept"] == [] and info["carriers"] == [] and "layer1_0_conv1" in info["approximate"]
    for q, module in graph.model.named_modules():
        if isinstance(module, nn.Conv2d):
            assert module.out_channels == dense[q].out_channels // 2 and module.bias is None, q
    assert info["biases_added"] == []
    rel = ((_outputs(graph, x) - masked).abs().max() / masked.abs().max()).item()
    assert 1e-6 < rel < 0.2  # only the borders of zero-padded convolutions differ


class PointwiseNet(nn.Module):
    """A bias-free 1x1 convolution read by a batch norm alone, after a layer whose pruned channels are constant."""

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.b, self.bn_b = nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = F.relu(self.bn_b(self.b(F.relu(self.bn_a(self.a(x))))))
        return self.head(y.mean(dim=(2, 3)))

    @staticmethod
    def example(batch: int = 4) -> torch.Tensor:
        return torch.randn(batch, 3, 6, 6, generator=torch.Generator().manual_seed(batch))


def test_a_batch_norm_absorbs_the_constants_of_a_bias_free_layer_it_alone_reads():
    graph = _user(PointwiseNet)
    with torch.no_grad():
        graph.model.bn_a.bias.fill_(2.0)  # pruned channels of a output relu(bn_a(bias)) > 0
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": {"default": 0, "a": 0.5}, "granularity": "channelwise"}})
    before = graph.model.bn_b.running_mean.clone()
    graph, info = shrink_exactly(graph, PointwiseNet.example(5))
    assert graph.model.a.out_channels == 4 and graph.model.b.bias is None and info["biases_added"] == []
    assert not torch.equal(graph.model.bn_b.running_mean, before)  # it took the constants


def test_shrunk_layers_keep_training_every_weight():
    graph = _registry("vgg7")
    grads = {q: p.requires_grad for q, p in graph.model.named_parameters()}
    assert all(grads.values())
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, info = PASSES["shrink"](graph, {})
    assert info["layers"] and all(p.requires_grad for p in graph.model.parameters())
    before = {q: p.detach().clone() for q, p in graph.model.named_parameters()}
    opt = torch.optim.SGD(graph.model.parameters(), lr=0.1)
    graph.model.train()
    F.cross_entropy(graph.model(graph.dummy_input), torch.tensor([0, 1])).backward()
    opt.step()
    moved = {q for q, p in graph.model.named_parameters() if not torch.equal(p, before[q])}
    assert {q for q in before if q.endswith("weight.original") or q.endswith(".weight")} <= moved


def test_ratios_after_a_shrink_stay_against_the_original_model():
    graph = _registry("lenet5")
    dense = weight_stats(graph)["dense_bytes"]
    assert dense == 4 * sum(p.numel() for p in graph.model.parameters())
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, _ = PASSES["shrink"](graph, {})
    graph, _ = PASSES["shrink"](graph, {})  # a second shrink keeps the first baseline
    after = weight_stats(graph)
    assert after["params"] < dense / 4 / 2 and after["dense_bytes"] == dense
    assert graph.context.original_params == dense // 4
