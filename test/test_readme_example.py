"""The README's "Your own model" example, run exactly as written: compress in one process, open in another."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example_files() -> dict[str, str]:
    """The section's python blocks by the file name in their first line (``# mynet.py``)."""
    text = README.read_text()
    section = text[text.index("## Your own model"):]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return {block.splitlines()[0].removeprefix("#").strip(): block for block in blocks}


def test_readme_own_model_example_runs_and_the_new_process_gets_the_same_accuracy(tmp_path):
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
