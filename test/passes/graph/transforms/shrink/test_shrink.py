"""The shrink pass: channel masks become a physically smaller network that computes what the masked one did.

Random-init models (with batch-norm statistics and affines randomised, so a
pruned channel's constant output is not zero) on small inputs, eval mode.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from machop.config import ConfigError
from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, load_graph, save_graph
from machop.models import get_model
from machop.nn import get_mask
from machop.passes.graph import PASSES, REGISTRY
from machop.passes.graph.transforms.shrink import shrunk_like
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
    if name == "resnet18":  # residual streams only shrink where every block prunes the channel
        assert any("coupled" in k["reason"] for k in info["kept"])
        assert info["biases_added"]  # 1x1 shortcut convs had no bias: constants are folded into a new one
    assert graph.context.model_name is None and info["registry_model"] == name


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
    assert REGISTRY["shrink"].parse({"carrier": False}, "passes.shrink").carrier is False


def test_carrier_off_keeps_the_channels_instead():
    graph = _registry("vgg7")
    graph, _ = PASSES["prune"](graph, _channelwise(0.5))
    graph, info = shrink_exactly(graph, graph.dummy_input.clone(), {"carrier": False})
    assert info["carriers"] == [] and any("carrier = false" in k["reason"] for k in info["kept"])


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
    with pytest.raises(ValueError, match="your own model"):
        load_graph(path)
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
    from torch.utils.data import DataLoader, TensorDataset

    from machop.config import TrainSettings
    from machop.training import DataLoaders

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
