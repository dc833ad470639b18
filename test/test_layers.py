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
    assert "5 kept, 0 broken" in result.stdout


def broken_copy(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of machop (and its contracts) in ``tmp_path`` with ``line`` appended to ``module``."""
    shutil.copytree(ROOT / "machop", tmp_path / "machop", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    return tmp_path


def test_a_pass_package_importing_another_breaks_the_contract(tmp_path):
    root = broken_copy(tmp_path, "machop/passes/graph/transforms/prune/args.py",
                       "from machop.passes.graph.transforms.quantize import quantize_transform_pass")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "No pass package imports another BROKEN" in result.stdout
    assert "machop.passes.graph.transforms.prune.args -> \nmachop.passes.graph.transforms.quantize" in result.stdout


def test_the_core_importing_the_ir_breaks_the_contract(tmp_path):
    result = lint_imports(broken_copy(tmp_path, "machop/nn/masks.py", "from machop.ir import MaseGraph"))
    assert result.returncode != 0 and "Each floor imports only the floors below it BROKEN" in result.stdout
