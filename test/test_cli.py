"""Bad input on the command line and in config files: one line naming the key, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import logging

from machop.cli import LOG_LEVELS, build_parser, main, overrides_from_args
from machop.config import load_config

ROOT = Path(__file__).resolve().parents[1]

TRAIN_TABLE = '[passes.train.training]\nmax_epochs = 1\n'


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    return code, err


def test_test_needs_load(capsys):
    code, err = run_cli(["test"], capsys)
    assert code == 2 and "--load: is required" in err


def test_argparse_errors_are_one_line(capsys):
    code, err = run_cli(["train", "--batch-size", "abc"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ["ch train: error: argument --batch-size: invalid int value: 'abc'"]


def test_unknown_action_is_one_line(capsys):
    code, err = run_cli(["compress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice" in err


def test_real_process_exit_code_and_help(tmp_path):
    """The ``./ch`` script itself: help lists every action; a bad option exits 2 with one line."""
    out = subprocess.run([sys.executable, str(ROOT / "ch"), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for action in ("setup", "train", "test", "transform"):
        assert action in out.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "ch"), "train", "--model", "nope", "--project-dir", str(tmp_path / "o"),
                          "--precision", "bf16-mixed"],  # accepted: the run stops at the model check after it
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]
    assert "--model: unknown model 'nope'" in bad.stderr
    assert not (tmp_path / "o").exists()


def test_setup_path_imports_no_third_party_package():
    """`./ch setup` runs on a fresh machine before torch is installed: its imports are standard library only."""
    code = ("import sys; import machop.cli, machop.actions.setup; "
            "bad = [m for m in ('torch', 'numpy', 'pytorch_lightning', 'rich') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- MASE's command-line forms


def parse(argv: list[str]) -> dict:
    """The Config overrides of a command line (None = not given)."""
    return overrides_from_args(build_parser().parse_args(argv))


@pytest.mark.parametrize("action", ["train", "test", "transform"])
def test_positional_model_and_dataset_are_the_options(action):
    assert parse([action, "lenet300", "mnist"]) == parse([action, "--model", "lenet300", "--dataset", "mnist"])
    got = parse([action, "vgg7", "cifar10", "--batch-size", "8"])
    assert (got["model"], got["dataset"], got["batch_size"]) == ("vgg7", "cifar10", 8)
    assert parse([action, "--config", "c.toml", "lenet5"])["model"] == "lenet5"  # after the options too


def test_positionals_are_optional():
    args = build_parser().parse_args(["transform", "--config", "x.toml"])
    assert args.config == "x.toml" and args.model is None and args.dataset is None
    assert parse(["train", "--model", "lenet5"])["model"] == "lenet5"
    assert parse(["train", "resnet18"])["dataset"] is None


def test_positional_equal_to_the_option_is_fine():
    assert parse(["train", "lenet5", "mnist", "--model", "lenet5", "--dataset", "mnist"])["model"] == "lenet5"


@pytest.mark.parametrize("argv,message", [
    (["train", "lenet5", "--model", "vgg7"], "ch train: error: MODEL 'lenet5' conflicts with --model 'vgg7'"),
    (["test", "--dataset", "mnist", "lenet5", "cifar10"], "ch test: error: DATASET 'cifar10' conflicts with --dataset 'mnist'"),
])
def test_positional_conflicting_with_option_is_a_parser_error(argv, message, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert err.strip().splitlines() == [message]


ALIASES = [
    # (MASE's spelling, value, Config key, expected value)
    ("--training-optimizer", "sgd", "optimizer", "sgd"),
    ("--num-devices", "2", "devices", 2),
    ("--gpu", "auto", "devices", "auto"),
    ("--nodes", "3", "num_nodes", 3),
    ("--trainer-precision", "16-mixed", "precision", "16-mixed"),
    ("--cpu", "4", "num_workers", 4),
]


@pytest.mark.parametrize("alias,value,key,expected", ALIASES, ids=[a[0] for a in ALIASES])
def test_mase_alias_sets_the_config_key(alias, value, key, expected):
    overrides = parse(["train", alias, value])
    assert overrides[key] == expected
    assert getattr(load_config(None, overrides), key) == expected


NEW_OPTIONS = [
    (["--precision", "bf16-mixed"], "precision", "bf16-mixed"),
    (["--precision", "32"], "precision", "32"),
    (["--max-steps", "-1"], "max_steps", -1),
    (["--max-steps", "20"], "max_steps", 20),
    (["--accumulate-grad-batches", "4"], "accumulate_grad_batches", 4),
    (["--limit-val-batches", "0.25"], "limit_val_batches", 0.25),
    (["--limit-test-batches", "3"], "limit_test_batches", 3),
    (["--limit-train-batches", "1"], "limit_train_batches", 1),  # an int is a number of batches, as in Lightning
]


@pytest.mark.parametrize("argv,key,expected", NEW_OPTIONS, ids=[" ".join(c[0]) for c in NEW_OPTIONS])
def test_lightning_option_reaches_the_config(argv, key, expected):
    value = getattr(load_config(None, parse(["train", *argv])), key)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("argv,level", [
    ([], "info"),
    (["--debug"], "debug"),
    (["-v"], "debug"),
    (["--verbose"], "debug"),
    (["--log-level", "warning"], "warning"),
    (["--log-level", "error"], "error"),
])
def test_log_level_options(argv, level):
    assert build_parser().parse_args(["train", *argv]).log_level == level
    assert build_parser().parse_args([*argv, "train"]).log_level == level  # before the action too


def test_log_level_sets_the_machop_logger(tmp_path, capsys):
    machop_logger = logging.getLogger("machop")
    before = machop_logger.level
    try:
        for level in LOG_LEVELS:
            run_cli(["train", "--model", "nope", "--log-level", level, "--project-dir", str(tmp_path / "o")], capsys)
            assert machop_logger.level == getattr(logging, level.upper())
        run_cli(["train", "--model", "nope", "--debug", "--project-dir", str(tmp_path / "o")], capsys)
        assert machop_logger.level == logging.DEBUG
    finally:
        machop_logger.setLevel(before)


def test_bad_log_level_is_refused(capsys):
    code, err = run_cli(["train", "--log-level", "loud"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "argument --log-level: invalid choice: 'loud'" in err


def test_help_lists_positionals_aliases_and_new_options(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for word in ("MODEL", "DATASET", "--training-optimizer", "--num-devices", "--gpu", "--nodes", "--log-level",
                 "--debug", "--precision", "--max-steps", "--accumulate-grad-batches", "--limit-val-batches",
                 "--limit-test-batches"):
        assert word in text


def test_bad_precision_is_one_line_listing_the_values(tmp_path, capsys):
    """A precision Lightning does not take: exit 2, one line listing the allowed values
    (``bf16-mixed`` is accepted: `test_real_process_exit_code_and_help`)."""
    code = main(["train", "lenet5", "fashion_mnist", "--precision", "bf17-mixed", "--project-dir", str(tmp_path / "o")])
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ch train: error: --precision: must be one of ")
    assert "'bf16-mixed'" in lines[0] and lines[0].endswith("got 'bf17-mixed'")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("config,argv,expected", [
    ("learning_rate = 20.0\n", [], "ch transform: error: learning_rate: must be in (0, 10], got 20.0"),
    ("[search]\n[transform]\nstyle = 'graph'\n", [], "ch transform: error: 2 unknown keys: search, transform;"),
    ("", ["--project", "\N{GRINNING FACE}" * 60], "ch transform: error: --project: must be a name of at most 200"),
    ("", ["--max-epochs-all", "0"], "ch transform: error: --max-epochs-all: must be in [1, 10000], got 0"),
])
def test_config_values_are_refused_before_torch_is_imported(config, argv, expected, tmp_path):
    """A typo in the config's own values is answered without importing torch or Lightning (a fraction of a
    second instead of seconds)."""
    (tmp_path / "c.toml").write_text(config, encoding="utf-8")
    code = ("import sys; from machop.cli import main; code = main(sys.argv[1:]); "
            "print(code, [m for m in ('torch', 'pytorch_lightning') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, "transform", "--config", "c.toml", *argv], capture_output=True,
                         text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "2 []", out.stderr
    assert out.stderr.startswith(expected) and out.stderr.count("\n") == 1, out.stderr


def test_help_lists_export_and_says_the_epochs_precedence():
    out = subprocess.run([sys.executable, str(ROOT / "ch"), "transform", "--help"], capture_output=True, text=True)
    assert "--max-epochs-all N" in out.stdout and "Precedence: a step trains min(N, its own max_epochs)" in \
        " ".join(out.stdout.split())
    top = subprocess.run([sys.executable, str(ROOT / "ch"), "--help"], capture_output=True, text=True).stdout
    assert "export" in top
