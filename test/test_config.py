"""TOML → typed config: types, "NA", unknown keys, precedence."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from machop.cli import main
from machop.config import Config, ConfigError, from_dict, load_config, to_toml


@dataclass
class Inner:
    sparsity: float | dict[str, float] = 0.5
    method: Literal["l1-norm", "l2-norm"] = "l1-norm"
    exclude: list[str] = field(default_factory=list)


@dataclass
class Outer:
    weight: Inner = field(default_factory=Inner)
    name: str | None = "x"
    steps: int = 1


def test_from_dict_converts_nested_types_and_na():
    cfg = from_dict(Outer, {"weight": {"sparsity": {"default": 0.5, "fc1": 0.9}, "exclude": ["fc3"]}, "name": "NA", "steps": 3})
    assert cfg.weight.sparsity == {"default": 0.5, "fc1": 0.9}
    assert cfg.weight.exclude == ["fc3"] and cfg.name is None and cfg.steps == 3
    assert from_dict(Outer, {"weight": {"sparsity": 1}}).weight.sparsity == 1.0  # int accepted as float


@pytest.mark.parametrize("data,message", [
    ({"wieght": {}}, "p.wieght: unknown key; allowed keys: name, steps, weight"),
    ({"weight": {"method": "l3"}}, "p.weight.method: must be one of 'l1-norm', 'l2-norm', got 'l3'"),
    ({"steps": 1.5}, "p.steps: must be an integer, got 1.5"),
    ({"steps": True}, "p.steps: must be an integer, got True"),
    ({"weight": {"exclude": ["a", 3]}}, "p.weight.exclude[1]: must be a string, got 3"),
    ({"weight": {"sparsity": "half"}}, "p.weight.sparsity: must be a number or a table of a number, got 'half'"),
    ({"weight": 3}, "p.weight: must be a table, got 3"),
    ({"steps": "NA"}, 'p.steps: must be an integer, got "NA"'),
])
def test_from_dict_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        from_dict(Outer, data, "p")
    assert str(e.value) == message


def test_precedence_defaults_file_command_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('model = "lenet300"\nbatch_size = 64\nmax_epochs = 3\nload_name = "NA"\n')
    config = load_config(path, {"batch_size": 32, "max_epochs": None})
    assert (config.model, config.batch_size, config.max_epochs) == ("lenet300", 32, 3)
    assert config.load_name is None and config.learning_rate == Config().learning_rate


def test_effective_config_round_trips_through_toml(tmp_path):
    config = load_config(None, {"model": "vgg7", "dataset": "cifar10"})
    passes = {"prune": {"weight": {"sparsity": 0.5, "method": "l1-norm"}}, "huffman": {}, "test": {}}
    text = to_toml({**vars(config), "passes": passes})
    path = tmp_path / "e.toml"
    path.write_text(text)
    again = load_config(path)
    assert again.passes == passes  # empty step tables ([passes.test]) are steps too
    assert vars(again) | {"passes": {}} == vars(config)


def test_several_unknown_keys_are_named_at_once():
    """An upstream MASE config: every section machop lacks in one answer, not one per attempt."""
    with pytest.raises(ConfigError) as e:
        load_config(None, {"search": {"strategy": {"name": "optuna"}}, "transform": {"style": "graph"}, "seed": 1})
    assert str(e.value).startswith("2 unknown keys: search, transform; allowed keys: accelerator, ")


@pytest.mark.parametrize("key", ["prüne", "a\nb", 'q"uote', "tab\there", "", "x.y", "量化"])
def test_to_toml_writes_any_key_and_string_tomllib_reads_back(key):
    data = {"project_dir": f"runs/{key}\n\\end", "passes": {key: {"path": key, "table": {key: [1.5, None]}}}}
    assert tomllib.loads(to_toml(data)) == {"project_dir": data["project_dir"],
                                            "passes": {key: {"path": key, "table": {key: [1.5, "NA"]}}}}


RERUN = """
seed = 0
[passes."prüne"]
pass = "prune"
[passes."prüne".weight]
sparsity = 0.7
[passes."量化 step"]
pass = "quantize"
by = "type"
[passes."量化 step".default.config]
name = "kmeans"
weight_bits = 4
[passes.huffman]
is_huffman = true
"""


def test_a_runs_config_toml_parses_and_reruns_to_the_same_file(tmp_path, monkeypatch, capsys):
    """Non-ASCII labels and a path with a newline: the run folder's config.toml is valid TOML (tomllib) and
    running it again writes a byte-identical model.mchz."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(RERUN, encoding="utf-8")
    root = tmp_path / "runs\nnew line"
    common = ["--test-limit", "32", "--train-limit", "100", "--no-progress"]
    assert main(["transform", "--config", "c.toml", "--project-dir", str(root), *common]) == 0, capsys.readouterr().err
    (first,) = (root / "default").iterdir()
    text = (first / "config.toml").read_text(encoding="utf-8")
    parsed = tomllib.loads(text)
    assert list(parsed["passes"]) == ["prüne", "量化 step", "huffman"] and parsed["project_dir"] == str(root)
    assert main(["transform", "--config", str(first / "config.toml"), *common]) == 0, capsys.readouterr().err
    (second,) = set((root / "default").iterdir()) - {first}
    assert (second / "model.mchz").read_bytes() == (first / "model.mchz").read_bytes()
    assert (second / "config.toml").read_text(encoding="utf-8") == text
