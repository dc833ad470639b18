"""bench/deep_compression.py's variants: each part of the shipped LeNet-5 pipeline switched on or off."""

from __future__ import annotations

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
    (auto,) = [t["weight"]["auto"] for t in passes.values() if "auto" in t.get("weight", {})]
    assert auto["ratio"] == 130
    assert (auto["retrain_steps"] > 0) == switches["retrain"]
    assert passes["huffman"].get("live_maps", True) == switches["structure"]
    if row == "all":  # every part on is the shipped pipeline
        assert bench.variant(shipped, **switches) == shipped
