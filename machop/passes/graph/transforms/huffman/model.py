"""A whole model as a Deep Compression file (§4): Huffman-coded sparse quantized weights + raw rest.

Per quantized weight (every compressible weight, see
`machop.nn.compressible_weights`, whose `weight_codes` is not None; a tied
weight once) the file stores, over the flattened weight:

- the **values**: the code (k-means cluster index, or fixed-point integer
  code) of every kept weight (``mask`` True, including kept weights equal
  to 0), in order;
- the **gaps**: the position of each kept weight relative to the previous
  one, as ``index_bits``-bit symbols. With ``G = 2**index_bits - 1``, a
  symbol ``g < G`` means "skip ``g`` positions, the next one holds the next
  value"; the symbol ``G`` is the *filler*: "skip ``G`` positions, no value".
  A gap of ``d`` pruned positions is ``d // G`` fillers then ``d % G``.
  (The paper's filler is a zero stored as a value; a pruned position must
  stay pruned, so a filler that carries no value is both exact and smaller.)
- the **codebook** (float32: the centroids, or the fixed-point grid).

Values and gaps are each Huffman-coded with their own canonical table
(`codec`). Every other state-dict entry (biases, batch norm, masks of
layers stored raw, inserted modules' buffers) is stored raw, little-endian,
once: a key holding the same tensor as an earlier one (a tied weight's
second site) is recorded as an alias of it. The JSON header also holds
`describe_structure` (registry model name or your model's class name,
dataset info, ties, parametrization chains, inserted modules) and every
state-dict key with its shape and dtype. A file holds no code: decoding a
registry model needs only its name, decoding your own model takes the model
(its architecture is checked against the file first).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from machop.ir import ArchitectureMismatch, MaseGraph, PassContext
from machop.ir.serialize import (
    apply_structure,
    base_graph,
    check_architecture,
    describe_structure,
    first_mismatch,
    same_signature,
    state_signature,
)
from machop.nn import WeightCodes, dense_parameter_count, has_compression, load_weight_codes, weight_codes

from . import codec
from .format import CompressedFileError, pack_container, unpack_container

logger = logging.getLogger(__name__)

FORMAT_NAME = "machop.huffman"
_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool)
}
if sys.byteorder != "little":  # raw tensors are written in host order
    raise ImportError("machop's compressed format needs a little-endian host")


# --------------------------------------------------------------------------- relative positions


def gap_encode(positions: np.ndarray, index_bits: int) -> np.ndarray:
    """Gap symbols for strictly increasing ``positions`` (see the module docstring)."""
    filler = (1 << index_bits) - 1
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1) - 1
    fills = gaps // filler
    out = np.full(gaps.size + int(fills.sum()), filler, dtype=np.int64)
    out[np.cumsum(fills + 1) - 1] = gaps - fills * filler
    return out


def gap_decode(symbols: np.ndarray, index_bits: int, numel: int) -> np.ndarray:
    """Positions from gap symbols; CompressedFileError if they leave ``[0, numel)`` or end in a filler."""
    filler = (1 << index_bits) - 1
    if symbols.size == 0:
        return np.zeros(0, dtype=np.int64)
    if symbols.min() < 0 or symbols.max() > filler or symbols[-1] == filler:
        raise CompressedFileError("gap stream is corrupt (symbol out of range or trailing filler)")
    real = symbols != filler
    positions = (np.cumsum(np.where(real, symbols + 1, filler)) - 1)[real]
    if positions[-1] >= numel:
        raise CompressedFileError("gap stream is corrupt (position beyond the weight)")
    return positions


# --------------------------------------------------------------------------- signatures


# --------------------------------------------------------------------------- raw tensors


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _tensor_from(data: bytes, shape: list[int], dtype: str) -> torch.Tensor:
    dt = _DTYPES[dtype]
    if not data:
        return torch.zeros(shape, dtype=dt)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dt).reshape(shape).clone()


def _nbytes(shape: list[int], dtype: str) -> int:
    return int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=_DTYPES[dtype]).element_size()


# --------------------------------------------------------------------------- encode


def _coded_weights(graph: MaseGraph, allow_raw: bool) -> tuple[list[tuple[Any, WeightCodes]], list[dict]]:
    """([(Weight, WeightCodes)] of each quantized weight, [{name, type, reason}] of the weights stored raw)."""
    coded, raw = [], []
    for w in graph.weights():
        codes = weight_codes(w.module, w.tensor_name)
        if codes is None:
            if not allow_raw:
                raise ValueError(
                    f"huffman_encode: weight {w.name} ({w.kind.name}) is not quantized; run the quantize pass first "
                    "(prune → quantize → huffman), or set allow_raw = true to store it uncompressed"
                )
            raw.append({"name": w.name, "type": w.kind.name, "reason": "not quantized (allow_raw): stored as fp32"})
            continue
        coded.append((w, codes))
    return coded, raw


def _record_name(qualname: str, tensor: str) -> str:
    return qualname if tensor == "weight" else f"{qualname}.{tensor}"


def encode_model(graph: MaseGraph, index_bits: int = 5, allow_raw: bool = False) -> tuple[bytes, dict]:
    """The compressed file of ``graph`` as bytes, and a report (per weight and total).

    Raises ValueError naming the first compressible weight that is not
    quantized, unless ``allow_raw`` (then the report lists it in ``raw_layers``).
    """
    if not 1 <= index_bits <= 16:
        raise ValueError(f"index_bits must be in [1, 16], got {index_bits}")
    structure = describe_structure(graph)
    coded, raw_layers = _coded_weights(graph, allow_raw)
    state = graph.model.state_dict(keep_vars=True)
    signature = state_signature(graph.model)
    unstorable = [f"{k} ({d})" for k, _, d in signature if d not in _DTYPES]
    if unstorable:
        raise ValueError(f"huffman_encode: cannot store tensors of dtype {', '.join(unstorable[:3])}")
    aliases: dict[str, str] = {}
    first_key: dict[int, str] = {}
    for key, tensor in state.items():
        if id(tensor) in first_key:
            aliases[key] = first_key[id(tensor)]
        else:
            first_key[id(tensor)] = key
    coded_prefixes = tuple(
        f"{q}.parametrizations.{t}.".lstrip(".") for w, _ in coded for q, _, t in w.sites
    )
    raw_keys = [k for k in state if not k.startswith(coded_prefixes) and k not in aliases]
    sections: list[tuple[str, bytes]] = [("raw", b"".join(_tensor_bytes(state[k]) for k in raw_keys))]
    layers, rows = [], []
    v_total = g_total = 0
    for w, wc in coded:
        codes = wc.codes.detach().cpu().reshape(-1).numpy()
        mask = wc.mask.detach().cpu().reshape(-1).numpy()
        codebook = wc.codebook.detach().cpu().to(torch.float32).contiguous()
        positions = np.flatnonzero(mask)
        values = codes[positions].astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= codebook.numel()):
            raise ValueError(f"huffman_encode: weight {w.name} has codes outside its codebook of {codebook.numel()}")
        v_stream = codec.encode(values)
        g_stream = codec.encode(gap_encode(positions, index_bits))
        book = _tensor_bytes(codebook)
        name = _record_name(w.qualname, w.tensor_name)
        sections.append((f"layer:{name}", v_stream.data() + g_stream.data() + book))
        where = {} if name == w.qualname else {"module": w.qualname, "tensor": w.tensor_name}  # default: name, weight
        layers.append({
            "name": name, **where, "node": w.name, "shape": list(wc.codes.shape), "kind": wc.kind,
            "bits": int(wc.bits), "codebook_size": int(codebook.numel()), "nnz": int(positions.size),
            "values": v_stream.meta(), "gaps": g_stream.meta(),
        })
        v_bits, g_bits = v_stream.nbits + v_stream.sync_bits, g_stream.nbits + g_stream.sync_bits
        v_total, g_total = v_total + v_bits, g_total + g_bits
        nnz = int(positions.size)
        rows.append({
            "layer": w.name, "type": w.kind.name, "kind": wc.kind, "bits": int(wc.bits), "numel": int(mask.size),
            "nnz": nnz, "density": nnz / mask.size if mask.size else 0.0,
            "bits_per_weight": v_bits / nnz if nnz else 0.0,  # Huffman-coded value bits per kept weight
            "bits_per_index": g_bits / nnz if nnz else 0.0,  # Huffman-coded relative-position bits per kept weight
            "entropy_per_weight": _entropy(values), "gap_symbols": int(g_stream.count),
            "bytes": v_stream.nbytes + g_stream.nbytes + len(book),
            "dense_bytes": 4 * int(mask.size),
        })
    dense_params = dense_parameter_count(graph.model)
    header = {
        "format": FORMAT_NAME,
        "structure": structure,
        "tensors": signature,
        "raw": raw_keys,
        "aliases": aliases,
        "index_bits": index_bits,
        "dense_params": dense_params,
        "layers": layers,
    }
    data = pack_container(header, sections)
    total_nnz = sum(r["nnz"] for r in rows)
    report = {
        "index_bits": index_bits,
        "layers": rows,
        "raw_layers": raw_layers,
        "total": {
            "file_bytes": len(data),
            "dense_params": dense_params,
            "dense_bytes": 4 * dense_params,
            "ratio": 4 * dense_params / len(data),
            "bits_per_parameter": 8 * len(data) / dense_params if dense_params else 0.0,  # whole file / dense params
            "coded_weights": total_nnz,
            "bits_per_weight": v_total / total_nnz if total_nnz else 0.0,
            "bits_per_index": g_total / total_nnz if total_nnz else 0.0,
            "layer_bytes": sum(r["bytes"] for r in rows),
            "raw_bytes": len(sections[0][1]),
            "raw_tensors": len(raw_keys),
            "header_bytes": len(data) - sum(len(d) for _, d in sections),
        },
    }
    return data, report


def _entropy(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    p = np.unique(values, return_counts=True)[1] / values.size
    return float(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------------- decode


class _Decoded:
    """A checked, fully decoded file: everything needed to load it, nothing touched yet."""

    def __init__(self, data: bytes, name: str):
        header, sections = unpack_container(data, name)
        self.name = name
        if header.get("format") != FORMAT_NAME:
            raise CompressedFileError(f"{name}: not a machop Huffman model file (format {header.get('format')!r})")
        try:
            self.structure: dict = header["structure"]
            self.signature: list[list] = [[str(k), [int(x) for x in s], str(d)] for k, s, d in header["tensors"]]
            self.raw_keys: list[str] = list(header["raw"])
            self.aliases: dict[str, str] = {str(k): str(v) for k, v in header.get("aliases", {}).items()}
            self.index_bits = int(header["index_bits"])
            self.layers: list[dict] = list(header["layers"])
            self.model_name = self.structure["model"]
            list(self.structure["inserted"]), list(self.structure["parametrizations"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CompressedFileError(f"{name}: malformed header ({type(e).__name__}: {e})") from None
        if any(d not in _DTYPES for _, _, d in self.signature):
            raise CompressedFileError(f"{name}: malformed header (unknown dtype)")
        self.sections = sections

    def fail(self, message: str) -> CompressedFileError:
        return CompressedFileError(f"{self.name}: {message}")

    def tensors(self) -> tuple[dict[str, torch.Tensor], list[tuple[str, str, WeightCodes]]]:
        """(state dict with placeholders for coded tensors, [(module qualname, tensor name, WeightCodes)])."""
        sig = {k: (s, d) for k, s, d in self.signature}
        self._shapes = {k: s for k, (s, _) in sig.items()}
        raw = self.sections.get("raw")
        if raw is None or any(k not in sig for k in self.raw_keys):
            raise self.fail("raw section or raw keys missing")
        if any(k not in sig or v not in sig or sig[k] != sig[v] for k, v in self.aliases.items()):
            raise self.fail("an alias names a tensor that is not recorded, or one of another shape")
        sizes = [_nbytes(*sig[k]) for k in self.raw_keys]
        if sum(sizes) != len(raw):
            raise self.fail(f"raw section has {len(raw)} bytes, expected {sum(sizes)}")
        state: dict[str, torch.Tensor] = {}
        at = 0
        for key, size in zip(self.raw_keys, sizes):
            state[key] = _tensor_from(raw[at : at + size], *sig[key])
            at += size
        codes = []
        for rec in self.layers:
            try:
                module, tensor = str(rec.get("module", rec["name"])), str(rec.get("tensor", "weight"))
                codes.append((module, tensor, self._layer(rec, module, tensor)))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                if isinstance(e, CompressedFileError):
                    raise
                raise self.fail(f"a layer record is malformed ({type(e).__name__}: {e})") from None
        prefixes = tuple(f"{q}.parametrizations.{t}.".lstrip(".") for q, t, _ in codes)
        for key, shape, dtype in self.signature:
            if key not in state and key not in self.aliases:
                if not key.startswith(prefixes):
                    raise self.fail(f"tensor {key!r} is neither stored raw nor coded")
                state[key] = torch.zeros(shape, dtype=_DTYPES[dtype])
        for key, first in self.aliases.items():
            if first not in state:
                raise self.fail(f"alias {key!r} names {first!r}, which is not stored")
            state[key] = state[first]
        return state, codes

    def _layer(self, rec: dict, module: str, tensor: str) -> WeightCodes:
        name = rec["name"]
        data = self.sections.get(f"layer:{name}")
        if data is None:
            raise self.fail(f"section of layer {name!r} missing")
        shape = [int(s) for s in rec["shape"]]
        numel = int(np.prod(shape, dtype=np.int64))
        k = int(rec["codebook_size"])
        v_meta, g_meta = rec["values"], rec["gaps"]
        recorded = self._shapes.get(f"{module}.parametrizations.{tensor}.original".lstrip("."))
        if recorded != shape:
            raise self.fail(f"layer {name!r} has shape {shape} but its tensor is recorded as {recorded}")
        if not int(rec["nnz"]) == int(v_meta["count"]) <= numel or int(g_meta["count"]) > numel:
            raise self.fail(f"layer {name!r}: symbol counts do not fit the weight")
        v_len = _stream_bytes(v_meta)
        g_len = _stream_bytes(g_meta)
        if len(data) != v_len + g_len + 4 * k or k < 1:
            raise self.fail(f"section of layer {name!r} has {len(data)} bytes, expected {v_len + g_len + 4 * k}")
        values = codec.decode(codec.EncodedStream.from_parts(v_meta, data[:v_len]))
        gaps = codec.decode(codec.EncodedStream.from_parts(g_meta, data[v_len : v_len + g_len]))
        positions = gap_decode(gaps, self.index_bits, numel)
        if positions.size != values.size or values.size != int(rec["nnz"]):
            raise self.fail(f"layer {name!r}: {positions.size} positions for {values.size} values")
        if values.size and (values.min() < 0 or values.max() >= k):
            raise self.fail(f"layer {name!r}: codes outside the codebook")
        codebook = _tensor_from(data[v_len + g_len :], [k], "float32")
        flat_codes = np.zeros(numel, dtype=np.int64)
        flat_codes[positions] = values
        flat_mask = np.zeros(numel, dtype=bool)
        flat_mask[positions] = True
        return WeightCodes(
            codes=torch.from_numpy(flat_codes).reshape(shape), codebook=codebook,
            mask=torch.from_numpy(flat_mask).reshape(shape), bits=int(rec["bits"]), kind=str(rec["kind"]),
        )

    def structured_graph(self, graph: MaseGraph, state: dict[str, torch.Tensor]) -> MaseGraph:
        """``graph`` (a dense model) with the file's structure re-created on it; architecture checked first."""
        try:
            check_architecture(graph, self.signature, self.structure)
        except ArchitectureMismatch as e:
            what = self.model_name or self.structure.get("class") or "model"
            raise self.fail(f"the model does not match the file's {what}: {e}") from None
        try:
            apply_structure(graph, self.structure, state)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise self.fail(f"cannot re-create the model's structure ({type(e).__name__}: {e})") from None
        return graph

    def load_into(self, graph: MaseGraph, state: dict[str, torch.Tensor], codes: list[tuple[str, str, WeightCodes]]) -> None:
        got = state_signature(graph.model)
        if not same_signature(got, self.signature):
            raise self.fail("model does not match the file: " + first_mismatch(got, self.signature))
        graph.model.load_state_dict(state, strict=True)
        for qualname, tensor, wc in codes:
            load_weight_codes(graph.model.get_submodule(qualname), wc, tensor)


