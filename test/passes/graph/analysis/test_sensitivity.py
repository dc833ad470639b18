"""The sensitivity pass on real data: each curve point is the accuracy of the model with that one layer compressed.

Oracles: ``torch.nn.utils.prune.l1_unstructured`` on a copy of the model
(sparsity), the quantize pass's k-means on a copy (bits), both evaluated by
a plain loop over the same images; the model is bit for bit unchanged
afterwards. A small CNN is trained for a few seconds on a slice of
Fashion-MNIST so that the curves mean something.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils.data import DataLoader, TensorDataset

from machop.cli import main
from machop.config import ConfigError
from machop.datasets import MaseDataModule
from machop.ir import MaseGraph, PassContext
from machop.nn import get_mask
from machop.passes.graph import PASSES, REGISTRY
from machop.passes.graph.analysis.sensitivity import (
    DEFAULT_BITS,
    DEFAULT_SPARSITIES,
    Sensitivity,
    label_entropy,
    measure_sensitivity,
    parse_sensitivity_args,
    sensitivity_analysis_pass,
)
from machop.report import sensitivity_tables
from machop.training import DataLoaders, labelled_batch

from zoo.models import CalledTwice, SmallCNN, TiedEmbedding

SAMPLES = 400


def make_graph(data, state) -> MaseGraph:
    model = SmallCNN()
    model.load_state_dict(state)
    return MaseGraph(model, context=PassContext(data_module=data, progress_bar=False))


def loop_accuracy(model: nn.Module, data, samples: int = SAMPLES, split: str = "val") -> float:
    """The straightforward loop: the first ``samples`` images of the split's loader, batch by batch."""
    model.eval()
    correct = seen = 0
    loader = data.val_dataloader() if split == "val" else data.test_dataloader()
    with torch.no_grad():
        for x, y in loader:
            x, y = x[: samples - seen], y[: samples - seen]
            correct += int((model(x).argmax(1) == y).sum())
            seen += len(y)
            if seen >= samples:
                break
    return correct / seen


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (so that -0.0 and 0.0 differ), or the tensor itself if it is not float."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8) if t.is_floating_point() else t


def snapshot(graph: MaseGraph, x: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """(state dict, outputs on ``x``) of the graph's model as it is now."""
    state = {k: v.detach().clone() for k, v in graph.model.state_dict().items()}
    with torch.no_grad():
        return state, graph.model(x)


def assert_identical(graph: MaseGraph, before: tuple[dict, torch.Tensor], x: torch.Tensor) -> None:
    """The model's state dict and outputs on ``x`` are bit for bit ``before``."""
    state, out = before
    now = graph.model.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].dtype == v.dtype and torch.equal(_bits(now[k]), _bits(v)), k
    with torch.no_grad():
        assert torch.equal(_bits(graph.model(x)), _bits(out))


# --------------------------------------------------------------------------- sparsity


def test_each_sparsity_point_is_torch_prune_of_that_layer_alone(data, trained):
    graph = make_graph(data, trained)
    sparsities = (0.5, 0.9, 0.99)
    result = measure_sensitivity(graph, sparsities=sparsities, samples=SAMPLES)
    reference = SmallCNN()
    reference.load_state_dict(trained)
    assert result.baseline_acc == loop_accuracy(reference, data) and result.baseline_acc > 0.6
    assert result.samples == SAMPLES and result.split == "val"
    assert [layer.name for layer in result.layers] == ["conv", "fc1", "fc2"]
    for layer in result.layers:
        assert layer.weights == layer.nonzero == trained[f"{layer.name}.weight"].numel()
        assert [s for s, _ in layer.sparsity] == list(sparsities)
        for s, acc in layer.sparsity:
            oracle = copy.deepcopy(reference)
            torch_prune.l1_unstructured(oracle.get_submodule(layer.name), "weight", amount=s)
            assert acc == loop_accuracy(oracle, data), (layer.name, s)
    # pruning fc1 (the big layer) to 99% costs far more than to 50%
    fc1 = dict(result.layer("fc1").sparsity)
    assert fc1[0.5] > fc1[0.99] + 0.1


