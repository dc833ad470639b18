"""Huffman coding: machop's vectorised canonical codec against dahuffman on a compressed resnet18's streams.

resnet18 (CIFAR-10 shape, fresh weights) is pruned 90% (l1-norm, per layer)
and quantized by k-means (the quantize pass's defaults: 8 bits for conv, 5
for linear). The streams the compressed file codes are then concatenated
over all layers:

- **index**: the k-means cluster index of every kept weight;
- **gap**: the relative positions (``index_bits`` = 5, with fillers).

Both coders get the same stream in the same run. "Encode" is building the
code from the data plus encoding (``HuffmanCodec.from_data`` + ``encode``
for dahuffman, which gets a Python list: its fastest input), "decode" is
bytes back to symbols. Times are the best of several runs. Sizes: machop
counts payload + sync table; dahuffman its output bytes (it codes an extra
end-of-file symbol). The entropy bound is the zeroth-order entropy of the
stream, in bits per symbol.

    python bench/huffman_bench.py [--sparsity 0.9] [--weight-bits 5] [--repeat 15] [--dh-repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from dahuffman import HuffmanCodec

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.passes.graph.transforms.huffman import codec
from machop.passes.graph.transforms.huffman.model import encode_model, gap_encode
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.nn import weight_codes
from machop.passes.graph.transforms.quantize import quantize_transform_pass


def streams(sparsity: float, index_bits: int, seed: int, weight_bits: int | None = None
            ) -> tuple[dict[str, np.ndarray], MaseGraph]:
    """The index and gap streams of every layer of a pruned, k-means quantized resnet18, concatenated."""
    torch.manual_seed(seed)
    info = get_dataset_info("cifar10")
    graph = MaseGraph(get_model("resnet18", info), context=PassContext(model_name="resnet18", dataset_info=info))
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": sparsity, "method": "l1-norm"}})
    kmeans = {"name": "kmeans"} if weight_bits is None else {"name": "kmeans", "weight_bits": weight_bits}
    graph, _ = quantize_transform_pass(graph, {"by": "type", "default": {"config": kmeans}})
    index, gaps = [], []
    for node in graph.layer_nodes():
        wc = weight_codes(graph.module_of(node))
        mask = wc.mask.reshape(-1).numpy()
        positions = np.flatnonzero(mask)
        index.append(wc.codes.reshape(-1).numpy()[positions])
        gaps.append(gap_encode(positions, index_bits))
    return {"index": np.concatenate(index), "gap": np.concatenate(gaps)}, graph


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def entropy(x: np.ndarray) -> float:
    p = np.unique(x, return_counts=True)[1] / x.size
    return float(-(p * np.log2(p)).sum())


def bench_stream(name: str, x: np.ndarray, repeat: int, dh_repeat: int) -> dict:
    n = x.size
    as_list = x.tolist()
    t_enc, ours = best_time(lambda: codec.encode(x), repeat)
    t_dec, back = best_time(lambda: codec.decode(ours), repeat)
    assert np.array_equal(back, x)

    def dh_encode():
        c = HuffmanCodec.from_data(as_list)
        return c, c.encode(as_list)

    t_dh_enc, (dh, dh_bytes) = best_time(dh_encode, dh_repeat)
    t_dh_dec, dh_back = best_time(lambda: dh.decode(dh_bytes), dh_repeat)
    assert dh_back == as_list
    return {
        "stream": name, "symbols": n, "alphabet": int(np.unique(x).size), "entropy": entropy(x),
        "ours_bits": 8 * ours.nbytes / n, "ours_payload_bits": ours.nbits / n, "dh_bits": 8 * len(dh_bytes) / n,
        "ours_enc": n / t_enc, "ours_dec": n / t_dec, "dh_enc": n / t_dh_enc, "dh_dec": n / t_dh_dec,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--index-bits", type=int, default=5)
    ap.add_argument("--weight-bits", type=int, default=None, help="k-means bits for every layer (default: 8 conv, 5 linear)")
    ap.add_argument("--repeat", type=int, default=15, help="runs of machop's codec (best is kept)")
    ap.add_argument("--dh-repeat", type=int, default=3, help="runs of dahuffman (best is kept)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data, graph = streams(args.sparsity, args.index_bits, args.seed, args.weight_bits)
    rows = [bench_stream(name, x, args.repeat, args.dh_repeat) for name, x in data.items()]

    bits = "8-bit conv / 5-bit linear" if args.weight_bits is None else f"{args.weight_bits}-bit"
    print(f"resnet18, {args.sparsity:.0%} l1 pruning + k-means ({bits}), index_bits = {args.index_bits}; "
          f"best of {args.repeat} runs (dahuffman {args.dh_repeat})\n")
    head = (f"{'stream':<6} {'symbols':>9} {'alph':>5} {'entropy':>8} {'ours b/s':>9} {'dahuff b/s':>10} "
            f"{'size ours/dh':>12} | {'enc Msym/s':>10} {'dh enc':>7} {'x':>6} | {'dec Msym/s':>10} {'dh dec':>7} {'x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['stream']:<6} {r['symbols']:>9,} {r['alphabet']:>5} {r['entropy']:>8.4f} {r['ours_bits']:>9.4f} "
              f"{r['dh_bits']:>10.4f} {r['ours_bits'] / r['dh_bits']:>12.4f} | {r['ours_enc'] / 1e6:>10.1f} "
              f"{r['dh_enc'] / 1e6:>7.2f} {r['ours_enc'] / r['dh_enc']:>6.1f} | {r['ours_dec'] / 1e6:>10.1f} "
              f"{r['dh_dec'] / 1e6:>7.2f} {r['ours_dec'] / r['dh_dec']:>6.1f}")
    print("\nb/s = bits per symbol (ours: payload + sync table; payload alone: "
          + ", ".join(f"{r['stream']} {r['ours_payload_bits']:.4f}" for r in rows) + ")")

    t_file, (blob, report) = best_time(lambda: encode_model(graph), 1)
    total = report["total"]
    print(f"whole file: {total['file_bytes']:,} bytes ({total['ratio']:.1f}x smaller than {total['dense_bytes']:,} "
          f"dense fp32 bytes), {total['bits_per_weight']:.3f} bits/weight + {total['bits_per_index']:.3f} "
          f"bits/index; encode_model {t_file:.2f} s")


if __name__ == "__main__":
    main()
