"""Bad input on the command line and in config files: one line naming the key, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from machop.cli import main

ROOT = Path(__file__).resolve().parents[1]

TRAIN_TABLE = '[passes.train.training]\nmax_epochs = 1\n'


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    return code, err


CASES = [
    # (id, toml text or None, extra argv, expected substring of the one error line)
    ("missing-config", None, ["--config", "nope.toml"], "--config: no such file"),
    ("bad-toml", "model = \n", [], "is not valid TOML"),
    ("unknown-top-key", 'modle = "lenet5"\n' + TRAIN_TABLE, [], "modle: unknown key"),
    ("unknown-model", 'model = "lenet6"\n' + TRAIN_TABLE, [], "model: unknown model 'lenet6'; choose from"),
    ("unknown-dataset-option", TRAIN_TABLE, ["--dataset", "imagenet"], "--dataset: unknown dataset 'imagenet'"),
    ("wrong-type", 'batch_size = "big"\n' + TRAIN_TABLE, [], "batch_size: must be an integer, got 'big'"),
    ("out-of-range-option", TRAIN_TABLE, ["--max-epochs", "0"], "--max-epochs: must be in [1,"),
    ("bad-choice-option", TRAIN_TABLE, ["--optimizer", "rmsprop"], "--optimizer: must be one of 'adam', 'sgd', 'adamw'"),
    ("bad-learning-rate", "learning_rate = -0.1\n" + TRAIN_TABLE, [], "learning_rate: must be in (0, 10]"),
    ("unknown-pass", "[passes.compress]\nlevel = 3\n", [], "passes.compress: unknown pass 'compress'; choose from"),
    ("unknown-pass-name", '[passes.step2]\npass = "trian"\n', [], "passes.step2.pass: unknown pass 'trian'"),
    ("unknown-pass-key", "[passes.train.training]\nepochs = 3\n", [], "passes.train.training.epochs: unknown key"),
    ("pass-value-range", "[passes.retrain.training]\nlearning_rate = -1.0\n", [], "passes.retrain.training.learning_rate: must be in (0, 10]"),
    ("pass-bad-optimizer", '[passes.train.training]\noptimizer = "lbfgs"\n', [], "passes.train.training.optimizer: must be one of"),
    ("no-passes", 'model = "lenet5"\n', [], "passes: no [passes.*] table"),
    ("load-without-type", 'load_name = "x.ckpt"\n' + TRAIN_TABLE, [], "load_type: is required with load_name"),
    ("missing-checkpoint", TRAIN_TABLE, ["--load", "missing.ckpt", "--load-type", "pl"], "--load: no such file: missing.ckpt"),
    ("bad-load-type", TRAIN_TABLE, ["--load", "x.ckpt", "--load-type", "onnx"], "--load-type: must be one of"),
    ("devices-word", TRAIN_TABLE, ["--devices", "many"], "--devices: must be a positive integer or 'auto'"),
    ("unknown-layer-type", "[passes.prune.weight]\nsparsity = 0.5\ntypes = ['conv9d']\n", [],
     "passes.prune.weight.types[0]: unknown layer type 'conv9d'"),
    # checked against the built model before step 1: a later step's label is named, nothing runs
    ("graph-check-second-prune-exclude", TRAIN_TABLE + "[passes.prune.weight]\nsparsity = 0.5\n[passes.prune_2]\n"
     "pass = 'prune'\n[passes.prune_2.weight]\nsparsity = 0.8\nexclude = ['fc9']\n", [],
     "passes.prune_2.weight.exclude: unknown name(s) 'fc9'; valid names: conv1, conv2, fc1, fc2"),
    ("graph-check-type-absent", "[passes.prune.weight]\nsparsity = 0.5\ntypes = ['lstm']\n", [],
     "passes.prune.weight.types: no lstm layer in this model; it has: conv2d, linear"),
    ("graph-check-kernelwise-linear", "[passes.prune.weight]\nsparsity = 0.5\ngranularity = 'kernelwise'\n", [],
     "passes.prune.weight.granularity: kernelwise pruning prunes the kernels of convolutions"),
    ("graph-check-quantize-key", TRAIN_TABLE + "[passes.quantize]\nby = 'name'\n[passes.quantize.conv9.config]\n"
     "name = 'kmeans'\n", [], "passes.quantize.conv9: matches no weight of this model"),
    ("graph-check-huffman-before-quantize", TRAIN_TABLE + "[passes.huffman]\nis_huffman = true\n", [],
     "passes.huffman: comes before any quantize step"),
    ("graph-check-decode-missing", "[passes.huffman_decode]\npath = 'none.mchz'\n", [],
     "passes.huffman_decode.path: no such file: none.mchz"),
    ("graph-check-train-load-missing", "[passes.retrain]\nload_name = 'gone.ckpt'\nload_type = 'pl'\n", [],
     "passes.retrain.load_name: no such file: "),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(case, tmp_path, capsys, monkeypatch):
    _, toml_text, extra, expected = case
    monkeypatch.chdir(tmp_path)
    argv = ["transform", "--project-dir", str(tmp_path / "out")]
    if toml_text is not None:
        (tmp_path / "c.toml").write_text(toml_text)
        argv += ["--config", "c.toml"]
    code, err = run_cli(argv + extra, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    code, err = run_cli(["test", "--load", str(bad), "--load-type", "pl", "--project-dir", str(tmp_path / "o")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--load:" in err and "not a readable PyTorch weights file" in err


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
    bad = subprocess.run([sys.executable, str(ROOT / "ch"), "train", "--model", "nope", "--project-dir", str(tmp_path / "o")],
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
