"""The train pass: trains through masks (pruned weights stay exactly zero), reports metrics; DDP on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from machop.config import TrainSettings
from machop.config import ConfigError
from machop.datasets import MaseDataModule
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.passes.graph import PASSES
from machop.nn import apply_mask, get_mask
from machop.passes.graph.transforms.train import parse_train_args

ROOT = Path(__file__).resolve().parents[5]


@pytest.fixture(scope="module")
def data():
    dm = MaseDataModule("fashion_mnist", batch_size=64, train_limit=3000, test_limit=1000)
    dm.setup()
    return dm


def _graph(data, name="lenet5"):
    torch.manual_seed(0)
    ctx = PassContext(data_module=data, model_name=name, dataset_info=data.info, progress_bar=False, training=TrainSettings(accelerator="cpu"))
    return MaseGraph(get_model(name, data.info), context=ctx)


def test_train_pass_learns_and_keeps_pruned_weights_zero(data):
    graph = _graph(data)
    masks = {}
    for node in graph.layer_nodes():
        module = graph.module_of(node)
        mask = torch.rand(module.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
        apply_mask(module, mask)
        masks[node.target] = mask
    before = {k: graph.model.get_submodule(k).parametrizations.weight.original.detach().clone() for k in masks}
    graph, info = PASSES["retrain"](graph, {"training": {"max_epochs": 2, "learning_rate": 2e-3}})
    assert info["epochs"] == 2
    assert info["test_acc"] > 0.6, info  # 3000 images, 2 epochs, half the weights: far above chance (0.1)
    for name, mask in masks.items():
        module = graph.model.get_submodule(name)
        assert torch.equal(get_mask(module), mask)
        assert torch.count_nonzero(module.weight[~mask]) == 0
        assert not torch.equal(module.parametrizations.weight.original, before[name])  # it did train


def test_test_pass_reports_accuracy(data):
    graph = _graph(data, "lenet300")
    _, info = PASSES["test"](graph, {})
    assert set(info) == {"test_acc", "test_loss"}
    assert 0.0 <= info["test_acc"] <= 1.0


def test_train_pass_validates_before_touching_the_graph(data):
    graph = _graph(data)
    state = {k: v.clone() for k, v in graph.model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"passes\.train\.trainer\.strategy: must be one of"):
        PASSES["train"](graph, {"trainer": {"strategy": "horovod"}})
    assert all(torch.equal(v, graph.model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ConfigError, match=r"passes\.finetune\.training\.max_epochs: must be in \[1"):
        parse_train_args({"training": {"max_epochs": 0}}, "passes.finetune")


def test_pass_needs_data():
    from machop.datasets import get_dataset_info

    graph = MaseGraph(get_model("lenet300", get_dataset_info("fashion_mnist")))
    with pytest.raises(RuntimeError, match="needs data"):
        PASSES["train"](graph, {})


def test_ddp_on_cpu_with_two_processes(tmp_path):
    """Lightning's own DDP strategy, 2 CPU processes (gloo), through `ch train`."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run(
        [sys.executable, str(ROOT / "ch"), "train", "--model", "lenet300", "--dataset", "fashion_mnist",
         "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--max-epochs", "1",
         "--limit-train-batches", "20", "--project-dir", str(tmp_path), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "2 process(es)" in out.stdout
    ckpts = list(tmp_path.rglob("best.ckpt"))
    assert len(ckpts) == 1
    acc = float(out.stdout.split("val_acc ")[1].split()[0])
    assert acc > 0.6  # 20 batches of 2 x 128 images already learn
