"""SIGINT and SIGTERM in a real run: one line, exit 130/143, no temporary file, every file left behind loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from machop.ir import load_graph
from machop.ir.serialize import read_checkpoint
from machop.passes.graph.transforms.huffman import load_compressed

ROOT = Path(__file__).resolve().parents[1]

TRAIN_LONG = """model = "lenet5"
train_limit = 1000
test_limit = 100
[passes.prune.weight]
sparsity = 0.5
[passes.train.training]
max_epochs = 1000
"""

COMPRESS = """model = "lenet5"
test_limit = 100
[passes.prune.weight]
sparsity = 0.8
[passes.quantize]
by = "type"
evaluate = false
[passes.quantize.default.config]
name = "kmeans"
weight_bits = 4
[passes.huffman]
"""

# Runs `ch` with a signal sent to itself once the .mchz's temporary file is written and about to be
# fsynced: the moment a half-finished write would be left behind.
SIGNAL_IN_MCHZ_WRITE = """
import os, sys
from machop import cli
real_fsync = os.fsync
def fsync(fd):
    if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and "/.model.mchz." in os.readlink(f"/proc/self/fd/{fd}"):
        print("TMP", os.readlink(f"/proc/self/fd/{fd}"), flush=True)
        os.kill(os.getpid(), int(sys.argv[1]))
    real_fsync(fd)
os.fsync = fsync
sys.exit(cli.main(sys.argv[2:]))
"""

ARGS = ["transform", "--config", "run.toml", "--project-dir", "out", "--no-progress", "--log-level", "warning"]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def check_left_behind(tmp_path: Path, signum: int, stderr: str, code: int) -> list[Path]:
    """One line naming the signal, exit 128 + N, no temporary file; every file in the run folder loads."""
    assert code == 128 + signum, stderr
    lines = stderr.strip().splitlines()
    assert lines == [f"ch transform: error: interrupted by {signal.Signals(signum).name}"], stderr
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], files
    for p in files:
        if p.suffix == ".toml":
            tomllib.loads(p.read_text())
        elif p.suffix == ".json":
            json.loads(p.read_text())
        elif p.suffix == ".ckpt":
            read_checkpoint(p, "pl")
        elif p.suffix == ".mz":
            load_graph(p)
        elif p.suffix == ".mchz":
            load_compressed(p)
        else:
            raise AssertionError(f"unexpected file {p}")
    return files


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_training(signum, tmp_path):
    (tmp_path / "run.toml").write_text(TRAIN_LONG)
    proc = subprocess.Popen([sys.executable, str(ROOT / "ch"), *ARGS], cwd=tmp_path, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stdout:  # the train step has begun (step 2 of 2, after the prune step)
        if "step 2/2" in line:
            break
    ckpt_dir = tmp_path / "out"
    deadline = time.monotonic() + 60
    while not list(ckpt_dir.rglob("best.ckpt")) and time.monotonic() < deadline:  # an epoch done, training goes on
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=60)
    files = check_left_behind(tmp_path, signum, err, proc.returncode)
    assert {p.name for p in files} >= {"config.toml", "report.json", "01_prune.mz", "best.ckpt"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_the_compressed_file_write(signum, tmp_path):
    (tmp_path / "run.toml").write_text(COMPRESS)
    proc = subprocess.run([sys.executable, "-c", SIGNAL_IN_MCHZ_WRITE, str(int(signum)), *ARGS], cwd=tmp_path,
                          env=env(), text=True, capture_output=True, timeout=120)
    assert "TMP " in proc.stdout  # the signal did arrive inside the write
    files = check_left_behind(tmp_path, signum, proc.stderr, proc.returncode)
    assert not [p for p in files if p.suffix == ".mchz"]
    assert {p.name for p in files} == {"config.toml", "report.json", "01_prune.mz", "02_quantize.mz"}
