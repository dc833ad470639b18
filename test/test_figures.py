"""The README figures (imgs/draw_figures.py) are drawn from the real registries and configs: they cannot drift."""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from machop.passes.graph.transforms.prune import ACTIVATION_METHODS, WEIGHT_METHODS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location("draw_figures", ROOT / "imgs" / "draw_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _png(path: Path) -> None:
    assert path.is_file(), path
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def test_weight_panels_are_the_registry(figures, tmp_path):
    drawn = figures.draw_weight_wise(tmp_path)
    assert drawn == [(s, g, m) for (s, g), methods in WEIGHT_METHODS.items() for m in methods]
    _png(tmp_path / "weight_wise.png")


def test_activation_panels_are_the_registry(figures, tmp_path):
    drawn = figures.draw_activation_pruning(tmp_path)
    assert drawn == [(s, g, m) for (s, g), methods in ACTIVATION_METHODS.items() for m in methods]
    _png(tmp_path / "activation_pruning.png")


def test_pipeline_boxes_are_the_config_tables(figures, tmp_path):
    config = tmp_path / "dc.toml"
    config.write_text(
        'model = "lenet5"\ndataset = "fashion_mnist"\n'
        '[passes.prune.weight]\nsparsity = 0.9\n'
        '[passes.retrain]\n'
        '[passes.quantize]\nby = "type"\n[passes.quantize.linear.config]\nname = "kmeans"\n'
        '[passes.finetune]\npass = "train"\n'
        '[passes.huffman_encode]\n[passes.huffman_decode]\n[passes.test]\n'
    )
    labels = figures.draw_pipeline(tmp_path, config)
    assert labels == ["prune", "retrain", "quantize", "finetune", "huffman_encode", "huffman_decode", "test"]
    _png(tmp_path / "overall_pipeline.png")
    steps, _ = figures.pipeline_steps(config)
    assert [name for _, name, _ in steps][3] == "train"  # the `pass` key names the pass


def test_pipeline_draws_the_shipped_config(figures, tmp_path):
    if not figures.DEFAULT_CONFIG.is_file():
        pytest.skip("the shipped Deep Compression config is not there yet")
    with figures.DEFAULT_CONFIG.open("rb") as f:
        tables = list(tomllib.load(f)["passes"])
    assert figures.draw_pipeline(tmp_path) == tables


def test_pipeline_without_config_falls_back(figures, tmp_path):
    labels = figures.draw_pipeline(tmp_path, tmp_path / "missing.toml")
    assert labels == [label for label, _, _ in figures.FALLBACK_STEPS]
    _png(tmp_path / "overall_pipeline.png")


def test_results_figure(figures, tmp_path):
    assert figures.draw_results(tmp_path, tmp_path / "missing.json") is None
    assert not (tmp_path / "results_compression.png").exists()
    stages = [
        {"stage": "dense", "test_acc": 0.9, "nonzero_weights": 1000, "bits_per_weight": 32.0, "size_bytes": 4000,
         "ratio": 1.0},
        {"stage": "pruned", "test_acc": 0.89, "nonzero_weights": 100, "bits_per_weight": 32.0, "size_bytes": 800,
         "ratio": 5.0},
        {"stage": "huffman", "test_acc": None, "ratio": 30.0},  # missing fields must not break the figure
    ]
    results = tmp_path / "RESULTS.json"
    results.write_text(json.dumps({"models": {"lenet300": {"stages": stages}, "lenet5": {"stages": stages[:2]}},
                                   "machine": "test", "command": "pytest"}))
    assert figures.draw_results(tmp_path, results) == ["lenet300", "lenet5"]
    _png(tmp_path / "results_compression.png")
