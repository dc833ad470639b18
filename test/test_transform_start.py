"""The seed's ``[passes.retrain] load_name``: the model a whole run starts from, loaded before the first pass."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from machop.actions.transform import plan, starting_point
from machop.cli import main
from machop.config import ConfigError, load_config
from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, load_graph
from machop.models import get_model
from machop.nn import get_mask
from machop.passes.graph import PASSES

SEED_STYLE = """model = "lenet5"
[passes.prune.weight]
sparsity = 0.5
scope = "local"
granularity = "elementwise"
method = "l1-norm"
[passes.retrain]
load_name = "{load}"
load_type = "pl"
project = "lenet5_retrain"
[passes.retrain.training]
max_epochs = 1
"""


def lightning_checkpoint(path, seed: int) -> dict[str, torch.Tensor]:
    """A Lightning-style checkpoint of a LeNet-5 initialised from ``seed``; returns its state dict."""
    torch.manual_seed(seed)
    state = get_model("lenet5", get_dataset_info("fashion_mnist")).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, path)
    return state


def test_a_retrain_tables_checkpoint_is_loaded_before_the_first_prune(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    state = lightning_checkpoint(tmp_path / "start.ckpt", seed=123)
    (tmp_path / "seed.toml").write_text(SEED_STYLE.format(load="start.ckpt"))
    code = main(["transform", "--config", "seed.toml", "--project-dir", "out", "--limit-train-batches", "2",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "out" / "default").glob("transform_*"))
    pruned = load_graph(run / "checkpoints" / "01_prune.mz")
    for name in ("conv1", "conv2", "fc1", "fc2"):  # masks of the *loaded* weights, as torch prunes them
        w = state[f"{name}.weight"]
        oracle = torch_prune.L1Unstructured(0.5).compute_mask(w, torch.ones_like(w)).bool()
        assert torch.equal(get_mask(pruned.model.get_submodule(name)), oracle), name
    assert (run / "checkpoints" / "lenet5_retrain" / "best.ckpt").is_file()  # the table's project names the folder
    effective = load_config(run / "config.toml")  # the run's config.toml runs again: one starting point
    assert effective.load_name == str(tmp_path / "start.ckpt") and "load_name" not in effective.passes["retrain"]
    assert starting_point(effective, plan(effective), str(run / "config.toml")) == effective


def test_a_relative_checkpoint_is_found_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    lightning_checkpoint(tmp_path / "cfg" / "start.ckpt", seed=1)
    (tmp_path / "cfg" / "seed.toml").write_text(SEED_STYLE.format(load="start.ckpt"))
    monkeypatch.chdir(tmp_path)
    config = load_config("cfg/seed.toml")
    start = starting_point(config, plan(config), "cfg/seed.toml")
    assert (start.load_name, start.load_type) == (str(tmp_path / "cfg" / "start.ckpt"), "pl")


def test_missing_names_both_places_and_two_starting_points_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "seed.toml").write_text(SEED_STYLE.format(load="gone.ckpt"))
    config = load_config("cfg/seed.toml")
    with pytest.raises(ConfigError) as err:
        starting_point(config, plan(config), "cfg/seed.toml")
    assert err.value.key == "passes.retrain.load_name"
    assert f"{tmp_path / 'gone.ckpt'} nor {tmp_path / 'cfg' / 'gone.ckpt'}" in err.value.message
    lightning_checkpoint(tmp_path / "start.ckpt", seed=1)
    (tmp_path / "two.toml").write_text('load_name = "start.ckpt"\nload_type = "pl"\n' + SEED_STYLE.format(load="start.ckpt"))
    config = load_config("two.toml")
    with pytest.raises(ConfigError, match="two starting points"):
        starting_point(config, plan(config), "two.toml")


@pytest.mark.parametrize("none", ["NA", "None", "none"])
def test_the_seeds_spellings_of_no_checkpoint(tmp_path, none):
    (tmp_path / "seed.toml").write_text(SEED_STYLE.format(load=none))
    config = load_config(tmp_path / "seed.toml")
    assert starting_point(config, plan(config), str(tmp_path / "seed.toml")).load_name is None


def test_the_pass_alone_refuses_to_load_under_masks(tmp_path):
    lightning_checkpoint(tmp_path / "start.ckpt", seed=1)
    graph = MaseGraph(get_model("lenet5", get_dataset_info("fashion_mnist")))
    graph.context.data_module = object()  # not reached: the refusal comes first
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.5}})
    with pytest.raises(ConfigError, match="already has masks or codebooks"):
        PASSES["train"](graph, {"load_name": str(tmp_path / "start.ckpt"), "load_type": "pl"})


def test_load_on_the_command_line_wins_over_the_tables(tmp_path, monkeypatch):
    """defaults < file < command line: --load replaces the table's load_name (no "two starting points")."""
    monkeypatch.chdir(tmp_path)
    lightning_checkpoint(tmp_path / "table.ckpt", seed=1)
    (tmp_path / "seed.toml").write_text(SEED_STYLE.format(load="table.ckpt"))
    config = load_config("seed.toml", {"load_name": "given.ckpt", "load_type": "pl"})
    start = starting_point(config, plan(config), "seed.toml", load_on_command_line=True)
    assert (start.load_name, start.load_type) == ("given.ckpt", "pl")
    assert "load_name" not in start.passes["retrain"] and "load_type" not in start.passes["retrain"]
    with pytest.raises(ConfigError, match="two starting points"):  # both in the file: still ambiguous
        starting_point(config, plan(config), "seed.toml")


def test_the_tables_load_type_is_checked_against_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lightning_checkpoint(tmp_path / "start.ckpt", seed=1)
    (tmp_path / "seed.toml").write_text(SEED_STYLE.format(load="start.ckpt").replace('"pl"', '"mz"'))
    config = load_config("seed.toml")
    with pytest.raises(ConfigError) as err:
        starting_point(config, plan(config), "seed.toml")
    assert err.value.key == "passes.retrain.load_type" and "is a Lightning checkpoint" in err.value.message
