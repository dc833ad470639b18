"""Distillation and soft weight-sharing's prior: the loss terms against hand-written references, and in the passes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from machop.config import ConfigError, TrainSettings, load_config
from machop.datasets import MaseDataModule
from machop.ir import MaseGraph, PassContext
from machop.ir.teacher import Ensemble, fresh_copy
from machop.models import get_model
from machop.nn import MixturePrior, apply_mask, compressible_weights, get_mask, kmeans_1d
from machop.passes.graph import PASSES
from machop.passes.graph.analysis.sensitivity import measure_sensitivity
from machop.passes.graph.transforms.train import parse_train_args
from machop.training import DataLoaders, DistillArgs, Objective, PriorArgs, build_objective, fit
from zoo.models import ZOO

ROOT = Path(__file__).resolve().parents[2]


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))


def test_distillation_loss_is_hintons_mix_of_cross_entropy_and_softened_kl():
    student, teacher = _linear(0), _linear(1)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    args = DistillArgs(temperature=3.0, weight=0.25)
    logits = student(x)
    ce = F.cross_entropy(logits, y)
    parts = Objective(teacher, args).loss(ce, logits, x)
    p = torch.softmax(teacher(x) / 3.0, 1)
    q = torch.softmax(logits / 3.0, 1)
    kl = (p * (p.log() - q.log())).sum(1).mean() * 9.0  # written out: KL(teacher || student) * T^2
    assert torch.allclose(parts["distill_loss"], kl, atol=1e-6)
    assert torch.allclose(parts["loss"], 0.75 * ce + 0.25 * kl, atol=1e-6)
    assert torch.equal(Objective(teacher, DistillArgs(weight=0.0)).loss(ce, logits, x)["loss"], ce)


class _DictOut(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return {"logits": self.inner(x), "features": x}


def test_a_teacher_returning_a_dict_is_read_by_its_logits():
    student, teacher = _linear(0), _linear(1)
    x = torch.randn(8, 6)
    logits = student(x)
    ce = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    plain = Objective(teacher, DistillArgs()).loss(ce, logits, x)
    wrapped = Objective(_DictOut(teacher), DistillArgs()).loss(ce, logits, x)
    assert torch.equal(plain["loss"], wrapped["loss"])


def test_prior_penalty_is_the_mixture_log_likelihood_of_the_kept_weights_only():
    model = _linear()
    weights = compressible_weights(model)
    mask = torch.rand(model[0].weight.shape, generator=torch.Generator().manual_seed(2)) > 0.3
    apply_mask(weights[0], mask)
    prior = MixturePrior(weights, components=5, zero_share=0.6)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([-0.3, -0.1, 0.2, 0.4]))
        prior.log_var.copy_(torch.log(torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05])))
        prior.share_logits.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    kept = torch.cat([model[0].weight[mask], model[2].weight.reshape(-1)])
    shares = torch.cat([torch.tensor([0.6]), 0.4 * torch.softmax(torch.tensor([0.1, -0.2, 0.3, 0.0]), 0)])
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=shares),
        torch.distributions.Normal(torch.tensor([0.0, -0.3, -0.1, 0.2, 0.4]),
                                   torch.tensor([0.01, 0.02, 0.03, 0.04, 0.05]).sqrt()))
    assert torch.allclose(prior.penalty(), -reference.log_prob(kept.detach()).mean(), atol=1e-5)
    prior.penalty().backward()  # gradients reach the kept weights and the mixture
    original = model[0].parametrizations.weight.original
    assert original.grad is not None and torch.count_nonzero(original.grad[~mask]) == 0
    assert prior.means.grad is not None and prior.log_var.grad is not None


def test_the_zero_component_claims_small_weights_and_finish_prunes_exactly_those():
    model = _linear()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([0.5, -0.5, 1e-4, 0.3, -2e-4, 0.7]).repeat(5, 1))
    weights = compressible_weights(model)
    prior = MixturePrior(weights[:1], components=3, zero_share=0.5)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([-0.5, 0.5]))
        prior.log_var.fill_(math.log(0.01))
    objective = Objective(prior=prior, prior_args=PriorArgs())
    expected = (model[0].weight.abs() > 0.01)
    info = objective.finish()
    assert torch.equal(get_mask(model[0]), expected)
    assert info["prior"]["pruned"] == {weights[0].name: 10}
    assert info["prior"]["means"][0] == 0.0 and len(info["prior"]["shares"]) == 3


@pytest.mark.parametrize("table, key", [
    ({"distill": {"temperature": 0}}, "passes.train.distill.temperature"),
    ({"distill": {"weight": 1.5}}, "passes.train.distill.weight"),
    ({"distill": {"teacher": ""}}, "passes.train.distill.teacher"),
    ({"prior": {"components": 1}}, "passes.train.prior.components"),
    ({"prior": {"zero_share": 1.0}}, "passes.train.prior.zero_share"),
    ({"prior": {"learning_rate": 0}}, "passes.train.prior.learning_rate"),
    ({"prior": {"colour": 1}}, "passes.train.prior.colour"),
    ({"baseline": True, "prior": {}}, "passes.train.prior"),
    ({"teachers": 2}, "passes.train.teachers"),
    ({"baseline": True, "teachers": 0}, "passes.train.teachers"),
    ({"baseline": True, "teachers": 17}, "passes.train.teachers"),
])
def test_bad_distill_and_prior_tables_name_their_key(table, key):
    with pytest.raises(ConfigError) as e:
        parse_train_args(table)
    assert e.value.key == key


@pytest.fixture(scope="module")
def data():
    dm = MaseDataModule("fashion_mnist", batch_size=64, train_limit=2000, test_limit=500)
    dm.setup()
    return dm


def _graph(data, name="lenet300"):
    torch.manual_seed(0)
    ctx = PassContext(data_module=data, model_name=name, dataset_info=data.info, progress_bar=False,
                      training=TrainSettings(accelerator="cpu"))
    return MaseGraph(get_model(name, data.info), context=ctx)


def test_distilling_from_the_baseline_needs_a_baseline_step(data):
    graph = _graph(data)
    with pytest.raises(ConfigError, match="baseline = true") as e:
        PASSES["train"](graph, {"distill": {}})
    assert e.value.key == "passes.train.distill.teacher"


def _fresh_data() -> MaseDataModule:
    dm = MaseDataModule("fashion_mnist", batch_size=64, train_limit=2000, test_limit=500)
    dm.setup()
    return dm


def test_teachers_train_beside_the_baseline_and_teach_as_the_mean_of_their_logits():
    alone, _ = PASSES["train"](_graph(_fresh_data()), {"baseline": True, "training": {"max_epochs": 1}})
    data = _fresh_data()
    graph, info = PASSES["train"](_graph(data), {"baseline": True, "teachers": 3, "training": {"max_epochs": 1}})
    for k, v in alone.model.state_dict().items():  # the teachers leave the baseline as it was
        assert torch.equal(v, graph.model.state_dict()[k]), k
    teacher = graph.context.teacher
    assert isinstance(teacher, Ensemble) and len(teacher.members) == 3 and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    first = [m.state_dict()["fc1.weight"] for m in teacher.members]
    assert torch.equal(first[0], graph.model.state_dict()["fc1.weight"])  # the baseline is the first member
    assert not torch.equal(first[1], first[0]) and not torch.equal(first[2], first[1])  # trained from new starts
    # oracle: each member's logits, averaged, against the labels of the test split
    x, y = map(torch.cat, zip(*data.test_dataloader()))
    with torch.no_grad():
        logits = torch.stack([m(x) for m in teacher.members])
        assert torch.allclose(teacher(x), logits.mean(dim=0), atol=1e-6)
    accuracies = [float((lg.argmax(1) == y).float().mean()) for lg in (*logits, logits.mean(dim=0))]
    figures = info["teachers"]
    assert figures["count"] == 3 and figures["baseline"] == pytest.approx(info["test_acc"])
    assert [figures["baseline"], figures["teacher2"], figures["teacher3"], figures["together"]] == \
        pytest.approx(accuracies, abs=1e-6)

    loaded = _graph(data)
    loaded.context.loaded_from = "best.ckpt"  # a loaded baseline is only evaluated; its teachers still train
    loaded, info = PASSES["train"](loaded, {"baseline": True, "teachers": 2, "training": {"max_epochs": 1}})
    assert info["skipped"] and len(loaded.context.teacher.members) == 2 and "teacher2" in info["teachers"]


def test_a_fresh_copy_is_a_new_start_of_the_same_model_from_its_seed(caplog):
    class Scaled(nn.Module):  # a parameter with no reset_parameters keeps its trained value
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.scale = nn.Parameter(torch.tensor(2.5))

        def forward(self, x):
            return self.fc(x) * self.scale

    model = Scaled()
    state = torch.get_rng_state()
    a, b, c = fresh_copy(model, 7), fresh_copy(model, 7), fresh_copy(model, 8)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(a.fc.weight, c.fc.weight)
    assert not torch.equal(a.fc.weight, model.fc.weight) and a.fc.weight is not model.fc.weight
    torch.manual_seed(7)
    assert torch.equal(a.fc.weight, nn.Linear(4, 3).weight)  # what the layer's own initialisation gives
    assert a.scale.item() == 2.5 and "keeps the trained values of (the model)" in caplog.text


def _distortion(graph) -> float:
    """Mean squared distance of the kept weights to their nearest of 8 k-means centroids, over their variance."""
    kept = torch.cat([w.value()[get_mask(w.module, w.tensor_name)] for w in graph.weights()])
    result = kmeans_1d(kept, 8, "linear", 300, 1e-4)
    return float(((kept - result.centroids[result.labels].to(kept.dtype)) ** 2).mean() / kept.var())


def _masks_only_shrank(graph, masks) -> None:
    """Masks only shrink, and what they drop is exactly zero."""
    for w in graph.weights():
        now = get_mask(w.module, w.tensor_name)
        assert torch.equal(now & ~masks[w.name], torch.zeros_like(now)), w.name
        assert torch.count_nonzero(w.value()[~now]) == 0, w.name


def test_a_run_distills_and_trains_under_the_prior_keeping_masks(data):
    graph = _graph(data)
    graph, base = PASSES["train"](graph, {"baseline": True, "training": {"max_epochs": 1}})
    teacher = graph.context.teacher
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.8}})
    masks = {w.name: get_mask(w.module, w.tensor_name).clone() for w in graph.weights()}
    before = {w.name: w.value().clone() for w in graph.weights()}
    start = _distortion(graph)
    graph, info = PASSES["train"](graph, {"training": {"max_epochs": 2, "learning_rate": 1e-3},
                                          "distill": {"weight": 0.5}, "prior": {"weight": 1.0, "components": 8}})
    _masks_only_shrank(graph, masks)
    assert all(not torch.equal(w.value(), before[w.name]) for w in graph.weights())
    assert sum(info["prior"]["pruned"].values()) > 0  # the zero component claimed some kept weights
    assert info["test_acc"] > 0.6
    assert _distortion(graph) < 0.7 * start, (start, _distortion(graph))  # the kept weights are more clustered
    for k, v in teacher.state_dict().items():  # the teacher did not train
        assert torch.equal(v, graph.context.teacher.state_dict()[k])


class _Counted(nn.Module):
    """A teacher that counts the images it has seen."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.inner(x)


