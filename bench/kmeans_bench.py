"""Weight-sharing k-means: machop's exact 1-D Lloyd against scikit-learn's KMeans on resnet18's layers.

For every Conv2d/Linear weight of resnet18 (CIFAR-10 shape, freshly
initialised, optionally magnitude-pruned first) both cluster the kept
weights into ``2**bits`` clusters (8 bits for conv, 5 for linear, as the
quantize pass does) from the same linear initialisation, with the same
``max_iter`` and ``tol`` (scikit-learn's stopping rule), ``n_init=1``,
``algorithm="lloyd"``. scikit-learn gets the weights as float32, as they are.
Both within-cluster errors (SSE) are recomputed the same way, in float64,
from each result's labels and centroids.

    python bench/kmeans_bench.py                 # dense, then 50% magnitude-pruned weights
    python bench/kmeans_bench.py --prune 0.9     # only 90% pruned

Prints one row per layer and the totals: time ratio (sklearn / ours), SSE
ratio (ours / sklearn; <= 1 means ours is no worse), iterations (ours/theirs)
and which empty-cluster rule our kept run used (none met / farthest /
bisect). Times are the fastest of ``--repeat`` wall-clock runs on whatever
cores there are (scikit-learn uses all of them through OpenMP; ours is
single-threaded numpy).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph
from machop.models import get_model
from machop.passes.graph.transforms.quantize.kmeans import initial_centroids, kmeans_1d


def sse(x: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    return float(((x.astype(np.float64) - centroids.astype(np.float64)[labels]) ** 2).sum())


def layer_weights(prune: float, seed: int) -> list[tuple[str, np.ndarray, int]]:
    """(node name, kept weights as float32, bits) per Conv2d/Linear layer of resnet18."""
    torch.manual_seed(seed)
    graph = MaseGraph(get_model("resnet18", get_dataset_info("cifar10")))
    out = []
    for node in graph.layer_nodes():
        module = graph.module_of(node)
        w = module.weight.detach().flatten()
        if prune > 0:  # magnitude pruning within the layer: keep the largest (1 - prune) fraction
            keep = w.numel() - round(prune * w.numel())
            w = w[torch.topk(w.abs(), keep).indices]
        out.append((node.name, w.numpy().astype(np.float32), 8 if isinstance(module, torch.nn.Conv2d) else 5))
    return out


def best_of(repeat: int, fn):
    """(result, seconds): the fastest of ``repeat`` calls (the machine may be shared; noise only adds time)."""
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
        if best is None or dt < best[1]:
            best = (out, dt)
    return best


def run(prune: float, max_iter: int, tol: float, seed: int, repeat: int) -> None:
    """One table: every layer clustered by both, then the totals."""
    layers = layer_weights(prune, seed)
    kmeans_1d(layers[0][1], 4)  # warm-up (imports, allocator)
    head = (f"{'layer':<22} {'n':>9} {'k':>4} {'ours ms':>9} {'sklearn ms':>11} {'speedup':>8} {'iters':>9} "
            f"{'SSE ratio':>10} {'empty':>8}")
    print(f"resnet18 / cifar10, prune={prune}, max_iter={max_iter}, tol={tol}, cpu cores={os.cpu_count()}, "
          f"best of {repeat}")
    print(head)
    print("-" * len(head))
    t_ours = t_sk = e_ours = e_sk = 0.0
    worst = 0.0
    for name, x, bits in layers:
        k = 2**bits
        init = initial_centroids(np.sort(x).astype(np.float64), k, "linear")

        res, t_a = best_of(repeat, lambda: kmeans_1d(x, k, init="linear", max_iter=max_iter, tol=tol))
        km, t_b = best_of(repeat, lambda: KMeans(n_clusters=k, init=init.astype(np.float32).reshape(-1, 1), n_init=1,
                                                 max_iter=max_iter, tol=tol, algorithm="lloyd").fit(x.reshape(-1, 1)))

        ours = sse(x, res.centroids.numpy(), res.labels.numpy())
        theirs = sse(x, km.cluster_centers_[:, 0], km.labels_)
        ratio = ours / theirs if theirs > 0 else 1.0
        worst = max(worst, ratio)
        t_ours += t_a
        t_sk += t_b
        e_ours += ours
        e_sk += theirs
        print(f"{name:<22} {x.size:>9} {k:>4} {1e3 * t_a:>9.1f} {1e3 * t_b:>11.1f} "
              f"{t_b / t_a:>7.1f}x {res.n_iter:>4}/{km.n_iter_:<4} {ratio:>10.6f} {res.relocation:>8}")
    print("-" * len(head))
    n = sum(x.size for _, x, _ in layers)
    print(f"{'total':<22} {n:>9} {'':>4} {1e3 * t_ours:>9.1f} {1e3 * t_sk:>11.1f} {t_sk / t_ours:>7.1f}x "
          f"{'':>9} {e_ours / e_sk:>10.6f}")
    print(f"prune={prune}: speedup (sklearn time / ours) {t_sk / t_ours:.1f}x; total SSE ours/sklearn "
          f"{e_ours / e_sk:.6f}; worst layer SSE ratio {worst:.6f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prune", type=float, nargs="+", default=[0.0, 0.5],
                    help="fraction(s) of each layer's weights pruned first, one table each")
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="time each clustering this many times, keep the fastest")
    args = ap.parse_args()
    for i, prune in enumerate(args.prune):
        if i:
            print()
        run(prune, args.max_iter, args.tol, args.seed, args.repeat)


if __name__ == "__main__":
    main()
