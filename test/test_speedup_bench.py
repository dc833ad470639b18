"""Smoke test of bench/speedup_bench.py: one model, one sparsity, one round, a tiny data slice."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load():
    sys.path.insert(0, str(BENCH))  # the script imports bench/timing.py as `timing`
    spec = importlib.util.spec_from_file_location("speedup_bench", BENCH / "speedup_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run(tmp_path, capsys):
    bench = _load()
    has_tp = importlib.util.find_spec("torch_pruning") is not None
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    results = bench.main(["--quick", "--models", "vgg7", "--sparsities", "0.5", "--rounds", "1", "--train-images",
                          "16", "--test-images", "16", "--train-batch", "16", "--batch", "2", "--threads", "1",
                          "--warmup", "0", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    entry = results["models"][0]["sparsities"][0]
    machop = entry["machop"]
    # the shrunk model computes what the masked model computed
    assert machop["max_rel_diff_shrunk_vs_masked"] <= 1e-5
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
