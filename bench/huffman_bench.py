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
bytes back to symbols. Both sides run in turn for ``--rounds`` rounds
(`timing.interleaved`); a speed-up is the median of the rounds' ratios, with
the lowest and highest. Sizes: machop
counts payload + sync table; dahuffman its output bytes (it codes an extra
end-of-file symbol). The entropy bound is the zeroth-order entropy of the
stream, in bits per symbol.

    python bench/huffman_bench.py [--sparsity 0.9] [--weight-bits 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch
from dahuffman import HuffmanCodec

from machop.datasets import get_dataset_info
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.ir.mchz import codec
from machop.ir.mchz.model import encode_model, gap_encode
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.nn import weight_codes
from machop.passes.graph.transforms.quantize import quantize_transform_pass

from timing import interleaved, ratios, spread, timed


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


def entropy(x: np.ndarray) -> float:
    p = np.unique(x, return_counts=True)[1] / x.size
    return float(-(p * np.log2(p)).sum())


def bench_stream(name: str, x: np.ndarray, rounds: int) -> dict:
    n = x.size
    as_list = x.tolist()
    out: dict = {}

    def ours_enc() -> float:
        out["ours"], seconds = timed(lambda: codec.encode(x))
        return seconds

    def dh_enc() -> float:
        out["dh"], seconds = timed(lambda: (c := HuffmanCodec.from_data(as_list), c.encode(as_list)))
        return seconds

    enc = interleaved({"ours": ours_enc, "dh": dh_enc}, rounds)
    ours, (dh, dh_bytes) = out["ours"], out["dh"]

    def ours_dec() -> float:
        out["back"], seconds = timed(lambda: codec.decode(ours))
        return seconds

    def dh_dec() -> float:
        out["dh_back"], seconds = timed(lambda: dh.decode(dh_bytes))
        return seconds

    dec = interleaved({"ours": ours_dec, "dh": dh_dec}, rounds)
    assert np.array_equal(out["back"], x) and out["dh_back"] == as_list
    return {
        "stream": name, "symbols": n, "alphabet": int(np.unique(x).size), "entropy": entropy(x),
        "ours_bits": 8 * ours.nbytes / n, "ours_payload_bits": ours.nbits / n, "dh_bits": 8 * len(dh_bytes) / n,
        "ours_enc": n / statistics.median(enc["ours"]), "ours_dec": n / statistics.median(dec["ours"]),
        "dh_enc": n / statistics.median(enc["dh"]), "dh_dec": n / statistics.median(dec["dh"]),
        "enc_x": spread(ratios(enc["dh"], enc["ours"]), ".1f"), "dec_x": spread(ratios(dec["dh"], dec["ours"]), ".1f"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--index-bits", type=int, default=5)
    ap.add_argument("--weight-bits", type=int, default=None, help="k-means bits for every layer (default: 8 conv, 5 linear)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of both coders")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data, graph = streams(args.sparsity, args.index_bits, args.seed, args.weight_bits)
    rows = [bench_stream(name, x, args.rounds) for name, x in data.items()]

    bits = "8-bit conv / 5-bit linear" if args.weight_bits is None else f"{args.weight_bits}-bit"
    print(f"resnet18, {args.sparsity:.0%} l1 pruning + k-means ({bits}), index_bits = {args.index_bits}; "
          f"{args.rounds} interleaved rounds; Msym/s from median times, x = median (lowest-highest) of the rounds\n")
    head = (f"{'stream':<6} {'symbols':>9} {'alph':>5} {'entropy':>8} {'ours b/s':>9} {'dahuff b/s':>10} "
            f"{'size ours/dh':>12} | {'enc Msym/s':>10} {'dh enc':>7} {'x':>20} | {'dec Msym/s':>10} {'dh dec':>7} {'x':>20}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['stream']:<6} {r['symbols']:>9,} {r['alphabet']:>5} {r['entropy']:>8.4f} {r['ours_bits']:>9.4f} "
              f"{r['dh_bits']:>10.4f} {r['ours_bits'] / r['dh_bits']:>12.4f} | {r['ours_enc'] / 1e6:>10.1f} "
              f"{r['dh_enc'] / 1e6:>7.2f} {r['enc_x']:>20} | {r['ours_dec'] / 1e6:>10.1f} "
              f"{r['dh_dec'] / 1e6:>7.2f} {r['dec_x']:>20}")
    print("\nb/s = bits per symbol (ours: payload + sync table; payload alone: "
          + ", ".join(f"{r['stream']} {r['ours_payload_bits']:.4f}" for r in rows) + ")")

    (blob, report), t_file = timed(lambda: encode_model(graph))
    total = report["total"]
    print(f"whole file: {total['file_bytes']:,} bytes ({total['ratio']:.1f}x smaller than {total['dense_bytes']:,} "
          f"dense fp32 bytes), {total['bits_per_weight']:.3f} bits/weight + {total['bits_per_index']:.3f} "
          f"bits/index; encode_model {t_file:.2f} s")


if __name__ == "__main__":
    main()
