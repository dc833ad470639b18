"""Values that pass a type check and then do harm, and config files that would end in a traceback:
refused up front, one line naming the key."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from machop.actions.common import run_dir
from machop.actions.transform import plan
from machop.config import MAX_NAME_LENGTH, ConfigError, check_name, load_config

from test_cli import run_cli

TRAIN_TABLE = "[passes.train.training]\nmax_epochs = 1\n"
FROZEN = "20240101-000000"


def load_error(tmp_path: Path, text: str | bytes) -> ConfigError:
    """The ConfigError that loading and planning the config ``text`` raises."""
    path = tmp_path / "c.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as e:
        plan(load_config(path))
    assert len(str(e.value).splitlines()) == 1
    return e.value


BAD_VALUES = [
    # (id, toml text, key named, substring of the message)
    ("lr-nan", "learning_rate = nan\n", "learning_rate", "must be a finite number, got nan"),
    ("lr-inf", "learning_rate = inf\n", "learning_rate", "must be a finite number, got inf"),
    ("lr-minus-inf", "learning_rate = -inf\n", "learning_rate", "must be a finite number, got -inf"),
    ("lr-int-too-big-for-float", "learning_rate = 1" + "0" * 400 + "\n", "learning_rate", "must be a finite number"),
    ("weight-decay-nan", "weight_decay = nan\n", "weight_decay", "must be a finite number, got nan"),
    ("val-fraction-nan", "val_fraction = nan\n", "val_fraction", "must be a finite number, got nan"),
    ("val-fraction-one", "val_fraction = 1.0\n", "val_fraction", "must be in [0.0, 1.0)"),
    ("seed-negative", "seed = -1\n", "seed", "must be in [0, 4294967295], got -1"),
    ("seed-2-32", f"seed = {2 ** 32}\n", "seed", "must be in [0, 4294967295]"),
    ("seed-2-70", f"seed = {2 ** 70}\n", "seed", "must be a 64-bit integer"),
    ("batch-size-2-70", f"batch_size = {2 ** 70}\n", "batch_size", "must be a 64-bit integer"),
    ("log-every-zero", "log_every_n_steps = 0\n", "log_every_n_steps", "must be in [1,"),
    ("limit-train-zero", "limit_train_batches = 0\n", "limit_train_batches", "must be a fraction in (0, 1]"),
    ("limit-train-1.5", "limit_train_batches = 1.5\n", "limit_train_batches", "must be a fraction in (0, 1]"),
    ("limit-val-minus-one", "limit_val_batches = -1\n", "limit_val_batches", "must be a fraction in (0, 1]"),
    ("limit-test-nan", "limit_test_batches = nan\n", "limit_test_batches", "must be a finite number, got nan"),
    ("project-parent", "project = '../x'\n", "project", "must be a name, not a path"),
    ("project-absolute", "project = '/abs'\n", "project", "must be a name, not a path"),
    ("project-nested", "project = 'a/b'\n", "project", "must be a name, not a path"),
    ("project-backslash", "project = 'a\\b'\n", "project", "must be a name, not a path"),
    ("project-dot", "project = '.'\n", "project", "must be a name, not a path"),
    ("project-dotdot", "project = '..'\n", "project", "must be a name, not a path"),
    ("project-empty", "project = ''\n", "project", "must be a name, got an empty string"),
    ("project-long", f"project = '{'x' * 300}'\n", "project", f"at most {MAX_NAME_LENGTH} characters, got 300"),
    ("project-nul", 'project = "a\\u0000b"\n', "project", "control characters"),
    ("project-newline", 'project = "a\\nb"\n', "project", "control characters"),
    ("project-dir-nul", 'project_dir = "out\\u0000"\n', "project_dir", "NUL"),
    ("huffman-path-nul", '[passes.huffman]\npath = "m\\u0000.mchz"\n', "passes.huffman.path", "NUL"),
    ("train-project-parent", "[passes.retrain]\nproject = '../../x'\n", "passes.retrain.project", "not a path"),
    ("pass-label-path", "[passes.\"../x\"]\npass = 'train'\n", 'passes."../x"', "must be a name, not a path"),
    # pass tables
    ("sparsity-nan", "[passes.prune.weight]\nsparsity = nan\n", "passes.prune.weight.sparsity",
     "must be a finite number, got nan"),
    ("sparsity-table-nan", "[passes.prune.weight]\nsparsity = {default = 0.5, fc1 = nan}\n",
     "passes.prune.weight.sparsity.fc1", "must be a finite number, got nan"),
    ("sparsity-table-default-nan", "[passes.prune.weight.sparsity]\ndefault = nan\n",
     "passes.prune.weight.sparsity.default", "must be a finite number, got nan"),
    ("train-table-lr-nan", "[passes.train.training]\nlearning_rate = nan\n", "passes.train.training.learning_rate",
     "must be a finite number, got nan"),
    ("train-table-weight-decay-inf", "[passes.retrain.training]\nweight_decay = inf\n",
     "passes.retrain.training.weight_decay", "must be a finite number, got inf"),
    ("train-table-limit-nan", "[passes.train.trainer]\nlimit_val_batches = nan\n",
     "passes.train.trainer.limit_val_batches", "must be a finite number, got nan"),
    ("kmeans-tol-inf", "[passes.quantize]\nby = 'type'\n[passes.quantize.default.config]\nname = 'kmeans'\ntol = inf\n",
     "passes.quantize.default.config.tol", "must be a finite number, got inf"),
]


@pytest.mark.parametrize("case", BAD_VALUES, ids=[c[0] for c in BAD_VALUES])
def test_bad_value_is_refused_naming_the_key(case, tmp_path):
    _, text, key, message = case
    error = load_error(tmp_path, text)
    assert error.key == key
    assert message in error.message


@pytest.mark.parametrize("key,value", [
    ("seed", 0), ("seed", 2 ** 32 - 1), ("project", "my-run_1.v2"), ("project", "a..b"), ("project", "x" * 100),
    ("learning_rate", 10), ("val_fraction", 0.0), ("project_dir", "../elsewhere/out"),
])
def test_good_value_is_accepted(key, value):
    assert getattr(load_config(None, {key: value}), key) == value


def test_check_name_is_reusable():
    """The helper a train table's ``project`` can use: None (not set) passes; the error names the given key."""
    check_name(None, "passes.train.project")
    check_name("baseline", "passes.train.project")
    with pytest.raises(ConfigError) as e:
        check_name("../up", "passes.train.project")
    assert e.value.key == "passes.train.project"


