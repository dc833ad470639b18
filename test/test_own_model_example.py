"""docs/YOUR_OWN_MODEL.md's example, run exactly as written: compress in one process, open in another."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "YOUR_OWN_MODEL.md"


def example_files() -> dict[str, str]:
    """The page's python blocks that are files, by name (fence ```python file=mynet.py```, first line ``# mynet.py``)."""
    blocks = re.findall(r"```python file=(\S+)[^\n]*\n(.*?)```", PAGE.read_text(), re.S)
    for name, code in blocks:
        assert code.startswith(f"# {name}\n"), f"the block of {name} does not start with '# {name}'"
    return dict(blocks)


def test_own_model_example_runs_and_the_new_process_gets_the_same_accuracy(tmp_path):
    files = example_files()
    assert list(files) == ["mynet.py", "compress.py", "use.py"]
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    compress = subprocess.run([sys.executable, "compress.py"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert compress.returncode == 0, compress.stderr[-3000:]
    use = subprocess.run([sys.executable, "use.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert use.returncode == 0, use.stderr[-3000:]
    compressed = re.search(r"compressed: test_acc (\d\.\d+)", compress.stdout).group(1)
    decoded = re.search(r"decoded: test_acc (\d\.\d+)", use.stdout).group(1)
    assert decoded == compressed
    assert "verified True" in compress.stdout and (tmp_path / "mynet.mchz").is_file()
    ratio = float(re.search(r"bytes, ([\d.]+)x smaller", compress.stdout).group(1))
    assert ratio > 5