def test_a_pruned_model_keeps_its_mask_below_its_sparsity_and_is_unchanged_after(data, trained):
    graph = make_graph(data, trained)
    PASSES["prune"](graph, {"weight": {"sparsity": 0.6}})
    graph.model.train()
    graph.model.get_submodule("pool").eval()  # mixed modes come back as they were
    x = labelled_batch(data, 64, "test")[0]
    before = snapshot(graph, x)
    result = measure_sensitivity(graph, sparsities=(0.3, 0.6, 0.8), bits=(2, 5), samples=SAMPLES)
    assert_identical(graph, before, x)
    assert graph.model.training and not graph.model.get_submodule("pool").training
    assert graph.model.get_submodule("fc1").training

    baked = SmallCNN()
    baked.load_state_dict(trained)
    for name in ("conv", "fc1", "fc2"):  # the effective (masked) weights as plain ones
        baked.get_submodule(name).weight.data = graph.model.get_submodule(name).weight.detach().clone()
    assert result.baseline_acc == loop_accuracy(baked, data)
    for layer in result.layers:
        n = layer.weights
        assert layer.nonzero == n - round(0.6 * n)
        acc = dict(layer.sparsity)
        assert acc[0.3] == acc[0.6] == result.baseline_acc  # at or below the current sparsity: the mask as it is
        oracle = copy.deepcopy(baked)
        torch_prune.l1_unstructured(oracle.get_submodule(layer.name), "weight", amount=0.8)
        assert acc[0.8] == loop_accuracy(oracle, data), layer.name


def test_an_interrupted_measurement_leaves_the_model_as_it_was(data, trained):
    graph = make_graph(data, trained)
    PASSES["prune"](graph, {"weight": {"sparsity": 0.5, "exclude": ["conv"]}})
    x = labelled_batch(data, 64, "test")[0]
    before = snapshot(graph, x)
    calls = []

    def interrupt(module, args):
        calls.append(1)
        if len(calls) == 5:  # fc1 pruned to 0.7: in the middle of its curve
            raise KeyboardInterrupt

    handle = graph.model.get_submodule("fc2").register_forward_pre_hook(interrupt)
    with pytest.raises(KeyboardInterrupt):
        measure_sensitivity(graph, sparsities=(0.7, 0.9), bits=(3,), samples=SAMPLES)
    handle.remove()
    assert_identical(graph, before, x)
    assert graph.model.training  # a fresh model is in train mode, and stays so


# --------------------------------------------------------------------------- bits


def test_each_bits_point_is_the_quantize_pass_on_that_layer_alone(data, trained):
    graph = make_graph(data, trained)
    PASSES["prune"](graph, {"weight": {"sparsity": 0.7}})
    pruned = {k: v.clone() for k, v in graph.model.state_dict().items()}
    result = measure_sensitivity(graph, sparsities=(), bits=(1, 3), samples=SAMPLES)
    for layer in result.layers:
        assert layer.sparsity == [] and [b for b, _, _ in layer.bits] == [1, 3]
        for bits, acc, entropy in layer.bits:
            oracle = make_graph(data, trained)
            PASSES["prune"](oracle, {"weight": {"sparsity": 0.7}})
            oracle.model.load_state_dict(pruned)
            PASSES["quantize"](oracle, {"by": "name", layer.name: {"config": {"name": "kmeans", "weight_bits": bits}}})
            assert acc == loop_accuracy(oracle.model, data), (layer.name, bits)
            codes = oracle.model.get_submodule(layer.name).parametrizations.weight[-1].index
            mask = get_mask(oracle.model.get_submodule(layer.name))
            assert entropy == pytest.approx(label_entropy(codes[mask]), abs=1e-12)
            assert 0 < entropy <= bits