def test_error_with_a_newline_in_a_key_is_one_line(tmp_path):
    error = load_error(tmp_path, '"a\\nb" = 1\n')
    assert error.key == "a\nb" and str(error).startswith("a\\nb: unknown key")


# --------------------------------------------------------------------------- bad files


def nested(depth: int, table: bool) -> str:
    """``a = [[[...]]]`` (or ``a = {b = {b = ...}}``) ``depth`` deep."""
    inner = "{b = " * depth + "1" + "}" * depth if table else "[" * depth + "]" * depth
    return f"a = {inner}\n"


BAD_FILES = [
    # (id, file bytes or a maker taking tmp_path, substring of the message)
    ("non-utf8", b'model = "\xff\xfe"\n', "is not UTF-8 text (byte 0xff at offset 9)"),
    ("nested-arrays", nested(10000, table=False), "nested too deeply"),
    ("nested-tables", nested(10000, table=True), "nested too deeply"),
    ("too-big", "# padding\n" * 110_000, "is larger than 1 MiB"),
    ("int-too-long", "seed = 1" + "0" * 5000 + "\n", "is not valid TOML"),
    ("bad-toml", "model = \n", "is not valid TOML"),
]


@pytest.mark.parametrize("case", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_one_line_naming_it(case, tmp_path):
    _, content, message = case
    error = load_error(tmp_path, content)
    assert error.key == "--config"
    assert message in error.message and str(tmp_path / "c.toml") in error.message


def test_a_directory_is_not_a_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert str(e.value) == f"--config: not a file: {tmp_path}"


def test_a_missing_file_is_no_such_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "gone.toml")
    assert str(e.value) == f"--config: no such file: {tmp_path / 'gone.toml'}"


