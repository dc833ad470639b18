"""The suite runs on two pytest-xdist workers (``-n 2`` in pyproject.toml): each gets one core, so torch's
own threads, and those of the processes tests start, are held to one."""

import os

if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"

    import torch

    torch.set_num_threads(1)