def test_bits_that_hold_every_distinct_value_change_nothing(data, trained):
    graph = make_graph(data, trained)
    fc1 = graph.model.get_submodule("fc1")
    with torch.no_grad():  # fc1 takes 4 distinct values: 2 bits hold them all
        levels = torch.tensor([-0.05, -0.01, 0.01, 0.05])
        fc1.weight.copy_(levels[torch.bucketize(fc1.weight, torch.tensor([-0.03, 0.0, 0.03]))])
    result = measure_sensitivity(graph, weights=[w for w in graph.weights() if w.name == "fc1"],
                                 sparsities=(), bits=(1, 2, 3, 8), samples=SAMPLES)
    (layer,) = result.layers
    points = {b: (acc, h) for b, acc, h in layer.bits}
    for bits in (2, 3, 8):
        assert points[bits][0] == result.baseline_acc
        assert points[bits][1] == points[2][1] <= 2  # the same 4 clusters: the same entropy
    assert points[1][1] <= 1
    assert label_entropy(torch.tensor([0, 0, 1, 1])) == 1.0 and label_entropy(torch.tensor([3, 3])) == 0.0


# --------------------------------------------------------------------------- the pass


def test_the_pass_selects_like_prune_skips_quantized_weights_and_serialises(data, trained):
    graph = make_graph(data, trained)
    PASSES["quantize"](graph, {"by": "name", "fc2": {"config": {"name": "kmeans", "weight_bits": 2}}})
    x = labelled_batch(data, 64, "test")[0]
    before = snapshot(graph, x)
    _, info = sensitivity_analysis_pass(graph, {"sparsities": [0.9, 0.5], "bits": [2], "samples": 100,
                                                "exclude": ["conv"], "split": "test"})
    assert_identical(graph, before, x)
    json.dumps(info)
    assert info["skipped"] == [{"name": "conv", "reason": "excluded"},
                               {"name": "fc2", "reason": "already quantized (k-means)"}]
    s = Sensitivity.from_json(json.loads(json.dumps(info["sensitivity"])))
    assert s.to_json() == info["sensitivity"] and s.split == "test" and s.samples == 100
    assert [layer.name for layer in s.layers] == ["fc1"]
    assert [p[0] for p in s.layers[0].sparsity] == [0.5, 0.9]
    reference = SmallCNN()
    reference.load_state_dict(trained)
    reference.fc2.weight.data = graph.model.fc2.weight.detach().clone()
    assert s.baseline_acc == loop_accuracy(reference, data, 100, "test")

    _, info = sensitivity_analysis_pass(graph, {"sparsities": [0.5], "bits": [], "samples": 50, "types": ["conv2d"]})
    assert [layer["name"] for layer in info["sensitivity"]["layers"]] == ["conv"]
    assert info["skipped"][0] == {"name": "fc1", "reason": "type linear not in types"}
    assert info["sensitivity"]["layers"][0]["bits"] == []
    lines = sensitivity_tables(info["sensitivity"])
    assert lines[2:6] == ["Accuracy with that layer alone pruned to each sparsity:", "", "| layer | weights | kept | 0.5 |",
                          "|---|---:|---:|---:|"]
    assert lines[6].startswith("| conv | 150 | 150 | 0.") and len(lines) == 7  # no bits measured: no bits table
    assert REGISTRY["sensitivity"].changes_model is False