def _stream_bytes(meta: dict) -> int:
    count, nbits, block, width = int(meta["count"]), int(meta["nbits"]), int(meta["block"]), int(meta["sync_width"])
    if block < 1:
        raise ValueError("block < 1")
    return (nbits + 7) // 8 + ((max(1, -(-count // block)) - 1) * width + 7) // 8


def decode_model(
    data: bytes,
    graph: MaseGraph | None = None,
    name: str = "compressed file",
    context: PassContext | None = None,
    model: nn.Module | MaseGraph | None = None,
) -> MaseGraph:
    """Load a compressed file (``data``: its bytes) into a graph; returns the graph that holds the decoded model.

    - ``graph`` with the file's exact state-dict layout (e.g. the graph
      that was encoded): loaded in place.
    - ``graph`` of the file's dense architecture with no masks or codebooks
      (e.g. ``MaseGraph(MyNet())``): the file's structure is re-created on it.
    - ``graph`` of a registry model with another structure: a new graph of
      that model is built, keeping ``graph.context`` and ``graph.dummy_input``.
    - ``graph`` None: ``model`` if given (your own model, or a MaseGraph of
      it), else the registry model the file names, with ``context``.
    - anything else: CompressedFileError naming the first mismatching
      tensor, raised before any weight is touched.

    The file is fully checked and decoded before any weight changes.
    """
    decoded = _Decoded(data, name)
    state, codes = decoded.tensors()
    if graph is None:
        try:
            graph = base_graph(decoded.structure, model, name, context)
        except ValueError as e:
            raise decoded.fail(str(e).removeprefix(f"{name} ")) from None
        graph = decoded.structured_graph(graph, state)
    elif not same_signature(state_signature(graph.model), decoded.signature):
        ctx_name = graph.context.model_name
        if ctx_name is not None and ctx_name != decoded.model_name:
            raise decoded.fail(f"file holds a {decoded.model_name or decoded.structure.get('class')}, "
                               f"the graph is a {ctx_name}")
        if has_compression(graph.model):
            if ctx_name is None:
                raise decoded.fail("the graph already holds masks or codebooks that differ from the file's; "
                                   "decode into a fresh model")
            fresh = base_graph(decoded.structure, None, name, graph.context)
            fresh.dummy_input = graph.dummy_input
            fresh.model.to(graph.device)
            graph = fresh
        graph = decoded.structured_graph(graph, state)
    decoded.load_into(graph, state, codes)
    return graph


def file_header(data: bytes, name: str = "compressed file") -> dict:
    """The checked JSON header of a compressed file (for tools and reports)."""
    return unpack_container(data, name)[0]


__all__ = [
    "FORMAT_NAME", "encode_model", "decode_model", "gap_encode", "gap_decode", "file_header",
]