def test_the_teacher_runs_once_per_training_image_and_trains_the_student_as_if_on_every_batch():
    torch.manual_seed(1)
    teacher = get_model("lenet300", MaseDataModule("fashion_mnist").info).eval()
    s = TrainSettings(accelerator="cpu", max_epochs=2, learning_rate=1e-3)
    students, seen = [], []
    for cached in (True, False):
        dm = MaseDataModule("fashion_mnist", batch_size=64, train_limit=1000, test_limit=200, seed=3)
        dm.setup()
        data = dm if cached else DataLoaders(dm.train_dataloader(), dm.val_dataloader())  # no train_targets
        torch.manual_seed(0)
        student, counted = get_model("lenet300", dm.info), _Counted(teacher)
        fit(student, data, s, progress=False, objective=Objective(counted, DistillArgs(weight=0.7)))
        students.append(student.state_dict())
        seen.append(counted.seen)
        assert dm.train_set.targets is None  # detached after training
    assert seen == [900, 2 * 900]  # 900 training images after the validation split
    for k, v in students[0].items():
        assert torch.allclose(v, students[1][k], atol=1e-5), k


def test_augmented_data_gets_no_reused_teacher_outputs():
    dm = MaseDataModule("fashion_mnist", batch_size=64, train_limit=300, augment=True)
    with dm.train_targets(lambda x: x.flatten(1)[:, :3]) as reused:
        assert not reused and len(next(iter(dm.train_dataloader()))) == 2
    dm.augment = False
    with dm.train_targets(lambda x: x.flatten(1)[:, :3]) as reused:
        x, y, t = next(iter(dm.train_dataloader()))
        assert reused and torch.equal(t, x.flatten(1)[:, :3])  # each batch's targets are its own images'
    assert len(next(iter(dm.train_dataloader()))) == 2