def test_defaults_and_bad_values_name_the_key(data, trained):
    args = parse_sensitivity_args({})
    assert tuple(args.sparsities) == DEFAULT_SPARSITIES and tuple(args.bits) == DEFAULT_BITS == tuple(range(1, 9))
    assert args.samples == 2000 and args.split == "val" and args.types is None and args.exclude == []
    bad = [
        ({"sparsities": [0.5, 0.7, 1.5]}, "passes.sensitivity.sparsities[2]: must be in [0, 1), got 1.5"),
        ({"sparsities": [-0.1]}, "passes.sensitivity.sparsities[0]: must be in [0, 1), got -0.1"),
        ({"sparsities": [0.5, 0.5]}, "passes.sensitivity.sparsities[1]: lists 0.5 twice"),
        ({"sparsities": ["half"]}, "passes.sensitivity.sparsities[0]: must be a number"),
        ({"bits": [0]}, "passes.sensitivity.bits[0]: must be in [1, 16], got 0"),
        ({"bits": [4, 17]}, "passes.sensitivity.bits[1]: must be in [1, 16], got 17"),
        ({"bits": [2.5]}, "passes.sensitivity.bits[0]: must be an integer"),
        ({"sparsities": [], "bits": []}, "passes.sensitivity.sparsities: sparsities and bits are both empty"),
        ({"samples": 0}, "passes.sensitivity.samples: must be >= 1, got 0"),
        ({"split": "train"}, "passes.sensitivity.split: must be one of 'val', 'test'"),
        ({"types": ["conv9"]}, "passes.sensitivity.types[0]: unknown layer type 'conv9'"),
        ({"exclude": ["fc1", "fc1"]}, "passes.sensitivity.exclude: lists a name twice"),
        ({"sparsity": [0.5]}, "passes.sensitivity.sparsity: unknown key; allowed keys: bits, exclude, retrain_steps, samples"),
    ]
    for table, message in bad:
        with pytest.raises(ConfigError) as e:
            parse_sensitivity_args(table)
        assert str(e.value).startswith(message), (table, str(e.value))
    graph = make_graph(data, trained)
    for table, message in (({"exclude": ["fc9"]}, "passes.sensitivity.exclude: unknown name(s) 'fc9'; valid names: "
                                                  "conv, fc1, fc2"),
                           ({"types": ["lstm"]}, "passes.sensitivity.types: no lstm layer in this model")):
        with pytest.raises(ConfigError) as e:
            sensitivity_analysis_pass(graph, table)
        assert str(e.value).startswith(message)
    graph.context.data_module = None
    with pytest.raises(RuntimeError, match="pass 'sensitivity' needs data"):
        sensitivity_analysis_pass(graph, {})
    with pytest.raises(ValueError, match="sparsities must be in"):
        measure_sensitivity(graph, sparsities=(1.0,))


# --------------------------------------------------------------------------- your own model


class TiedClassifier(nn.Module):
    """TiedEmbedding (embedding tied to the output projection) pooled over the sequence: one label per sequence."""

    def __init__(self):
        super().__init__()
        self.lm = TiedEmbedding()

    def forward(self, tokens):
        return self.lm(tokens).mean(dim=1)


def _token_data(n: int = 300) -> DataLoaders:
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 40, (n, 5), generator=g)
    labels = tokens[:, 0]
    return DataLoaders(DataLoader(TensorDataset(tokens, labels), batch_size=64),
                       DataLoader(TensorDataset(tokens, labels), batch_size=64))


def test_user_models_tied_and_reused_weights_are_one_row_each():
    torch.manual_seed(0)
    graph = MaseGraph(TiedClassifier(), context=PassContext(data_module=_token_data(), progress_bar=False))
    before = {k: v.clone() for k, v in graph.model.state_dict().items()}
    _, info = PASSES["sensitivity"](graph, {"sparsities": [0.5, 0.9], "bits": [1, 4], "samples": 200})
    layers = info["sensitivity"]["layers"]
    assert [layer["name"] for layer in layers] == ["lm_emb", "lm_mix"]  # the decoder is the embedding
    assert layers[0]["weights"] == 40 * 12
    assert graph.model.lm.decoder.weight is graph.model.lm.emb.weight  # still tied
    assert all(torch.equal(v, before[k]) for k, v in graph.model.state_dict().items())
    # the tie is measured as one: pruning it prunes the decoder too (a copy pruned at both sites agrees)
    x, y = labelled_batch(graph.context.data_module, 200)
    oracle = copy.deepcopy(graph.model)
    tied = oracle.lm.emb.weight
    assert oracle.lm.decoder.weight is tied
    with torch.no_grad():
        tied.mul_(torch_prune.L1Unstructured(0.9).compute_mask(tied, torch.ones_like(tied)))
    with torch.no_grad():
        assert dict(layers[0]["sparsity"])[0.9] == (oracle(x).argmax(1) == y).float().sum().item() / 200

    graph = MaseGraph(CalledTwice(), context=PassContext(data_module=_called_twice_data(), progress_bar=False))
    _, info = PASSES["sensitivity"](graph, {"sparsities": [0.5], "bits": [2], "samples": 100})
    assert [layer["name"] for layer in info["sensitivity"]["layers"]] == ["inp", "shared", "outp"]


