"""bench/deep_compression.py's variants: each part of the shipped LeNet-5 pipeline switched on or off."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w

from machop.actions.transform import plan
from machop.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _tables(config: dict) -> list[dict]:
    return [t for step in config["passes"].values() for t in (step, step.get("gradual", {}))]


@pytest.mark.parametrize("row", ["agp", "structure", "prior", "distill", "retrain", "all"])
def test_every_ablation_row_is_a_valid_config_with_exactly_its_parts(row, deep_compression_bench, tmp_path):
    bench = deep_compression_bench
    shipped = tomllib.loads((ROOT / bench.CONFIGS["lenet5"]).read_text())
    switches = dict.fromkeys(bench.VARIANT_SWITCHES, False) | bench.ABLATION_ROWS[row]
    config = bench.variant(shipped, ratio=130, **switches)
    path = tmp_path / "variant.toml"
    path.write_text(tomli_w.dumps(config))
    plan(load_config(path))  # every key still checks

    passes = config["passes"]
    assert ("structure" in passes and "shrink" in passes) == switches["structure"]
    assert any("prior" in t for t in _tables(config)) == switches["prior"]
    assert any("distill" in t for t in _tables(config)) == switches["distill"]
    assert switches["distill"] or all(t.get("teachers", 1) == 1 for t in _tables(config))  # none to learn from
    (auto,) = [t["weight"]["auto"] for t in passes.values() if "auto" in t.get("weight", {})]
    assert auto["ratio"] == 130
    assert (auto["retrain_steps"] > 0) == switches["retrain"]
    assert passes["huffman"].get("live_maps", True) == switches["structure"]
    if row == "all":  # every part on is the shipped pipeline
        assert bench.variant(shipped, **switches) == shipped


def _run(dense: float, final: float, ratio: float) -> dict:
    return {"stages": [{"test_acc": dense, "ratio": 1.0}, {"test_acc": final, "ratio": ratio}]}


def test_seed_summary_counts_the_seeds_at_parity_and_agrees_with_each_runs_check(deep_compression_bench):
    bench = deep_compression_bench
    models = {"lenet300": _run(0.89, 0.80, 50.0),  # not a LeNet-5 seed: left out
              "lenet5": _run(0.9164, 0.9114, 111.4),  # -0.50 points: on the line, held
              "lenet5 seed 1": _run(0.9150, 0.9070, 120.0),  # -0.80 points
              "lenet5 seed 2": _run(0.9150, 0.9140, 99.0)}  # within half a point, under 100x
    text = "\n".join(bench.seeds_markdown(models))
    assert "1 of 3 seeds hold 100x within 0.5 points" in text
    assert "Δ mean -0.47 points, -0.80 to -0.10" in text
    assert "lenet300" not in text
    rows = {line.split(" | ")[0][2:]: line.endswith("| yes |") for line in text.splitlines() if "| lenet5" in line}
    assert rows == {"lenet5": True, "lenet5 seed 1": False, "lenet5 seed 2": False}
    for key, held in rows.items():  # the same test as each run's own check (ratio and points; not the dense floor)
        checks = bench.verdict("lenet5", models[key]).split("; ")[:2]
        assert held == all(c.startswith("ok") for c in checks)
    assert bench.seeds_markdown({"lenet5": models["lenet5"]}) == []  # one seed: nothing to compare


def test_rewrite_keeps_the_runs_of_results_json_and_replaces_those_run_again(deep_compression_bench, tmp_path,
                                                                              monkeypatch, capsys):
    bench = deep_compression_bench
    shipped = json.loads((ROOT / "docs" / "RESULTS.json").read_text())["models"]
    out, project = tmp_path / "docs", tmp_path / "runs"
    out.mkdir()
    project.mkdir()
    (out / "RESULTS.json").write_text(json.dumps({"models": {k: shipped[k] for k in ("lenet300", "lenet5")}}))
    again = shipped["lenet5"] | {"date": "2030-01-01"}  # lenet5 run again (a fresh machine keeps no other run)
    (project / "lenet5.json").write_text(json.dumps(again))
    (project / "lenet5_seed_1.json").write_text(json.dumps(shipped["lenet5 seed 1"]))
    monkeypatch.setattr(sys, "argv", ["deep_compression.py", "--rewrite", "--out", str(out),
                                      "--project-dir", str(project)])
    assert bench.main() == 0
    capsys.readouterr()
    written = json.loads((out / "RESULTS.json").read_text())["models"]
    assert list(written) == ["lenet300", "lenet5", "lenet5 seed 1"]
    assert written["lenet300"] == shipped["lenet300"] and written["lenet5"]["date"] == "2030-01-01"
    text = (out / "RESULTS.md").read_text()
    assert "## lenet300 (" in text and "2030-01-01" in text and "2 of 2 seeds hold" in text
