"""The suite runs on two pytest-xdist workers (``-n 2`` in pyproject.toml): each gets one core, so torch's
own threads, and those of the processes tests start, are held to one. `one_thread` does the same for a
module run on its own (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

if "PYTEST_XDIST_WORKER" in os.environ:  # before torch is imported: it reads OMP_NUM_THREADS once
    os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

if "PYTEST_XDIST_WORKER" in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while the module runs (restored after).

    The models and batches of the tests are tiny: a second thread gains
    little, and on a shared 2-core machine every small op then waits for the
    other thread to be scheduled (test_group3 took 190 s instead of 26 s under load).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def speedup_bench():
    """bench/speedup_bench.py as a module (it imports bench/timing.py as `timing`)."""
    return _bench_module("speedup_bench")


@pytest.fixture(scope="session")
def deep_compression_bench():
    """bench/deep_compression.py as a module."""
    return _bench_module("deep_compression")


def _bench_module(name: str):
    bench = Path(__file__).resolve().parents[1] / "bench"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
