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


def _drawn(monkeypatch) -> list:
    """The figures `machop.figures` closes, kept open for the test to read."""
    import machop.figures as run_figures

    kept: list = []
    monkeypatch.setattr(run_figures.plt, "close", kept.append)
    return kept


def test_sensitivity_axis_follows_the_curves(tmp_path, monkeypatch):
    from machop.figures import plot_sensitivity

    kept = _drawn(monkeypatch)
    sens = {"baseline_acc": 0.91, "samples": 500, "split": "val", "layers": [
        {"name": "fc1", "weights": 100, "nonzero": 100, "sparsity": [[0.5, 0.905], [0.9, 0.88]], "bits": [[2, 0.87, 1.9]]},
        {"name": "fc2", "weights": 10, "nonzero": 10, "sparsity": [[0.5, 0.909]], "bits": []}]}
    _png(plot_sensitivity(sens, tmp_path / "s.png"))
    panels = [[0.905, 0.88, 0.909], [0.87]]  # sparsity, bits: each panel's accuracies (and the baseline)
    for ax, values in zip(kept[0].axes, panels):
        lo, hi = ax.get_ylim()
        assert lo < min(values) and hi > 0.91 and hi - lo < 0.1  # not 0..1: a 3-point drop fills the axis


def test_weight_histogram_draws_every_quantized_layer_with_its_own_label(tmp_path, monkeypatch):
    import torch

    from machop.figures import plot_weight_histogram

    kept = _drawn(monkeypatch)
    g = torch.Generator().manual_seed(0)
    layers = [{"layer": f"l{i}", "before": torch.randn(50 * (i + 1), generator=g),
               "after": torch.randn(50 * (i + 1), generator=g).round(), "centroids": torch.arange(-2.0, 3.0)}
              for i in range(3)]
    _png(plot_weight_histogram(layers, tmp_path / "h.png"))
    fig = kept[0]
    assert len(fig.axes) == 3
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert labels == [f"l{i}: {int((layers[i]['after'] != 0).sum()):,} non-zero, 5 centroids" for i in range(3)]
    boxes = [ax.get_tightbbox(fig.canvas.get_renderer()) for ax in fig.axes]
    assert all(a.y0 >= b.y1 - 1 for a, b in zip(boxes, boxes[1:]))  # panels (titles included) do not overlap


def test_accuracy_against_size_labels_each_step(tmp_path, monkeypatch):
    from machop.figures import plot_accuracy_vs_size

    kept = _drawn(monkeypatch)
    rows = [{"step": s, "test_acc": a, "size_bytes": b} for s, a, b in (
        ("baseline", 0.9, 4000), ("prune", 0.85, 900), ("quantize", None, 300), ("huffman", 0.86, 200),
        ("test", 0.86, 200))]
    _png(plot_accuracy_vs_size(rows, 4000, 0.9, tmp_path / "a.png"))
    ax = kept[0].axes[0]
    assert [t.get_text() for t in ax.texts] == ["baseline", "prune", "huffman, test"]
    assert ax.get_xscale() == "log"
