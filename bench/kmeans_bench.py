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
bisect). Each layer is clustered ``--rounds`` times by both, interleaved
(`timing.interleaved`); the total's speed-up is quoted as the median of the
rounds' ratios with the lowest and highest, on whatever cores there are
(scikit-learn uses all of them through OpenMP; ours is single-threaded numpy).
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
import torch
from sklearn.cluster import KMeans

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph
from machop.models import get_model
from machop.nn.kmeans import initial_centroids, kmeans_1d

from timing import interleaved, ratios, spread, timed


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


def run(prune: float, max_iter: int, tol: float, seed: int, rounds: int) -> None:
    """One table: every layer clustered by both, then the totals."""
    layers = layer_weights(prune, seed)
    kmeans_1d(layers[0][1], 4)  # warm-up (imports, allocator)
    head = (f"{'layer':<22} {'n':>9} {'k':>4} {'ours ms':>9} {'sklearn ms':>11} {'speedup':>8} {'iters':>9} "
            f"{'SSE ratio':>10} {'empty':>8}")
    print(f"resnet18 / cifar10, prune={prune}, max_iter={max_iter}, tol={tol}, cpu cores={os.cpu_count()}, "
          f"{rounds} interleaved rounds (median ms per layer)")
    print(head)
    print("-" * len(head))
    t_ours, t_sk = [0.0] * rounds, [0.0] * rounds  # per round, summed over layers
    e_ours = e_sk = 0.0
    worst = 0.0
    for name, x, bits in layers:
        k = 2**bits
        init = initial_centroids(np.sort(x).astype(np.float64), k, "linear")
        results = {}

        def ours() -> float:
            results["ours"], seconds = timed(lambda: kmeans_1d(x, k, init="linear", max_iter=max_iter, tol=tol))
            return seconds

        def sklearn() -> float:
            results["sklearn"], seconds = timed(lambda: KMeans(
                n_clusters=k, init=init.astype(np.float32).reshape(-1, 1), n_init=1, max_iter=max_iter, tol=tol,
                algorithm="lloyd").fit(x.reshape(-1, 1)))
            return seconds

        times = interleaved({"ours": ours, "sklearn": sklearn}, rounds)
        t_ours = [a + b for a, b in zip(t_ours, times["ours"])]
        t_sk = [a + b for a, b in zip(t_sk, times["sklearn"])]
        res, km = results["ours"], results["sklearn"]
        mine = sse(x, res.centroids.numpy(), res.labels.numpy())
        theirs = sse(x, km.cluster_centers_[:, 0], km.labels_)
        ratio = mine / theirs if theirs > 0 else 1.0
        worst = max(worst, ratio)
        e_ours += mine
        e_sk += theirs
        a, b = statistics.median(times["ours"]), statistics.median(times["sklearn"])
        print(f"{name:<22} {x.size:>9} {k:>4} {1e3 * a:>9.1f} {1e3 * b:>11.1f} "
              f"{b / a:>7.1f}x {res.n_iter:>4}/{km.n_iter_:<4} {ratio:>10.6f} {res.relocation:>8}")
    print("-" * len(head))
    n = sum(x.size for _, x, _ in layers)
    a, b = statistics.median(t_ours), statistics.median(t_sk)
    print(f"{'total':<22} {n:>9} {'':>4} {1e3 * a:>9.1f} {1e3 * b:>11.1f} {b / a:>7.1f}x "
          f"{'':>9} {e_ours / e_sk:>10.6f}")
    print(f"prune={prune}: speedup (sklearn time / ours, whole model per round) {spread(ratios(t_sk, t_ours), '.1f')}; "
          f"total SSE ours/sklearn {e_ours / e_sk:.6f}; worst layer SSE ratio {worst:.6f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prune", type=float, nargs="+", default=[0.0, 0.5],
                    help="fraction(s) of each layer's weights pruned first, one table each")
    ap.add_argument("--max-iter", type=int, default=300)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of both sides")
    args = ap.parse_args()
    for i, prune in enumerate(args.prune):
        if i:
            print()
        run(prune, args.max_iter, args.tol, args.seed, args.rounds)


if __name__ == "__main__":
    main()
