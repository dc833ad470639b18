"""`ch setup`: install what machop needs on a fresh Debian machine; a no-op when all is there.

Standard library only: it runs before torch is installed.
- Fashion-MNIST: the Debian package ``dataset-fashion-mnist`` (apt-get, as root).
- Python packages: ``pip install -e .[dev]`` (torch pinned to the local CPU
  wheel in pyproject.toml), skipped when every requirement is installed;
  with ``--dev`` also `NO_DEPS_DEV`, each alone (``--no-deps``).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
# the benchmark's coding peer (MPEG NNC's reference coder): its declared requirements pin numpy<2 and pull
# torchvision, neither of which it needs for coding, so it is installed without them (it builds a C++ extension)
NO_DEPS_DEV = ["nncodec==2.1.3"]


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _satisfied(requirement: str) -> bool:
    """True when ``requirement`` (``name``, ``name==v`` or ``name>=v``) is installed."""
    m = re.match(r"^([A-Za-z0-9_.\-]+)\s*(==|>=)?\s*([\w.]+)?", requirement)
    name, op, want = m.group(1), m.group(2), m.group(3)
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        return False
    if op == "==":
        return have == want or have.split("+")[0] == want
    if op == ">=":
        key = lambda v: tuple(int(x) for x in re.findall(r"\d+", v)[:3])  # noqa: E731
        return key(have) >= key(want)
    return True


def missing_requirements(dev: bool) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + (project["optional-dependencies"]["dev"] if dev else [])
    missing = [r for r in reqs if not _satisfied(r)]
    try:
        md.version("machop")
    except md.PackageNotFoundError:
        missing.append("machop")
    return missing


def setup(dev: bool = False) -> int:
    if not any(FASHION_MNIST.glob("train-images-idx3-ubyte*")) and not os.environ.get("MACHOP_DATA_DIR"):
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            print("ch setup: error: Fashion-MNIST missing; install the Debian package dataset-fashion-mnist "
                  "or set MACHOP_DATA_DIR", file=sys.stderr)
            return 1
        _run(["apt-get", "update", "-qq"])
        _run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"])
    missing = missing_requirements(dev)
    if missing:
        print(f"installing: {', '.join(missing)}", flush=True)
        _run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]" if dev else str(ROOT)])
    for requirement in NO_DEPS_DEV if dev else []:
        if not _satisfied(requirement):
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", requirement]
            print("+", " ".join(cmd), flush=True)
            if subprocess.run(cmd).returncode != 0:
                print(f"ch setup: warning: {requirement} did not install; bench/nncodec_peer.py and its test "
                      "need it (they say so and skip)", file=sys.stderr)
    print("ch setup: ready", flush=True)
    return 0
