"""Gradual pruning (AGP, Zhu & Gupta 2017) in the prune pass: the schedule, exact final sparsities on real data,
masks that only grow, the best epoch taken at the final sparsity only, config errors, `ch transform`."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import pytorch_lightning as pl
import torch

from machop.cli import main
from machop.config import ConfigError, TrainSettings
from machop.datasets import MaseDataModule
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.nn import get_mask, prune_count
from machop.passes.graph import PASSES
from machop.passes.graph.transforms.prune import agp_sparsity, gradual, parse_prune_args, update_steps

LENET300 = {"fc1": 266200 - 30000 - 1000, "fc2": 30000, "fc3": 1000}  # weights per layer (784*300, 300*100, 100*10)


@pytest.fixture(scope="module")
def data():
    dm = MaseDataModule("fashion_mnist", batch_size=64, train_limit=600, test_limit=500)  # 540 train, 60 val
    dm.setup()
    return dm


def _graph(data, max_epochs: int = 3, **settings) -> MaseGraph:
    torch.manual_seed(0)
    ctx = PassContext(data_module=data, model_name="lenet300", dataset_info=data.info, progress_bar=False,
                      training=TrainSettings(accelerator="cpu", max_epochs=max_epochs, **settings))
    return MaseGraph(get_model("lenet300", data.info), context=ctx)


def _masks(model) -> dict[str, torch.Tensor]:
    return {name: get_mask(model.get_submodule(name)).clone() for name in LENET300}


class _Spy(pl.Callback):
    """Records the masks after every training batch and, at each validation, val_acc and whether every
    mask is at its final count; checks that the optimizer holds the masked weights' Parameters."""

    def __init__(self, model, final: dict[str, int]):
        self.model, self.final = model, final
        self.masks: list[dict] = []
        self.validations: list[tuple[float, bool]] = []
        self.optimized = None

    def on_train_start(self, trainer, module):
        held = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        self.optimized = all(id(self.model.get_submodule(n).parametrizations.weight.original) in held
                             for n in LENET300)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.masks.append(_masks(self.model))

    def on_validation_epoch_end(self, trainer, module):
        at_final = all(int((~m).sum()) == self.final[n] for n, m in _masks(self.model).items())
        self.validations.append((float(trainer.callback_metrics["val_acc"]), at_final))


def _spy_on_training(monkeypatch, spy):
    real = gradual.train_step

    def train_step(*args, callbacks=None, **kwargs):
        return real(*args, callbacks=[*(callbacks or []), spy], **kwargs)

    monkeypatch.setattr(gradual, "train_step", train_step)


# --------------------------------------------------------------------------- the schedule


def test_schedule_is_the_cubic_formula_monotone_and_exact_at_the_ends():
    for s_i, s_f, t0, n in [(0.0, 0.95, 0, 300), (0.1, 0.6, 40, 77), (0.5, 0.5, 3, 10), (0.0, 0.3, 0, 1)]:
        values = [agp_sparsity(t, s_i, s_f, t0, n) for t in range(t0 - 5, t0 + n + 5)]
        for t, v in zip(range(t0 - 5, t0 + n + 5), values):
            p = min(max(Fraction(t - t0, n), Fraction(0)), Fraction(1))
            oracle = Fraction(s_f) + (Fraction(s_i) - Fraction(s_f)) * (1 - p) ** 3
            assert v == pytest.approx(float(oracle), abs=1e-12)
        assert all(a <= b for a, b in zip(values, values[1:]))
        assert agp_sparsity(t0, s_i, s_f, t0, n) == s_i and agp_sparsity(t0 + n, s_i, s_f, t0, n) == s_f
        assert agp_sparsity(t0 + n + 100, s_i, s_f, t0, n) == s_f
    assert update_steps(10, 20, 5) == [10, 15, 20, 25, 30]
    assert update_steps(0, 18, 4) == [0, 4, 8, 12, 16, 18]  # the last update at the ramp's end, whatever the frequency
    assert update_steps(0, 3, 10) == [0, 3]
    assert gradual.default_frequency(300) == 10 and gradual.default_frequency(7) == 1


# --------------------------------------------------------------------------- real runs


