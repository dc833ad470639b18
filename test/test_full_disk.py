"""A full disk mid-run: one line naming the file, exit 1, no temporary file, the files already written load."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from machop.cli import main
from machop.ir import load_graph

from test_interrupts import COMPRESS

ARGS = ["transform", "--config", "run.toml", "--no-progress", "--log-level", "warning"]


def run(tmp_path: Path, project_dir: Path, capsys) -> tuple[int, list[str], list[Path]]:
    (tmp_path / "run.toml").write_text(COMPRESS)
    code = main([*ARGS, "--project-dir", str(project_dir)])
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines, [p for p in project_dir.rglob("*") if p.is_file()]


def test_injected_enospc_on_the_compressed_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_fsync = os.fsync

    def full(fd):
        if ".model.mchz." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    code, lines, files = run(tmp_path, tmp_path / "out", capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("ch transform: error: No space left on device: "), lines
    assert lines[0].endswith("model.mchz")
    assert {p.name for p in files} == {"config.toml", "report.json", "01_prune.mz", "02_quantize.mz"}
    for p in files:
        if p.suffix == ".mz":
            load_graph(p)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 3 MB tmpfs (root with mount rights only): room for the config and one LeNet-5 checkpoint (2.2 MB)."""
    where = tmp_path / f"tmpfs-{uuid.uuid4().hex[:8]}"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights); the injected ENOSPC test covers it")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_a_real_full_disk(tmp_path, monkeypatch, capsys, small_tmpfs):
    monkeypatch.chdir(tmp_path)
    code, lines, files = run(tmp_path, small_tmpfs, capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith("ch transform: error: No space left on device: "), lines
    assert lines[0].endswith("02_quantize.mz")
    assert not [p for p in files if p.name.endswith(".tmp")]
    assert {p.name for p in files} == {"config.toml", "report.json", "01_prune.mz"}
    load_graph(next(p for p in files if p.suffix == ".mz"))
