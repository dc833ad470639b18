"""NNCodec (ISO/IEC 15938-17, MPEG's Neural Network Coding reference software) as a peer of the ``.mchz`` file.

Both coders get the same quantized weights: those of the model decoded from
a ``.mchz`` file. NNCodec is handed, per coded weight, its integer levels
(``int32``), which its encoder codes losslessly with DeepCABAC (the
``skip`` approximation: no quantization of its own): a pruned weight is
level 0, a kept one the signed rank of its codebook value (negative values
-1, -2, ... outwards from 0, positive +1, +2, ...; for a fixed-point layer
that is its integer code ``q``). Both need the same codebooks beside the
levels (k-means centroids; a fixed-point layer's grid follows from its
widths), so they are left out of both counts, as are the biases and other
raw tensors: the comparison is machop's values + positions bytes against
NNCodec's bitstream for the same levels. Row skipping (NNC's tool for whole
zero rows) is on unless ``row_skipping=False``.

NNCodec is used through ``nncodec.nnc_core`` (its approximator and coder):
``nncodec.nnc`` imports its training framework (torchvision, pandas,
OpenCV), which this machine does not have.

    python bench/nncodec_peer.py FILE.mchz        # a registry model's file (the file names it)
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from machop.ir import MaseGraph
from machop.ir.mchz import encode_model, load_compressed
from machop.nn import weight_codes

_CABAC_UNARY_LENGTH_MINUS1 = 10


def signed_levels(codebook: np.ndarray) -> np.ndarray:
    """The signed integer level of each codebook entry: 0 for 0, -1, -2, ... below it, +1, +2, ... above it."""
    values = np.asarray(codebook, dtype=np.float64)
    uniq = np.unique(values)
    neg, pos = uniq[uniq < 0][::-1], uniq[uniq > 0]  # outwards from zero
    levels = np.zeros(values.shape, dtype=np.int64)
    levels[values < 0] = -(np.searchsorted(-neg, -values[values < 0]) + 1)
    levels[values > 0] = np.searchsorted(pos, values[values > 0]) + 1
    return levels


def model_levels(graph: MaseGraph) -> dict[str, np.ndarray]:
    """{weight name: int32 levels, the weight's shape} of every quantized weight of ``graph`` (pruned: 0)."""
    out = {}
    for w in graph.weights():
        wc = weight_codes(w.module, w.tensor_name)
        if wc is None:
            continue
        level = signed_levels(wc.codebook.detach().double().cpu().numpy())
        codes = wc.codes.detach().cpu().numpy().astype(np.int64)
        mask = wc.mask.detach().cpu().numpy().astype(bool)
        out[w.name if w.tensor_name == "weight" else f"{w.qualname}.{w.tensor_name}"] = \
            np.where(mask, level[codes], 0).astype(np.int32)
    return out


def _names(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """NNCodec tells weights from biases by the name's ending: every tensor here is a weight."""
    return {(k if k.endswith("weight") else f"{k}.weight"): v for k, v in state.items()}


def nncodec_encode(state: dict[str, np.ndarray], row_skipping: bool = True) -> bytes:
    """NNCodec's bitstream of int32 ``state`` (coded losslessly: integer tensors are not quantized again)."""
    from nncodec import nnc_core  # a dev dependency: imported where it is used

    params = _names(state)
    if not all(a.dtype == np.int32 for a in params.values()):
        raise ValueError("nncodec_encode codes int32 levels only")
    mdl = nnc_core.nnr_model.NNRModel(params)
    approx_data = nnc_core.approximator.init_approx_data(params, mdl.model_info, qp_density=2, scan_order=0)
    info = nnc_core.approximator.ApproxInfo(
        approx_data, mdl.model_info, "uniform", 0, -38, False, False, _CABAC_UNARY_LENGTH_MINUS1, 0,
        nonweight_qp=-75, qp_per_tensor=None, int_quant_bw=False).approx_info
    enc_info = {"cabac_unary_length_minus1": _CABAC_UNARY_LENGTH_MINUS1, "param_opt_flag": True,
                "partial_data_counter": 0, "general_profile_idc": 1, "node_id_present_flag": 1, "device_id": 0,
                "mps_parent_signalling_enabled_flag": 0, "parent_node_id_present_flag": 0,
                "temporal_context_modeling_flag": 0, "row_skip_enabled_flag": int(row_skipping), "pre_signalling": 0}
    approx = nnc_core.approximator.approx(info, mdl.model_info, approx_data, enc_info)
    if set(approx["approx_method"].values()) != {"skip"}:
        raise RuntimeError(f"NNCodec quantized a tensor itself: {approx['approx_method']}")
    bitstream, _ = nnc_core.coder.encode(enc_info=enc_info, model_info=mdl.model_info, approx_data=approx,
                                         approx_param_base=None, update_base_param=False, tool_if=None)
    return bytes(bitstream)


def nncodec_decode(bitstream: bytes) -> dict[str, np.ndarray]:
    """The tensors of an NNCodec bitstream (names as `nncodec_encode` gave them to NNCodec)."""
    from nncodec import nnc_core

    flags = ("sparsification", "pruning", "unification", "decomposition_performance_map")
    info = {"parameter_type": {}, "parameter_dimensions": {}, "parameter_index": {}, "block_identifier": {},
            "topology_storage_format": None, "topology_compression_format": None,
            "performance_maps": {"mps": {}, "lps": {}},
            "performance_map_flags": {f"{s}_{f}_flag": {} for s in ("mps", "lps") for f in flags}}
    dec = nnc_core.coder.decode(bytearray(bitstream), info, hls_stats={}, oob_dict={}, approx_param_base=None,
                                update_base_param=False, return_hls=False, tool_if=None)
    nnc_core.approximator.rec(dec)
    return nnc_core.approximator.recompose_params(info, dec)["parameters"]


def nncodec_bytes(state: dict[str, np.ndarray], row_skipping: bool = True) -> int:
    """Bytes of NNCodec's bitstream of the int32 levels ``state`` (see `model_levels`)."""
    return len(nncodec_encode(state, row_skipping))


def compare(graph: MaseGraph, row_skipping: bool = True) -> dict:
    """machop's bytes for ``graph``'s quantized weights beside NNCodec's for the same levels, and the parts."""
    data, report = encode_model(graph, allow_raw=True)
    parts = report["total"]["parts"]
    levels = model_levels(graph)
    peer = nncodec_bytes(levels, row_skipping) if levels else 0
    weights = parts["values"] + parts["positions"]
    return {
        "file_bytes": len(data), "parts": parts, "coded_weights": int(sum(int((v != 0).sum()) for v in levels.values())),
        "machop_weight_bytes": weights, "nncodec_weight_bytes": peer,
        "ratio": peer / weights if weights else float("nan"),  # > 1: NNCodec's stream is larger
        # the same file with NNCodec's stream in place of machop's values and positions (header kept)
        "nncodec_file_bytes": len(data) - weights + peer,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a .mchz file of a registry model")
    parser.add_argument("--no-row-skipping", action="store_true", help="NNCodec without its zero-row tool")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    try:
        graph = load_compressed(args.file)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    r = compare(graph, row_skipping=not args.no_row_skipping)
    p = r["parts"]
    print(f"{args.file}: {os.path.getsize(args.file)} bytes on disk (re-encoded: {r['file_bytes']}); "
          f"{r['coded_weights']} non-zero weights")
    print(f"  machop  values + positions: {r['machop_weight_bytes']:>9} bytes "
          f"(values {p['values']}, positions {p['positions']})")
    print(f"  NNCodec same levels:        {r['nncodec_weight_bytes']:>9} bytes ({r['ratio']:.3f}x machop's)")
    print(f"  whole file: machop {r['file_bytes']} bytes, with NNCodec's stream instead {r['nncodec_file_bytes']} "
          f"(codebooks {p['codebooks']}, raw {p['raw']}, header {p['header']} in both)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