def test_short_run_ends_exactly_at_the_final_sparsities(data, monkeypatch, tmp_path):
    final = {"default": 0.9, "fc3": 0.5}
    counts = {n: prune_count(final.get(n, final["default"]), size) for n, size in LENET300.items()}
    graph = _graph(data)
    graph.context.output_dir = tmp_path
    graph.context.step = "agp"
    spy = _Spy(graph.model, counts)
    _spy_on_training(monkeypatch, spy)
    dense = {n: graph.model.get_submodule(n).weight.detach().clone() for n in LENET300}
    graph, info = PASSES["prune"](graph, {"weight": {"sparsity": final}, "gradual": {
        "initial_sparsity": 0.2, "ramp_epochs": 2, "frequency": 2, "training": {"max_epochs": 3}}})

    assert spy.optimized  # the optimizer trains the Parameters under parametrizations.weight.original
    model = graph.model
    for name, count in counts.items():
        module = model.get_submodule(name)
        mask = get_mask(module)
        assert int((~mask).sum()) == count  # exactly round(s_f * n), as the one-shot pass
        assert torch.count_nonzero(module.weight[~mask]) == 0
        assert not torch.equal(module.weight[mask], dense[name][mask])  # it trained
        assert info["layers"][name]["weight"]["achieved"] == pytest.approx(count / LENET300[name])
    for before, after in zip(spy.masks, spy.masks[1:]):  # masks only grow: nothing pruned comes back
        assert all(not (after[n] & ~before[n]).any() for n in LENET300)
    # 9 steps per epoch, ramp 18 steps, every 2: updates at 0, 2, ..., 18; the first at s_i (capped at fc3's 0.5)
    schedule = info["gradual"]
    assert (schedule["steps_per_epoch"], schedule["ramp_steps"], schedule["frequency"]) == (9, 18, 2)
    assert [row[0] for row in schedule["schedule"]] == list(range(0, 19, 2))
    assert schedule["schedule"][0][1] == pytest.approx(0.2)
    assert schedule["schedule"][-1][2] == pytest.approx(sum(counts.values()) / sum(LENET300.values()), abs=1e-6)
    assert schedule["final_epoch"] == 1  # the ramp's last epoch ends with the last update, then is validated
    # best epoch: only validations at the final sparsity count; the restored model is one of them
    assert [final for _, final in spy.validations] == [False, True, True]
    assert info["best_val_acc"] == pytest.approx(max(acc for acc, final in spy.validations if final))
    assert info["epochs"] == 3 and 0.3 < info["test_acc"] <= 1 and "test_loss" in info
    assert info["weight"]["achieved"] == pytest.approx(sum(counts.values()) / sum(LENET300.values()))
    checkpoint = torch.load(tmp_path / "checkpoints" / "agp" / "best.ckpt", weights_only=True)
    assert info["checkpoint"].endswith("best.ckpt")
    saved = {n: checkpoint["state_dict"][f"model.{n}.parametrizations.weight.0.mask"] for n in LENET300}
    assert {n: int((~m).sum()) for n, m in saved.items()} == counts


def test_global_scope_and_a_ramp_in_steps_starting_later(data, monkeypatch):
    graph = _graph(data, max_epochs=3)
    total = sum(LENET300.values())
    spy = _Spy(graph.model, {n: -1 for n in LENET300})
    _spy_on_training(monkeypatch, spy)
    graph, info = PASSES["prune"](graph, {"weight": {"sparsity": 0.8, "scope": "global"}, "gradual": {
        "start_epoch": 1, "ramp_steps": 7}})  # frequency: ceil(7 / 30) = 1
    pruned = sum(int((~get_mask(graph.model.get_submodule(n))).sum()) for n in LENET300)
    assert pruned == prune_count(0.8, total)
    schedule = info["gradual"]
    assert [row[0] for row in schedule["schedule"]] == list(range(9, 17))
    assert schedule["schedule"][0][2] == 0.0  # s_i = 0: the first update prunes nothing
    assert all(m[n].all() for m in spy.masks[:8] for n in LENET300)  # dense through start_epoch 1
    assert info["best_val_acc"] is not None and info["epochs"] == 3


