"""The import layers of DESIGN.md, enforced by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    run = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", run, "--no-cache", "pyproject.toml"],
                          cwd=cwd, env=env, capture_output=True, text=True)


def test_every_contract_is_kept():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_a_pass_package_importing_another_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "machop", tmp_path / "machop", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    args = tmp_path / "machop/passes/graph/transforms/prune/args.py"
    args.write_text(args.read_text() + "\nfrom machop.passes.graph.transforms.quantize import kmeans_1d  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "No pass package imports another BROKEN" in result.stdout
    assert "machop.passes.graph.transforms.prune.args -> \nmachop.passes.graph.transforms.quantize" in result.stdout


def test_the_core_importing_the_ir_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "machop", tmp_path / "machop", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    masks = tmp_path / "machop/nn/masks.py"
    masks.write_text(masks.read_text() + "\nfrom machop.ir import MaseGraph  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "Each floor imports only the floors below it BROKEN" in result.stdout