def test_a_file_at_the_limit_is_read(tmp_path):
    path = tmp_path / "c.toml"
    head = "seed = 3\n"
    path.write_text(head + "#" * ((1 << 20) - len(head) - 1) + "\n")
    assert path.stat().st_size == 1 << 20
    assert load_config(path).seed == 3


# --------------------------------------------------------------------------- through the command line

# --------------------------------------------------------------------------- the run folder


@pytest.fixture
def frozen_clock(monkeypatch):
    """Every run starts in the same second."""
    monkeypatch.setattr(time, "strftime", lambda fmt, *args: FROZEN)


def test_runs_in_the_same_second_get_their_own_folders(tmp_path, frozen_clock):
    config = load_config(None, {"project_dir": str(tmp_path)})
    first, second, third = (run_dir(config, "train") for _ in range(3))
    base = tmp_path / "default" / f"train_lenet5_fashion_mnist_{FROZEN}"
    assert (first, second, third) == (base, base.with_name(base.name + "-1"), base.with_name(base.name + "-2"))
    assert all(p.is_dir() for p in (first, second, third))


def test_a_name_taken_by_a_file_is_skipped(tmp_path, frozen_clock):
    config = load_config(None, {"project_dir": str(tmp_path)})
    base = tmp_path / "default" / f"train_lenet5_fashion_mnist_{FROZEN}"
    base.parent.mkdir(parents=True)
    base.write_text("not a run")
    assert run_dir(config, "train") == base.with_name(base.name + "-1")


def test_concurrent_runs_never_collide(tmp_path, frozen_clock):
    config = load_config(None, {"project_dir": str(tmp_path)})
    start = threading.Barrier(8)
    made: list[Path] = []
    errors: list[BaseException] = []

    def one_run() -> None:
        start.wait()
        try:
            made.append(run_dir(config, "transform"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one_run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)


@pytest.mark.parametrize("where", ["project_dir", "project"])
def test_an_output_path_through_a_file_names_project_dir(where, tmp_path):
    blocker = tmp_path / "out" if where == "project_dir" else tmp_path / "out" / "default"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file, not a folder")
    config = load_config(None, {"project_dir": str(tmp_path / "out")})
    with pytest.raises(ConfigError) as e:
        run_dir(config, "train")
    assert e.value.key == "project_dir" and len(str(e.value).splitlines()) == 1
    assert "is a file, not a folder" in e.value.message
    assert blocker.is_file()


# --------------------------------------------------------------------------- the machine's devices


@pytest.fixture
def cpu_only(monkeypatch):
    """This machine as one without a GPU or MPS device, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("argv, message", [
    (["--accelerator", "gpu"], "--accelerator: 'gpu' asked for, but this machine has none"),
    (["--accelerator", "cuda"], "--accelerator: 'cuda' asked for, but this machine has none"),
    (["--accelerator", "mps"], "--accelerator: 'mps' asked for, but this machine has none"),
    (["--precision", "16-mixed"], "--precision: '16-mixed' (float16 mixed precision) needs a GPU"),
])
def test_devices_this_machine_lacks_are_refused_before_any_work(cpu_only, tmp_path, capsys, argv, message):
    code, err = run_cli(["train", "lenet5", "fashion_mnist", "--project-dir", str(tmp_path / "out"), *argv], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"ch train: error: {message}")
    assert not (tmp_path / "out").exists()


def test_a_train_tables_accelerator_is_checked_before_step_1(cpu_only, tmp_path, capsys):
    (tmp_path / "c.toml").write_text("[passes.prune.weight]\nsparsity = 0.5\n"
                                     "[passes.retrain.trainer]\naccelerator = 'gpu'\n")
    code, err = run_cli(["transform", "--config", str(tmp_path / "c.toml"), "--project-dir", str(tmp_path / "out")],
                        capsys)
    assert code == 2 and "passes.retrain.trainer.accelerator: 'gpu' asked for" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()