def test_a_user_model_kernelwise(monkeypatch):
    """A model of test/zoo on plain DataLoaders: kernelwise pruning of its convolutions, the head excluded."""
    from torch.utils.data import DataLoader, TensorDataset

    from machop.training import DataLoaders
    from zoo.models import ResBlockNet

    torch.manual_seed(0)
    x = ResBlockNet.example(96)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    loaders = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True),
                          DataLoader(TensorDataset(x, y), batch_size=48))
    graph = MaseGraph(ResBlockNet(), dummy_input=x[:2])
    graph.context.data_module = loaders
    graph.context.training = TrainSettings(accelerator="cpu", max_epochs=2, learning_rate=1e-2)
    graph.context.progress_bar = False
    graph, info = PASSES["prune"](graph, {"weight": {"sparsity": {"default": 0.5, "conv2": 0.75},
                                                     "granularity": "kernelwise", "types": ["conv2d"]},
                                          "gradual": {"ramp_epochs": 1, "frequency": 2}})
    for name, s in {"stem": 0.5, "conv1": 0.5, "conv2": 0.75}.items():
        kernels = get_mask(graph.model.get_submodule(name)).flatten(2).any(dim=2)
        assert int((~kernels).sum()) == prune_count(s, kernels.numel())
        assert get_mask(graph.model.get_submodule(name)).flatten(2).all(dim=2).eq(kernels).all()  # whole kernels
    assert get_mask(graph.model.head) is None
    assert info["gradual"]["steps_per_epoch"] == 6 and info["gradual"]["schedule"][-1][0] == 6
    assert "test_acc" in info


def test_remove_bakes_the_final_masks_after_training():
    from torch.utils.data import DataLoader, TensorDataset

    from machop.nn import has_compression
    from machop.training import DataLoaders
    from zoo.models import MLP

    torch.manual_seed(0)
    x = MLP.example(128)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    graph = MaseGraph(MLP(), dummy_input=x[:2])
    graph.context.data_module = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=32), DataLoader(TensorDataset(x, y)))
    graph.context.training = TrainSettings(accelerator="cpu", max_epochs=2)
    graph.context.progress_bar = False
    graph, info = PASSES["prune"](graph, {"remove": True, "weight": {"sparsity": 0.7, "scope": "global"},
                                          "gradual": {"ramp_steps": 5, "test": False}})
    assert not has_compression(graph.model) and info["removed"]["baked_weight_masks"] == 3
    n = sum(graph.model.get_submodule(name).weight.numel() for name in MLP.WEIGHTS)
    zeros = sum(int((graph.model.get_submodule(name).weight == 0).sum()) for name in MLP.WEIGHTS)
    assert zeros == prune_count(0.7, n) and "test_acc" not in info


# --------------------------------------------------------------------------- config errors


@pytest.mark.parametrize("table, key", [
    ({"weight": {"sparsity": 0.5}, "gradual": {}}, r"gradual\.ramp_epochs: give exactly one"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 2, "ramp_steps": 9}}, r"gradual\.ramp_epochs: give"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 0}}, r"gradual\.ramp_epochs: must be in \[1"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_steps": 2.5}}, r"gradual\.ramp_steps: must be an integer"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1, "initial_sparsity": 1.0}},
     r"gradual\.initial_sparsity: must be in \[0, 1\)"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1, "frequency": 0}}, r"gradual\.frequency: must be in"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1, "start_epoch": -1}}, r"gradual\.start_epoch"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1, "ramp": 3}}, r"gradual\.ramp: unknown key"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 6, "start_epoch": 1, "training": {"max_epochs": 6}}},
     r"gradual\.ramp_epochs: start_epoch \+ ramp_epochs = 7 is more than max_epochs = 6"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_steps": 50, "trainer": {"max_steps": 40, "max_epochs": 3}}},
     r"gradual\.ramp_steps: 50 is more than max_steps = 40"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1, "training": {"max_epochs": 0}}},
     r"gradual\.training\.max_epochs: must be in \[1"),
    ({"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1, "trainer": {"optimizer": "adam"}}},
     r"gradual\.trainer\.optimizer: unknown key"),
    ({"weight": {"sparsity": 0.5}, "activation": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1}},
     r"passes\.agp\.activation: gradual pruning prunes weights only"),
    ({"activation": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1}}, r"passes\.agp\.activation: gradual"),
    ({"gradual": {"ramp_epochs": 1}}, r"passes\.agp\.gradual: needs a \[passes\.agp\.weight\] table"),
    ({"weight": {"sparsity": 1.0}, "gradual": {"ramp_epochs": 1}}, r"passes\.agp\.weight\.sparsity: must be in"),
])
def test_bad_gradual_tables_name_the_key(table, key):
    with pytest.raises(ConfigError, match=r"^passes\.agp\." + key.removeprefix(r"passes\.agp\.")):
        parse_prune_args(table, "passes.agp")


