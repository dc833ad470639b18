"""Every row of a transform's report shows the accuracy of that step's own model, or none; never a stale one."""

from __future__ import annotations

import json

import pytest

from machop.actions.common import data_module
from machop.cli import main
from machop.config import load_config
from machop.ir import load_graph
from machop.models import get_model
from machop.report import summary_rows
from machop.training import evaluate

from test_transform_start import lightning_checkpoint

CONFIG = """model = "lenet5"
load_name = "start.ckpt"
load_type = "pl"
limit_test_batches = 3
[passes.prune.weight]
sparsity = 0.6
[passes.add_pruning_metadata]
[passes.quantize]
by = "type"
evaluate = false
[passes.quantize.default.config]
name = "integer"
data_in_width = 8
data_in_frac_width = 4
weight_width = 4
weight_frac_width = 3
bias_width = 8
bias_frac_width = 4
[passes.retrain]
pass = "train"
evaluate = false
[passes.retrain.training]
max_epochs = 1
[passes.test]
"""


def test_each_row_is_its_own_models_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    state = lightning_checkpoint(tmp_path / "start.ckpt", seed=5)
    (tmp_path / "run.toml").write_text(CONFIG)
    code = main(["transform", "--config", "run.toml", "--project-dir", "out", "--limit-train-batches", "2",
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    run = next((tmp_path / "out" / "default").glob("transform_*"))
    report = json.loads((run / "report.json").read_text())
    config = load_config(run / "config.toml")
    dm = data_module(config)

    def acc(checkpoint) -> float:  # measured apart from the run, on the same test batches
        return evaluate(load_graph(checkpoint).model, dm, config.training, progress=False)["test_acc"]

    rows = {r["step"]: r["test_acc"] for r in summary_rows(report)}
    start = get_model("lenet5", dm.info)
    start.load_state_dict(state)
    assert rows["(start)"] == pytest.approx(evaluate(start, dm, config.training, progress=False)["test_acc"])
    checkpoints = {s["label"]: s.get("checkpoint") for s in report["steps"]}
    assert rows["prune"] == pytest.approx(acc(checkpoints["prune"]))
    assert rows["prune"] != rows["(start)"]  # 60% of the weights gone: a different model, a different figure
    assert rows["add_pruning_metadata"] == rows["prune"]  # the model did not change
    assert rows["quantize"] is None and rows["retrain"] is None  # evaluate = false: no figure, not the last one
    assert "test_acc" not in report["steps"][3]["info"]  # the train step skipped its own test
    assert rows["test"] == pytest.approx(acc(checkpoints["retrain"]))
    assert [line.split()[1] for line in printed.splitlines() if line.strip().startswith(("quantize", "retrain"))] \
        == ["–", "–"]


def test_evaluate_must_be_true_or_false(tmp_path):
    (tmp_path / "bad.toml").write_text('[passes.prune]\nevaluate = "no"\n[passes.prune.weight]\nsparsity = 0.5\n')
    assert main(["transform", "--config", str(tmp_path / "bad.toml")]) == 2


SHRINK_RUN = """model = "lenet5"
dataset = "fashion_mnist"
batch_size = 64
max_epochs = 1
seed = 0
[passes.baseline]
pass = "train"
baseline = true
[passes.prune_channels]
pass = "prune"
[passes.prune_channels.weight]
sparsity = 0.5
granularity = "channelwise"
method = "l1-norm-single"
[passes.shrink]
[passes.prune.weight]
sparsity = 0.7
[passes.quantize]
by = "type"
[passes.quantize.default.config]
name = "kmeans"
weight_bits = 4
[passes.huffman]
is_huffman = true
"""


def test_report_md_after_shrink_has_one_dense_size_a_layer_table_and_the_shrink_figures(tmp_path, monkeypatch, capsys):
    import torch

    import machop
    from machop.datasets import get_dataset_info

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text(SHRINK_RUN)
    code = main(["transform", "--config", "run.toml", "--project-dir", "out", "--train-limit", "512",
                 "--test-limit", "128", "--limit-train-batches", "2", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    run = next((tmp_path / "out" / "default").glob("transform_*"))
    md = (run / "report.md").read_text()
    file_bytes = (run / "model.mchz").stat().st_size
    dense = 4 * sum(p.numel() for p in get_model("lenet5", get_dataset_info("fashion_mnist")).parameters())
    ratio = f"{dense / file_bytes:.1f}x"
    # one meaning of dense size: the summary's last ratio and the Huffman section's both against the unshrunk model
    huffman = md[md.index("## huffman"):]
    assert f"{file_bytes:,} bytes: {ratio} smaller than the original dense fp32 model ({dense:,} bytes)" in huffman
    assert md.splitlines()[[i for i, line in enumerate(md.splitlines()) if line.startswith("| huffman")][0]] \
        .split("|")[8].strip() == ratio
    # the per-layer table: every layer with shape, kmeans 4-bit, bytes summing to the file on disk
    table = md[md.index("## Final model, per layer"):md.index("## baseline")]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    layers = {r[0].strip(): r for r in rows}
    assert set(layers) >= {"conv1", "conv2", "fc1", "fc2"}
    assert layers["fc1"][2].strip() == "250×400" and layers["fc1"][4].strip() == "kmeans 4-bit"
    assert sum(int(r[6].strip().strip("*").replace(",", "")) for r in rows[:-1]) == file_bytes
    assert layers["**total**"][6].strip() == f"**{file_bytes:,}**"
    # the shrink step: parameters, MACs and a measured latency; no empty "activation: None" lines anywhere
    shrink = md[md.index("## shrink"):md.index("## prune (")]
    assert "- parameters: 431,080 → 109,295" in shrink and "MACs per sample" in shrink and "- latency:" in shrink
    assert "None" not in md
    report = json.loads((run / "report.json").read_text())
    latency = next(s for s in report["steps"] if s["pass"] == "shrink")["info"]["latency"]
    assert all(ms > 0 for ms in latency["ms"]) and latency["runs"] >= 3
    for name in ("accuracy_vs_size", "weight_histogram", "sparsity_per_layer"):
        assert (run / f"{name}.png").is_file() and f"({name}.png)" in md
    # the plain model of the run's file is LeNet5, shrunk, with the decoded model's outputs
    decoded = machop.load_compressed(run / "model.mchz").eval()
    plain = machop.plain_model(decoded).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert type(plain).__name__ == "LeNet5" and torch.equal(plain(x), decoded(x))