def test_retrained_sensitivity_recovers_accuracy_and_leaves_the_model_as_it_was(data):
    graph = _graph(data)
    graph, _ = PASSES["train"](graph, {"training": {"max_epochs": 1}})
    state = {k: v.clone() for k, v in graph.model.state_dict().items()}
    fc1 = [w for w in graph.weights() if w.name == "fc1"]
    kwargs = dict(sparsities=[0.98], samples=500, split="val")
    one_shot = measure_sensitivity(graph, fc1, **kwargs).layers[0].sparsity[0][1]
    recovered = measure_sensitivity(graph, fc1, retrain_steps=15, **kwargs).layers[0].sparsity[0][1]
    assert recovered > one_shot + 0.02, (one_shot, recovered)
    for k, v in graph.model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("name", ["ResBlockNet", "LSTMNet"])
def test_the_prior_trains_models_we_did_not_write(name):
    """Soft weight-sharing on user models (a residual CNN, a two-layer LSTM) through the train pass on the
    user's own DataLoaders: every compressed weight is under the prior, masks only shrink, and the kept
    weights end more clustered."""
    torch.manual_seed(0)
    model = ZOO[name]()
    x = model.example(256)
    with torch.no_grad():
        y = model(x).argmax(1)
    data = TensorDataset(x, y)
    graph = MaseGraph(model, dummy_input=x[:2])
    graph.context.data_module = DataLoaders(DataLoader(data, batch_size=32, shuffle=True),
                                            DataLoader(data, batch_size=128))
    graph.context.training = TrainSettings(max_epochs=4, learning_rate=3e-3, accelerator="cpu")
    graph.context.progress_bar = False
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5}})
    masks = {w.name: get_mask(w.module, w.tensor_name).clone() for w in graph.weights()}
    start = _distortion(graph)
    graph, info = PASSES["train"](graph, {"prior": {"weight": 1.0, "components": 8}})
    _masks_only_shrank(graph, masks)
    assert sorted(info["prior"]["pruned"]) <= sorted(masks) and len(info["prior"]["means"]) == 8
    assert _distortion(graph) < 0.8 * start, (start, _distortion(graph))


def test_the_prior_trains_the_resnet18_config_on_a_small_slice():
    """The ResNet-18 Deep Compression config's model and data, with a prior step on 256 images."""
    config = load_config(ROOT / "configs/examples/resnet18_colored_fashion_mnist_deep_compression.toml")
    data = MaseDataModule(config.dataset, batch_size=64, train_limit=256, test_limit=64)
    data.setup()
    torch.manual_seed(0)
    ctx = PassContext(data_module=data, model_name=config.model, dataset_info=data.info, progress_bar=False,
                      training=TrainSettings(accelerator="cpu", max_epochs=1))
    graph = MaseGraph(get_model(config.model, data.info), context=ctx)
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.8}})
    masks = {w.name: get_mask(w.module, w.tensor_name).clone() for w in graph.weights()}
    before = {w.name: w.value().clone() for w in graph.weights()}
    graph, info = PASSES["train"](graph, {"prior": {"weight": 1.0, "components": 4}, "test": False})
    _masks_only_shrank(graph, masks)
    assert len(info["prior"]["means"]) == 4 and all(math.isfinite(m) for m in info["prior"]["means"])
    assert all(not torch.equal(w.value(), before[w.name]) for w in graph.weights())