def test_checked_against_the_run_before_anything_changes(data):
    graph = _graph(data, max_epochs=2)
    state = {k: v.clone() for k, v in graph.model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"^passes\.prune\.gradual\.ramp_epochs: .* max_epochs = 2"):
        PASSES["prune"](graph, {"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 3}})  # the run's max_epochs
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"^passes\.prune\.gradual\.trainer\.accelerator: 'gpu' asked for"):
            PASSES["prune"](graph, {"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1,
                                                                             "trainer": {"accelerator": "gpu"}}})
    assert graph.model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, graph.model.state_dict()[k]) for k, v in state.items())
    bare = MaseGraph(get_model("lenet300", data.info))
    with pytest.raises(RuntimeError, match="needs data"):
        PASSES["prune"](bare, {"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 1}})
    assert get_mask(bare.model.fc1) is None


def test_a_ramp_past_max_steps_is_refused_before_training(data):
    graph = _graph(data, max_epochs=3, max_steps=10)  # 9 steps per epoch: a 2-epoch ramp ends at step 18
    with pytest.raises(ConfigError, match=r"^passes\.prune\.gradual\.ramp_epochs: the ramp ends at optimizer step 18"):
        PASSES["prune"](graph, {"weight": {"sparsity": 0.5}, "gradual": {"ramp_epochs": 2}})
    assert all(get_mask(graph.model.get_submodule(n)).all() for n in LENET300)  # nothing pruned, nothing trained


# --------------------------------------------------------------------------- ch transform

CONFIG = """model = "lenet300"
dataset = "fashion_mnist"
train_limit = 600
test_limit = 300
batch_size = 64
max_epochs = 2

[passes.agp]
pass = "prune"
[passes.agp.weight]
sparsity = { default = 0.9, fc3 = 0.5 }
[passes.agp.gradual]
initial_sparsity = 0.1
ramp_epochs = 1
frequency = 3
[passes.agp.gradual.training]
learning_rate = 2e-3

[passes.test]
"""


def test_ch_transform_runs_an_agp_step(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agp.toml").write_text(CONFIG)
    code = main(["transform", "--config", "agp.toml", "--project-dir", "out", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "out" / "default").glob("transform_*"))
    report = json.loads((run / "report.json").read_text())
    agp, test = report["steps"]
    assert agp["info"]["gradual"]["schedule"][-1][0] == agp["info"]["gradual"]["ramp_steps"] == 9
    assert agp["test_acc"] == agp["info"]["test_acc"] == pytest.approx(test["info"]["test_acc"])
    assert agp["info"]["layers"]["fc1"]["weight"]["achieved"] == pytest.approx(0.9)
    assert (run / "checkpoints" / "agp" / "best.ckpt").is_file() and (run / "checkpoints" / "01_agp.mz").is_file()


def test_a_prior_while_pruning_clusters_the_kept_weights_and_prunes_what_it_claims(data):
    """``[gradual.prior]``: the final sparsity is reached, the zero component's claims are pruned on top,
    and the kept weights end nearer to the mixture's means than without the prior."""
    spread = {}
    for weight in (0.0, 1.0):
        graph = _graph(data, max_epochs=3)
        graph, info = PASSES["prune"](graph, {"weight": {"sparsity": 0.8}, "gradual": {
            "ramp_epochs": 2, "prior": {"weight": weight, "components": 8}}})
        pruned = {n: int((~get_mask(graph.model.get_submodule(n))).sum()) for n in LENET300}
        claimed = info["prior"]["pruned"]
        assert all(pruned[n] == prune_count(0.8, LENET300[n]) + claimed.get(n, 0) for n in LENET300)
        means = torch.tensor(info["prior"]["means"])
        kept = torch.cat([graph.model.get_submodule(n).weight[get_mask(graph.model.get_submodule(n))]
                          for n in LENET300]).detach()
        spread[weight] = float((kept[:, None] - means).abs().min(1).values.mean() / kept.abs().mean())
    assert spread[1.0] < 0.7 * spread[0.0], spread
