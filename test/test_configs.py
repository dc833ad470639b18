"""Every shipped config parses, validates, and names only layers its model has."""

from __future__ import annotations

from pathlib import Path

import pytest

from machop.actions.transform import check_plan, plan, starting_point
from machop.config import load_config
from machop.datasets import get_dataset_info
from machop.ir import MaseGraph
from machop.models import get_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "examples").glob("*.toml"))


def test_the_examples_are_there():
    names = {p.name for p in CONFIGS}
    for required in ("lenet5_fashion_mnist_deep_compression.toml", "lenet300_fashion_mnist_deep_compression.toml",
                     "resnet18_colored_fashion_mnist_deep_compression.toml", "vgg_cifar10_prune_retrain.toml",
                     "prune_retrain_group3.toml", "group3.toml"):
        assert required in names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates(path):
    config = load_config(path)
    steps = plan(config)  # every [passes.*] table through its pass's validator
    assert steps
    layers = {n.name for n in MaseGraph(get_model(config.model, get_dataset_info(config.dataset))).layer_nodes()}
    for step in steps:
        if step.name != "prune":
            continue
        for kind in ("weight", "activation"):
            sub = step.table.get(kind, {})
            sparsity = sub.get("sparsity")
            named = set(sparsity) - {"default"} if isinstance(sparsity, dict) else set()
            named |= set(sub.get("exclude", []))
            assert named <= layers, f"{path.name} [{step.path}.{kind}] names {named - layers}"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_passes_the_checks_against_its_model(path, tmp_path, monkeypatch):
    """What `ch transform` checks before step 1 (names, types, granularities, pass order) holds for each shipped config.

    A starting checkpoint a train table names (group3.toml's) is put in the working directory first.
    """
    config = load_config(path)
    steps = plan(config)
    monkeypatch.chdir(tmp_path)
    for step in steps:
        if getattr(step.args, "load_name", None) is not None:
            (tmp_path / step.args.load_name).touch()
    config = starting_point(config, steps, str(path))
    check_plan(MaseGraph(get_model(config.model, get_dataset_info(config.dataset))), steps)


@pytest.mark.parametrize("name", ["lenet300", "lenet5", "resnet18_colored"])
def test_the_deep_compression_configs_choose_sparsities_and_widths_themselves(name):
    """No hand-tuned per-layer numbers: sparsities and k-means widths come from the sensitivity curves (a
    structure step removes one fraction of every hidden layer's channels, one number for the model)."""
    config = load_config(next(p for p in CONFIGS if p.name.startswith(f"{name}_") and "deep_compression" in p.name))
    steps = plan(config)
    prunes = [s for s in steps if s.name == "prune"]
    gradual = [s for s in prunes if s.args.weight.sparsity == "auto"]
    assert gradual and all(s.args.gradual is not None for s in gradual)
    assert all(isinstance(s.args.weight.sparsity, (str, float, int)) for s in prunes)  # never a per-layer table
    (quantize,) = [s for s in steps if s.name == "quantize"]
    kmeans = [c for c in [quantize.args.default, *quantize.args.rules.values()] if c is not None]
    assert kmeans and all(c.weight_bits == "auto" and c.codebook == "float16" for c in kmeans)
