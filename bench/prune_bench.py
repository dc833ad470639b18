#!/usr/bin/env python
"""Benchmark: machop's prune pass against torch.nn.utils.prune on ResNet-18 (11.2M weights).

Cases: L1-magnitude elementwise weight pruning at 50% and 90%, ``local``
(per layer; peer: ``prune.l1_unstructured`` on every Conv2d/Linear) and
``global`` (one threshold; peer: ``prune.global_unstructured(...,
pruning_method=prune.L1Unstructured)``). Both prune the same 21 layers and
reach the same masks (the tests check mask equality on smaller nets).

What is measured, per case and implementation, in a fresh child process:

- time: wall-clock of the call (``prune_transform_pass`` including its
  report, which runs one batch-1 forward for MACs; vs the torch.nn.utils.prune
  loop) on a fresh copy of the model (tracing the model into a MaseGraph is
  not timed), one run per child process with the default allocator
  settings. ``--rounds`` rounds run both sides in turn (`timing.interleaved`);
  the ratio quoted is the median of the rounds' ratios, with the lowest and
  highest;
- peak: the highest resident memory (RSS) seen during the call minus the RSS
  just before it, sampled every 0.2 ms by a thread reading /proc/self/statm,
  in a separate child (one run). torch's CPU allocator sits on malloc, and
  that child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so every tensor above
  64 KB is its own mmap, returned to the OS when freed: RSS then follows live
  tensor memory (tracemalloc does not see torch's allocations; the mmap
  setting slows allocation, which is why time is measured apart);
- kept: RSS after the call (and a gc) minus RSS before: what pruning adds
  to the model for good (machop: a bool mask per weight; torch.nn.utils.prune:
  a float mask, the original weight and the recomputed weight).

Run: ``python bench/prune_bench.py [--rounds 5]``. Prints a table; ratios are
torch.nn.utils.prune / machop (above 1: machop is faster or smaller).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time

from timing import interleaved, ratios, spread

CASES = [("local", 0.5), ("local", 0.9), ("global", 0.5), ("global", 0.9)]
IMPLS = ("machop", "torch")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS:
    """Samples RSS in a thread while the ``with`` block runs."""

    def __enter__(self):
        self.start = _rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(0.0002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())


def _child(impl: str, scope: str, sparsity: float, repeats: int, mode: str) -> dict:
    import torch
    import torch.nn.utils.prune as tprune
    from torch import nn

    from machop.datasets import get_dataset_info
    from machop.ir import MaseGraph
    from machop.models import get_model
    from machop.nn import get_mask
    from machop.passes.graph.transforms.prune import prune_transform_pass

    torch.manual_seed(0)
    info = get_dataset_info("cifar10")
    base = get_model("resnet18", info)
    times, peaks, kept, pruned = [], [], [], None
    for _ in range(repeats):
        model = copy.deepcopy(base)
        if impl == "machop":
            graph = MaseGraph(model)
            graph.context.dataset_info = info
            cfg = {"weight": {"sparsity": sparsity, "scope": scope, "method": "l1-norm"}}
            run = lambda: prune_transform_pass(graph, cfg)  # noqa: E731
        else:
            layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
            if scope == "local":
                def run():
                    for m in layers:
                        tprune.l1_unstructured(m, "weight", amount=sparsity)
            else:
                def run():
                    tprune.global_unstructured([(m, "weight") for m in layers],
                                               pruning_method=tprune.L1Unstructured, amount=sparsity)
        gc.collect()
        if mode == "time":
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        else:
            with PeakRSS() as mem:
                run()
            gc.collect()
            peaks.append(mem.peak - mem.start)
            kept.append(_rss() - mem.start)
        target = graph.model if impl == "machop" else model
        masks = [get_mask(m) if impl == "machop" else m.weight_mask.bool()
                 for m in target.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        pruned = sum(int(x.numel() - torch.count_nonzero(x)) for x in masks)
        del model, target, masks, run
        if impl == "machop":
            del graph
        gc.collect()
    if mode == "time":
        return {"time": min(times), "pruned": pruned}
    return {"peak": max(peaks), "kept": statistics.median(kept), "pruned": pruned}


MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _child_run(impl: str, scope: str, sparsity: float, mode: str) -> dict:
    """One measurement in a fresh child process."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", impl, scope, str(sparsity), "--repeats", "1", "--mode", mode],
        env={**os.environ, **(MEMORY_ENV if mode == "memory" else {})}, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of both sides (timing)")
    parser.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["time", "memory"], default="time", help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "SCOPE", "SPARSITY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, scope, sparsity = args.child
        print(json.dumps(_child(impl, scope, float(sparsity), args.repeats, args.mode)))
        return

    import torch

    print(f"ResNet-18 (cifar10 shape, 11.2M weights), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.rounds} interleaved rounds; ratio = torch.nn.utils.prune / machop, median (lowest-highest)")
    header = (f"{'case':<14}{'machop s':>10}{'torch s':>10}{'time ratio':>22}"
              f"{'machop peak MB':>16}{'torch peak MB':>15}{'ratio':>7}{'machop kept MB':>16}{'torch kept MB':>15}")
    print(header)
    print("-" * len(header))
    mb = 1 / 2**20
    for scope, sparsity in CASES:
        pruned = {}

        def side(impl: str):
            def run() -> float:
                r = _child_run(impl, scope, sparsity, "time")
                pruned[impl] = r["pruned"]
                return r["time"]
            return run

        times = interleaved({impl: side(impl) for impl in IMPLS}, args.rounds)
        mem = {impl: _child_run(impl, scope, sparsity, "memory") for impl in IMPLS}
        if pruned["machop"] != pruned["torch"]:
            print(f"  warning: pruned counts differ: {pruned['machop']} vs {pruned['torch']}")
        m, t = mem["machop"], mem["torch"]
        print(f"{scope + ' ' + str(sparsity):<14}{statistics.median(times['machop']):>10.3f}"
              f"{statistics.median(times['torch']):>10.3f}{spread(ratios(times['torch'], times['machop'])):>22}"
              f"{m['peak'] * mb:>16.1f}{t['peak'] * mb:>15.1f}{t['peak'] / max(m['peak'], 1):>7.2f}"
              f"{m['kept'] * mb:>16.1f}{t['kept'] * mb:>15.1f}")


if __name__ == "__main__":
    main()
