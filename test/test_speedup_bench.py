"""Smoke test of bench/speedup_bench.py: one model, one sparsity, one round, a tiny data slice."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from machop.models import get_model


def test_quick_run(tmp_path, capsys, speedup_bench):
    bench = speedup_bench
    has_tp = importlib.util.find_spec("torch_pruning") is not None
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    results = bench.main(["--quick", "--models", "vgg7", "--sparsities", "0.5", "--rounds", "1", "--train-images",
                          "16", "--test-images", "16", "--train-batch", "16", "--batch", "2", "--threads", "1",
                          "--warmup", "0", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    entry = results["models"][0]["sparsities"][0]
    machop = entry["machop"]
    # the exact shrink computes what the masked model computed; the timed one (borders "bias") has no carriers
    assert machop["exact"]["max_rel_diff"] <= 1e-5 and machop["exact"]["carriers"]
    assert machop["borders"] == "bias" and machop["carriers"] == [] and machop["approximate"]
    # and is smaller: about half the channels of every layer but the output layer
    dense = results["models"][0]["dense"]
    assert machop["params"] < 0.3 * dense["params"] and machop["macs"] < 0.3 * dense["macs"]
    assert machop["channels"]["last_layer"] == [10, 10]
    assert machop["channels"]["classifier.0"] == [1024, 512]
    rows = [line for line in printed.splitlines() if line.startswith("| vgg7 | 50% |")]
    impls = [row.split("|")[3].strip() for row in rows]
    assert impls[:2] == ["dense", "machop"]
    assert ("torch-pruning" in impls) == has_tp
    assert ("onnxruntime b2 ms" in printed) == has_ort
    if has_tp:
        # same layers, same L1 score, same count: VGG7 has no coupled channels, so both choose the same ones
        # (but for float32 near-ties at the cut, which the two norms' summation orders rank differently)
        assert all(c["same"] or c["rel_gap"] < 1e-5 for c in entry["channel_choice"]), entry["channel_choice"]
        assert entry["torch_pruning"]["channels"]["last_layer"] == [10, 10]
    saved = json.loads((tmp_path / "speedup.json").read_text())
    assert saved["models"][0]["model"] == "vgg7"
    assert "| vgg7 | 50% | machop |" in (tmp_path / "speedup.md").read_text()


def test_resnet18_machop_and_torch_pruning_remove_the_same_channels(speedup_bench):
    """Oracle: Torch-Pruning with the same grouped score picks the same channels; the shrunk models match in size."""
    pytest.importorskip("torch_pruning")
    bench = speedup_bench
    torch.manual_seed(0)
    dense = get_model("resnet18", bench.dataset_info()).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    m = bench.machop_prune(dense, "resnet18", 0.5, x)
    t = bench.torch_pruning_prune(dense, "resnet18", 0.5, x)
    assert len(m["coupled"]) == 4 and all(g["pruned"] == g["channels"] // 2 for g in m["coupled"])
    choice = bench.compare_channels(dense, m["pruned"], t["pruned"])
    assert all(c["same"] or c["rel_gap"] < 1e-5 for c in choice), [c for c in choice if not c["same"]]
    shrunk = bench.folded_copy(m["graph"])
    assert bench.removed_channels(shrunk, dense) == bench.removed_channels(t["model"], dense)
    assert bench.n_params(shrunk) == bench.n_params(t["model"])
    assert m["exact"]["max_rel_diff"] <= 1e-5 and m["shrink_info"]["kept"] == []