def _called_twice_data() -> DataLoaders:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(200, 10, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoaders(DataLoader(TensorDataset(x, y), batch_size=50), DataLoader(TensorDataset(x, y), batch_size=50))


# --------------------------------------------------------------------------- data


def test_labelled_batch_reads_the_first_samples_of_a_split(data):
    x, y = labelled_batch(data, 300, "val")
    assert x.shape == (300, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (300,)
    first = next(iter(data.val_dataloader()))
    assert torch.equal(x[:128], first[0]) and torch.equal(y[:128], first[1])
    assert labelled_batch(data, 10_000, "test")[0].shape[0] == 500  # the split holds fewer
    xt, yt = labelled_batch(data, 50, "train")  # the first training images, not augmented, not shuffled
    own_x, own_y = data.calibration_batch(50)
    assert torch.equal(xt, own_x) and torch.equal(yt, own_y)
    loaders = _called_twice_data()
    x, y = labelled_batch(loaders, 120)
    assert x.shape == (120, 10) and y.shape == (120,)
    with pytest.raises(ValueError, match="split must be one of"):
        labelled_batch(data, 10, "validation")
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        labelled_batch(data, 0)


# --------------------------------------------------------------------------- ch transform


CONFIG = """model = "lenet5"
[passes.prune.weight]
sparsity = 0.5
exclude = ["conv1"]
[passes.sensitivity]
sparsities = [0.5, 0.9]
bits = [2]
samples = 100
split = "test"
"""


def test_ch_transform_writes_the_figure_and_the_table(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(CONFIG)
    code = main(["transform", "--config", "run.toml", "--project-dir", "out", "--train-limit", "500",
                 "--test-limit", "200", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "out" / "default").glob("transform_*"))
    report = json.loads((run / "report.json").read_text())
    step = report["steps"][1]
    assert step["pass"] == "sensitivity" and "checkpoint" not in step  # it does not change the model
    s = Sensitivity.from_json(step["info"]["sensitivity"])
    assert [layer.name for layer in s.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert s.layer("conv1").nonzero == 500 and s.layer("fc1").nonzero == 200_000  # the prune step's masks
    assert dict(s.layer("fc1").sparsity)[0.5] == s.baseline_acc  # 0.5 is fc1's current sparsity
    assert [b for b, _, _ in s.layer("fc2").bits] == [2] and s.samples == 100
    assert (run / "sensitivity_sensitivity.png").stat().st_size > 10_000
    md = (run / "report.md").read_text()
    assert "| layer | weights | kept | 0.5 | 0.9 |" in md and "| fc1 | 400,000 | 200,000 |" in md
    assert "![sensitivity_sensitivity](sensitivity_sensitivity.png)" in md

    (tmp_path / "bad.toml").write_text('model = "lenet5"\n[passes.sensitivity]\nexclude = ["fc9"]\n')
    assert main(["transform", "--config", "bad.toml", "--project-dir", "out2", "--no-progress"]) == 2
    assert "passes.sensitivity.exclude: unknown name(s) 'fc9'" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
