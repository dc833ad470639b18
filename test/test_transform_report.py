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
