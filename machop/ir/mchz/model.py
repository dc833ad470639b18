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
  Positions are counted inside the *live* part of the weight when that is
  cheaper (version 3, `live_positions`): bitmaps of the live indices of its
  axes 0 and 1, or of its live kernels, are stored first, and whole dead
  rows, columns, filters or kernels cost no gap symbols;
- the **codebook**: a k-means layer's centroids, in the format its
  `KMeansWeight` uses them (the weight's dtype, as recorded for its
  centroids, or float16/bfloat16 with a ``codebook`` spec); a fixed-point
  layer's grid is not stored (its spec determines it).

Values and gaps are each Huffman-coded with their own canonical table
(`codec`). Every other state-dict entry (biases, batch norm, masks of
layers stored raw, inserted modules' buffers) is stored raw, little-endian,
once: a key holding the same tensor as an earlier one (a tied weight's
second site) is recorded as an alias of it. A tensor whose first
parametrization is a `machop.nn.Compact` (biases, norm parameters rounded to
16 bits by the quantize pass) is stored in that 16-bit format, one whose
first parametrization is a `FixedPoint` (an ``integer`` layer's bias) as its
8- or 16-bit integer codes: the value the model uses, exactly (`raw_format`). The JSON header also holds
`describe_structure` (registry model name or your model's class name,
dataset info, ties, parametrization chains, inserted modules) and every
state-dict key with its shape and dtype. A file holds no code: decoding a
registry model needs only its name (a shrunk one, ``structure.shrunk``, is
resized to the shapes the header records: `machop.ir.skeleton`), decoding
your own model takes the model, of the class the header records
(``saved_class`` for a renamed one), its architecture checked against the file
first (a shrunk one resized to the file's shapes: `machop.ir.serialize.fit_to_file`).
"""

from __future__ import annotations

import logging
import os
import sys
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from machop.datasets import DatasetInfo
from machop.ir import ArchitectureMismatch, MaseGraph, PassContext
from machop.files import BadFileError, why
from machop.ir.serialize import (
    check_structure,
    apply_structure,
    base_graph,
    base_signature,
    check_architecture,
    check_class,
    describe_structure,
    first_mismatch,
    fit_to_file,
    same_signature,
    state_signature,
)
from machop.ir.skeleton import ShrunkShapeError, materialize, registry_skeleton
from machop.models import MODELS, get_model
from machop.nn import (
    FLOAT_FORMATS,
    MAX_FRAC_WIDTH,
    MAX_WIDTH,
    SHORT_FLOATS,
    WeightCodes,
    dense_parameter_count,
    fixed_point_codes,
    fixed_point_grid,
    has_compression,
    load_weight_codes,
    round_to,
    weight_codes,
)
from machop.nn.codes import codebook_format
from machop.nn.rebuild import is_int, short

from . import codec
from .format import VERSION, CompressedFileError, ContainerFile, deflate_header, pack_container, unpack_container, \
    unpack_header, version_of

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


# --------------------------------------------------------------------------- live maps (version 3)

LIVE_MAPS = ("channels", "kernels")


def _axes(shape: list[int]) -> tuple[int, int, int]:
    """A weight seen as ``(d0, d1, K)``: its first two axes and the elements per ``(d0, d1)`` kernel.

    The maps are over the stored tensor's axes 0 and 1 whatever they mean
    (out/in channels, in/out for a transposed conv, rows/columns of an
    embedding): a dead slice along either costs no positions. A 1-d tensor
    is ``(d0, 1, 1)``.
    """
    d0 = shape[0] if len(shape) >= 1 else 1
    d1 = shape[1] if len(shape) >= 2 else 1
    return d0, d1, _numel(shape[2:])


def _pack(bits: np.ndarray) -> bytes:
    return np.packbits(bits.astype(bool), bitorder="little").tobytes()


def map_bytes(live: dict | None, shape: list[int]) -> int:
    """Bytes of a layer's live maps (``live``: its header record, None for none), from the weight's shape alone."""
    if live is None:
        return 0
    d0, d1, _ = _axes(shape)
    if live["map"] == "channels":
        return (d0 + 7) // 8 + (d1 + 7) // 8
    return (d0 * d1 + 7) // 8


def live_positions(mask: np.ndarray, shape: list[int], how: str | None) -> tuple[dict | None, bytes, np.ndarray]:
    """(header record, map bytes, kept positions inside the live sub-tensor) of ``mask`` mapped ``how``.

    ``None``: no map, the positions are the flat ones. ``"channels"``: a
    bitmap of the live indices of axis 0 and one of axis 1 (those holding a
    kept weight), positions counted inside the sub-tensor they select.
    ``"kernels"``: a bitmap of the live ``(d0, d1)`` kernels, positions
    counted inside the live kernels. Either keeps the flat order, so the
    values are stored in the same order.
    """
    if how is None:
        return None, b"", np.flatnonzero(mask)
    d0, d1, k = _axes(shape)
    m3 = mask.reshape(d0, d1, k)
    if how == "channels":
        rows, cols = m3.any(axis=(1, 2)), m3.any(axis=(0, 2))
        sub = m3[rows][:, cols]
        record = {"map": "channels", "rows": int(rows.sum()), "cols": int(cols.sum())}
        return record, _pack(rows) + _pack(cols), np.flatnonzero(sub)
    kernels = m3.reshape(d0 * d1, k).any(axis=1)
    record = {"map": "kernels", "kernels": int(kernels.sum())}
    return record, _pack(kernels), np.flatnonzero(m3.reshape(d0 * d1, k)[kernels])


def _unpack(data: bytes, n: int, claimed: int, what: str) -> np.ndarray:
    """The ``n`` bits of a map (padding bits must be 0) holding exactly ``claimed`` ones; their indices."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    if bits[n:].any():
        raise CompressedFileError(f"{what} map has bits set beyond its {n} entries")
    live = np.flatnonzero(bits[:n])
    if live.size != claimed:
        raise CompressedFileError(f"{what} map has {live.size} live entries, the header claims {claimed}")
    return live


def flat_positions(live: dict | None, maps: bytes, shape: list[int], inner: np.ndarray) -> np.ndarray:
    """Inverse of `live_positions`: the flat positions of ``inner`` (positions inside the live sub-tensor)."""
    if live is None:
        return inner
    d0, d1, k = _axes(shape)
    if live["map"] == "channels":
        split = (d0 + 7) // 8
        rows = _unpack(maps[:split], d0, live["rows"], "row")
        cols = _unpack(maps[split:], d1, live["cols"], "column")
        r, rest = np.divmod(inner, max(cols.size * k, 1))
        c, e = np.divmod(rest, max(k, 1))
        return (rows[r] * d1 + cols[c]) * k + e
    kernels = _unpack(maps, d0 * d1, live["kernels"], "kernel")
    q, e = np.divmod(inner, max(k, 1))
    return kernels[q] * k + e


def live_numel(live: dict | None, shape: list[int]) -> int:
    """Elements of the sub-tensor a layer's positions are counted in."""
    if live is None:
        return _numel(shape)
    d0, d1, k = _axes(shape)
    return live["rows"] * live["cols"] * k if live["map"] == "channels" else live["kernels"] * k


def _iid_bound(nnz: int, numel: int) -> float:
    """H(d)/d bits per kept weight, d = nnz/numel: the least an i.i.d. position code can spend."""
    if nnz == 0 or nnz >= numel:
        return 0.0
    d = nnz / numel
    return float(-(d * np.log2(d) + (1 - d) * np.log2(1 - d)) / d)


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


# --------------------------------------------------------------------------- storage formats (version 2 and later)


def _chains(structure: dict) -> dict[tuple[str, str], list]:
    """``(module, tensor)`` → its recorded parametrization chain (``[{class, spec}, ...]``)."""
    return {(rec["module"], rec["tensor"]): rec["chain"] for rec in structure["parametrizations"]}


class RawFormat(NamedTuple):
    """How a raw tensor is stored: ``dtype``, and for fixed point the ``frac_width`` its integer codes scale by."""

    dtype: str
    frac_width: int | None = None


def raw_format(key: str, dtype: str, chains: dict[tuple[str, str], list], version: int = VERSION) -> RawFormat:
    """How a raw tensor is stored: as recorded, or (version >= 2) as the value its first parametrization rounds it to.

    A float32/float64 ``<module>.parametrizations.<tensor>.original`` whose
    chain *starts* with

    - ``{"class": "Compact", "spec": {"dtype": D}}`` is stored as ``D``
      (float16, bfloat16): the model uses ``round_to(original, D)``;
    - ``{"class": "FixedPoint", "spec": {"width": w, "frac_width": f}}`` is
      stored as the integer codes ``q`` (int8 for ``w <= 8``, else int16) of
      ``q * 2**-f``, the value the model uses.

    Either value is exact in the recorded dtype and is a fixed point of the
    rounding, so the decoded ``original`` gives bit-identical outputs.
    """
    plain = RawFormat(dtype)
    if version < 2 or dtype not in ("float32", "float64") or not key.endswith(".original"):
        return plain
    head, found, tail = f".{key}".rpartition(".parametrizations.")
    if not found or tail.count(".") != 1:
        return plain
    chain = chains.get((head.lstrip("."), tail.partition(".")[0]))
    first = chain[0] if chain else None
    spec = first.get("spec") if isinstance(first, dict) else None
    if not isinstance(spec, dict):
        return plain
    if first.get("class") == "Compact":
        fmt = spec.get("dtype")
        return RawFormat(fmt) if isinstance(fmt, str) and fmt in SHORT_FLOATS else plain
    if first.get("class") == "FixedPoint":
        width, frac = spec.get("width"), spec.get("frac_width")
        if is_int(width) and 1 <= width <= MAX_WIDTH and is_int(frac) and 0 <= frac <= MAX_FRAC_WIDTH:
            return RawFormat("int8" if width <= 8 else "int16", frac)
    return plain


def _raw_bytes(key: str, t: torch.Tensor, fmt: RawFormat, chains: dict[tuple[str, str], list]) -> bytes:
    """``t`` as stored in ``fmt`` (its own dtype, the short float it is rounded to, or its fixed-point codes)."""
    t = t.detach()
    if fmt.frac_width is not None:
        head, _, tail = f".{key}".rpartition(".parametrizations.")
        width = chains[(head.lstrip("."), tail.partition(".")[0])][0]["spec"]["width"]
        codes = fixed_point_codes(t, width, fmt.frac_width)  # as FixedPoint computes them, in t's dtype
        if not torch.isfinite(codes).all():
            raise ValueError(f"huffman_encode: {key} holds NaN: its fixed-point codes cannot be stored")
        return _tensor_bytes(codes.to(_DTYPES[fmt.dtype]))
    if str(t.dtype).removeprefix("torch.") == fmt.dtype:
        return _tensor_bytes(t)
    return _tensor_bytes(round_to(t, fmt.dtype).to(_DTYPES[fmt.dtype]))


def _raw_tensor(chunk: bytes, shape: list[int], dtype: str, fmt: RawFormat) -> torch.Tensor:
    """Inverse of `_raw_bytes`: the tensor in its recorded ``dtype`` (a widening, or codes times 2^-frac: exact)."""
    t = _tensor_from(chunk, shape, fmt.dtype).to(_DTYPES[dtype])
    return t * 2.0 ** -fmt.frac_width if fmt.frac_width is not None else t


def _flat_table(symbols: np.ndarray) -> codec.HuffmanTable:
    """The most even complete code over ``symbols``: lengths ``k - 1`` for the first ``2^k - n``, ``k`` for the rest."""
    n = symbols.size
    k = max(1, int(n - 1).bit_length())
    lengths = np.full(n, k, dtype=np.uint8)
    lengths[: (1 << k) - n] = k - 1
    return codec.HuffmanTable(symbols, lengths)


def _table_cost(table: codec.HuffmanTable) -> int:
    """Bits the code table adds to the (deflated) header, estimated by deflating its lengths alone."""
    return 8 * len(deflate_header(table.to_json()["lengths"].encode()))


def _encode_stream(data: np.ndarray) -> codec.EncodedStream:
    """The optimal Huffman code, or the flat code when its payload plus table is smaller (few symbols of many kinds).

    A layer of 325 weights in 256 clusters gains 10 bits from its Huffman
    code, whose 256 code lengths cost ~30 bytes of header; a flat code's
    lengths ("888...8") deflate to a few bytes.
    """
    best = codec.encode(data)
    symbols = best.table.symbols
    if symbols.size <= 2 or best.count == 0:
        return best
    flat = _flat_table(symbols)
    counts = np.bincount(np.searchsorted(symbols, data), minlength=symbols.size)
    if flat.coded_bits(symbols, counts) + _table_cost(flat) < best.nbits + _table_cost(best.table):
        return codec.encode(data, flat)
    return best


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
            dtype = str(w.stored().dtype).removeprefix("torch.")
            raw.append({"name": w.name, "type": w.kind.name, "reason": f"not quantized (allow_raw): stored as {dtype}"})
            continue
        coded.append((w, codes))
    return coded, raw


# A layer's "live" record costs about this many header bytes, deflated (measured: 33 for a channels record in
# a LeNet-300 header): a map must save more than that to be used.
_LIVE_RECORD_BYTES = 40


def _cheapest_positions(mask: np.ndarray, shape: list[int], index_bits: int, maps: bool = True
                        ) -> tuple[dict | None, bytes, codec.EncodedStream]:
    """(live record or None, map bytes, gap stream) of the cheapest way to store ``mask``'s kept positions.

    Tries the flat positions, then (for a mask with a dead index on axis 0 or
    1) the channel maps, and (when a whole ``(d0, d1)`` kernel is dead) the
    kernel map; each costs its map bytes, its gap stream and its code table.
    """
    options = [None]
    if maps and mask.size and 0 < mask.sum() < mask.size:
        d0, d1, k = _axes(shape)
        m3 = mask.reshape(d0, d1, k)
        if not (m3.any(axis=(1, 2)).all() and m3.any(axis=(0, 2)).all()):
            options.append("channels")
        if not m3.any(axis=2).all():
            options.append("kernels")
    best = None
    for how in options:
        live, maps, inner = live_positions(mask, shape, how)
        stream = _encode_stream(gap_encode(inner, index_bits))
        cost = len(maps) + stream.nbytes + _table_cost(stream.table) // 8 + (_LIVE_RECORD_BYTES if live else 0)
        if best is None or cost < best[0]:
            best = (cost, live, maps, stream)
    return best[1], best[2], best[3]


def _record_name(qualname: str, tensor: str) -> str:
    return qualname if tensor == "weight" else f"{qualname}.{tensor}"


def encode_model(graph: MaseGraph, index_bits: int = 5, allow_raw: bool = False,
                 live_maps: bool = True) -> tuple[bytes, dict]:
    """The compressed file of ``graph`` as bytes, and a report (per weight and total).

    ``live_maps`` False: every layer's positions over its whole weight, as
    version 2 laid them out (for comparisons; the file is still version 3).

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
    chains = _chains(structure)
    dtypes = {k: d for k, _, d in signature}
    raw_formats = {k: raw_format(k, dtypes[k], chains) for k in raw_keys}
    sections: list[tuple[str, bytes]] = [("raw", b"".join(_raw_bytes(k, state[k], raw_formats[k], chains) for k in raw_keys))]
    raw_by_format: dict[str, int] = {}
    for k in raw_keys:
        fmt = raw_formats[k].dtype
        raw_by_format[fmt] = raw_by_format.get(fmt, 0) + state[k].numel() * _ITEMSIZE[fmt]
    layers, rows = [], []
    v_total = g_total = 0
    parts = {"values": 0, "positions": 0, "codebooks": 0}
    for w, wc in coded:
        codes = wc.codes.detach().cpu().reshape(-1).numpy()
        mask = wc.mask.detach().cpu().reshape(-1).numpy()
        codebook = wc.codebook.detach().cpu().contiguous()  # k-means: the weight's dtype; fixed point: the grid
        positions = np.flatnonzero(mask)
        values = codes[positions].astype(np.int64)
        if values.size and (values.min() < 0 or values.max() >= codebook.numel()):
            raise ValueError(f"huffman_encode: weight {w.name} has codes outside its codebook of {codebook.numel()}")
        v_stream = _encode_stream(values)
        live, maps, g_stream = _cheapest_positions(mask, list(wc.codes.shape), index_bits, live_maps)
        book = b""  # a fixed-point grid is not stored: the chain's FixedPoint spec determines it
        if wc.kind == "kmeans":
            stored = codebook.to(_DTYPES[wc.codebook_format])
            if not torch.equal(stored.to(codebook.dtype), codebook):
                raise ValueError(f"huffman_encode: the codebook of {w.name} is not exact in {wc.codebook_format}")
            book = _tensor_bytes(stored)
        name = _record_name(w.qualname, w.tensor_name)
        sections.append((f"layer:{name}", maps + v_stream.data() + g_stream.data() + book))
        where = {} if name == w.qualname else {"module": w.qualname, "tensor": w.tensor_name}  # default: name, weight
        node = {} if w.name == name else {"node": w.name}  # default: the name
        parts["values"] += v_stream.nbytes
        parts["positions"] += len(maps) + g_stream.nbytes
        parts["codebooks"] += len(book)
        layers.append({
            "name": name, **where, **node, "shape": list(wc.codes.shape), "kind": wc.kind,
            "bits": int(wc.bits), "codebook_size": int(codebook.numel()), "nnz": int(positions.size),
            "values": v_stream.meta(), "gaps": g_stream.meta(), **({"live": live} if live is not None else {}),
        })
        v_bits, g_bits = v_stream.nbits + v_stream.sync_bits, g_stream.nbits + g_stream.sync_bits + 8 * len(maps)
        v_total, g_total = v_total + v_bits, g_total + g_bits
        nnz = int(positions.size)
        rows.append({
            "layer": w.name, "type": w.kind.name, "kind": wc.kind, "bits": int(wc.bits), "numel": int(mask.size),
            "nnz": nnz, "density": nnz / mask.size if mask.size else 0.0,
            "bits_per_weight": v_bits / nnz if nnz else 0.0,  # Huffman-coded value bits per kept weight
            "bits_per_index": g_bits / nnz if nnz else 0.0,  # position bits (maps + coded gaps) per kept weight
            # the same, beside the least an i.i.d. mask of this density costs: below it when the mask has structure
            "position_bits_per_weight": g_bits / nnz if nnz else 0.0,
            "iid_bound_bits_per_weight": _iid_bound(nnz, int(mask.size)),
            "position_map": live["map"] if live is not None else None, "map_bytes": len(maps),
            "entropy_per_weight": _entropy(values), "gap_symbols": int(g_stream.count),
            "bytes": len(maps) + v_stream.nbytes + g_stream.nbytes + len(book),
            "values_bytes": v_stream.nbytes, "positions_bytes": len(maps) + g_stream.nbytes, "codebook_bytes": len(book),
            "codebook_format": wc.codebook_format if wc.kind == "kmeans" else None,
            "dense_bytes": 4 * int(mask.size),
        })
    # every ratio is against the model before any shrink, as the prune and quantize figures are
    dense_params = graph.context.original_params or dense_parameter_count(graph.model)
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
        "uncompressed": graph.uncompressed(),
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
            # where the bytes are; the five parts add up to file_bytes (header: the 20-byte prefix included)
            "parts": {
                "values": parts["values"], "positions": parts["positions"], "codebooks": parts["codebooks"],
                "raw": len(sections[0][1]), "header": len(data) - sum(len(d) for _, d in sections),
            },
            "raw_bytes_by_format": raw_by_format,
        },
    }
    return data, report


def _entropy(values: np.ndarray) -> float:
    if values.size == 0:
        return 0.0
    p = np.unique(values, return_counts=True)[1] / values.size
    return float(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------------- decode

_ITEMSIZE = {name: torch.empty((), dtype=dt).element_size() for name, dt in _DTYPES.items()}
MAX_RANK = 32  # dimensions of a recorded tensor
MAX_NUMEL = 1 << 40  # elements of a recorded tensor (the model decides the real limit)
MAX_CODEBOOK = codec.MAX_SYMBOLS  # 2^16 codebook entries (16-bit codes)
# Tensors the file does not store (a coded weight's original, masks, indices, centroids: re-created, then
# overwritten with the decoded codes) may take at most this many times the target model's own state bytes,
# plus a MiB. A k-means layer's takes 1.75x its float32 weight (2.5x with 2^16 clusters; 4x for float16 weights).
PLACEHOLDER_FACTOR, PLACEHOLDER_SLACK = 8, 1 << 20
# A registry model that only the file names (no model, graph or context given) may hold at most this many
# bytes per file byte, or MODEL_BYTES_FLOOR: Deep Compression makes files ~35-50x smaller than their model.
MODEL_BYTES_PER_FILE_BYTE, MODEL_BYTES_FLOOR = 1024, 256 << 20
# Each insertion of a module recompiles the graph (O(nodes)), so their number is bounded by the header
# (serialize.MAX_INSERTED) and, before any is made, by the target graph (INSERTED_PER_NODE x its nodes).
INSERTED_PER_NODE = 4

_HEADER_KEYS = {"format", "structure", "tensors", "raw", "aliases", "index_bits", "dense_params", "layers"}
_LAYER_KEYS = {"name", "shape", "kind", "bits", "codebook_size", "nnz", "values", "gaps"}  # + module, tensor, node
_STREAM_KEYS = {"count", "nbits", "block", "sync_base", "sync_width", "symbols", "lengths"}
_KINDS = ("kmeans", "integer")
_FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")  # a k-means layer's centroids (the weight's dtype)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class _Bad(Exception):
    """A malformed header field (internal: becomes a one-line CompressedFileError naming the file)."""


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise _Bad(message)


def _str(x: object, what: str, empty: bool = False) -> str:
    _need(isinstance(x, str) and (empty or x != ""), f"{what} must be a{'' if empty else ' non-empty'} string")
    return x


def _int(x: object, what: str, lo: int, hi: int) -> int:
    _need(is_int(x) and lo <= x <= hi, f"{what} must be an integer in [{lo}, {hi}], got {short(x)}")
    return x


def _keys(obj: object, required: set[str], what: str, optional: frozenset[str] = frozenset()) -> dict:
    _need(isinstance(obj, dict), f"{what} must be an object")
    missing, extra = required - set(obj), set(obj) - required - optional
    _need(not missing, f"{what} lacks {', '.join(sorted(missing))}")
    _need(not extra, f"{what} has unknown key(s) {', '.join(sorted(map(short, extra)))}")
    return obj


def _shape(x: object, what: str) -> list[int]:
    _need(isinstance(x, list) and len(x) <= MAX_RANK and all(is_int(d) and 0 <= d <= MAX_NUMEL for d in x),
          f"{what}: shape must be a list of at most {MAX_RANK} integers in [0, {MAX_NUMEL}], got {short(x)}")
    n = 1
    for d in x:  # each factor <= MAX_NUMEL: the product stays small until it is refused
        n *= max(d, 1)  # also with a 0 dimension: torch computes strides from the others
        _need(n <= MAX_NUMEL, f"{what}: shape {short(x)} has more than {MAX_NUMEL} elements")
    return list(x)


def _check_structure(s: object) -> dict:
    """The ``structure`` record, checked as every machop file's is (`machop.ir.serialize.check_structure`)."""
    try:
        return check_structure(s, "structure")
    except BadFileError as e:
        raise _Bad(str(e)) from None


class _Layer:
    """One checked layer record: where its codes go, its weight's shape, its two streams."""

    def __init__(self, rec: object, index_bits: int, sig: dict[str, tuple[list[int], str]], sections: dict[str, int],
                 chains: dict[tuple[str, str], list], version: int):
        optional = {"module", "tensor", "node"} | ({"live"} if version >= 3 else set())
        rec = _keys(rec, _LAYER_KEYS, "a layer record", frozenset(optional))
        self.name = name = _str(rec["name"], "layer name")
        what = f"layer {name!r}"
        self.module = _str(rec.get("module", name), f"{what}: module", empty=True)
        self.tensor = _str(rec.get("tensor", "weight"), f"{what}: tensor")
        _str(rec.get("node", name), f"{what}: node", empty=True)
        self.shape = _shape(rec["shape"], what)
        self.numel = _numel(self.shape)
        self.prefix = f"{self.module}.parametrizations.{self.tensor}.".lstrip(".")
        recorded = sig.get(self.prefix + "original")
        _need(recorded is not None and recorded[0] == self.shape,
              f"{what} has shape {self.shape} but its tensor is recorded as {recorded[0] if recorded else None}")
        _need(isinstance(rec["kind"], str) and rec["kind"] in _KINDS,
              f"{what}: kind must be one of {', '.join(_KINDS)}")
        self.kind = rec["kind"]
        self.bits = _int(rec["bits"], f"{what}: bits", 1, 16)
        self.k = _int(rec["codebook_size"], f"{what}: codebook_size", 1, min(MAX_CODEBOOK, 1 << self.bits))
        _need(self.kind != "integer" or self.k == 1 << self.bits,
              f"{what}: a fixed-point codebook has 2^bits = {1 << self.bits} entries, not {self.k}")
        self.live = self._live(rec.get("live"), what)
        self.map_bytes = map_bytes(self.live, self.shape)
        self.live_numel = live_numel(self.live, self.shape)  # the counts checked against the shape: no overflow
        self.nnz = _int(rec["nnz"], f"{what}: nnz", 0, self.live_numel)
        # values: one code per kept weight; gaps: one symbol per kept weight plus fillers, each advancing the
        # position by >= 1 inside the live sub-tensor, so at most its size. A one-symbol (0-bit) table is
        # bounded by these counts alone.
        self.values = self._stream(rec["values"], f"{what}: values", self.nnz, self.nnz, 0, self.k - 1)
        filler = (1 << index_bits) - 1
        self.gaps = self._stream(rec["gaps"], f"{what}: gaps", self.nnz, self.live_numel, 0, filler)
        _need((self.gaps[1] == 0) == (self.nnz == 0), f"{what}: gap symbols without kept weights, or the reverse")
        self.section = f"layer:{name}"
        self.codebook_format, self.frac_width = self._codebook(chains.get((self.module, self.tensor)), sig, what,
                                                               version)
        self.codebook_bytes = 0 if self.codebook_format is None else self.k * _ITEMSIZE[self.codebook_format]
        self.nbytes = self.map_bytes + self.values[2] + self.gaps[2] + self.codebook_bytes
        got = sections.get(self.section)
        _need(got is not None, f"section of {what} missing")
        _need(got == self.nbytes, f"section of {what} has {got} bytes, expected {self.nbytes}")

    def _live(self, live: object, what: str) -> dict | None:
        """The checked ``live`` record (version 3): which map, and live counts within the weight's axes."""
        if live is None:
            return None
        _need(isinstance(live, dict) and live.get("map") in LIVE_MAPS,
              f"{what}: live.map must be one of {', '.join(LIVE_MAPS)}")
        d0, d1, _ = _axes(self.shape)
        _need(len(self.shape) >= 1, f"{what}: a 0-d weight has no live map")
        if live["map"] == "channels":
            _keys(live, {"map", "rows", "cols"}, f"{what}: live")
            _int(live["rows"], f"{what}: live.rows", 0, d0)
            _int(live["cols"], f"{what}: live.cols", 0, d1)
        else:
            _keys(live, {"map", "kernels"}, f"{what}: live")
            _int(live["kernels"], f"{what}: live.kernels", 0, d0 * d1)
        return live

    def _codebook(self, chain: list | None, sig: dict[str, tuple[list[int], str]], what: str,
                  version: int) -> tuple[str | None, int | None]:
        """(format the codebook is stored in, or None when it is not stored; a fixed-point layer's frac width).

        The layer's chain must end in its quantizer: a `KMeansWeight` (its
        ``codebook`` spec, a 16-bit float, is the codebook's format; absent or
        float32: the dtype its centroids are recorded in, the weight's, see
        `machop.nn.codes.codebook_format`; version 1: always float32) or a
        `FixedPoint` of ``bits`` width (versions 2 and 3 store no codebook: it is
        the grid of the spec's widths).
        """
        last = chain[-1] if chain else None
        cls = last.get("class") if isinstance(last, dict) else None
        spec = last.get("spec") if isinstance(last, dict) else None
        quantizer = "KMeansWeight" if self.kind == "kmeans" else "FixedPoint"
        _need(cls == quantizer and isinstance(spec, dict),
              f"{what}: its tensor's recorded chain does not end in a {quantizer}")
        if self.kind == "kmeans":
            fmt = spec.get("codebook", "float32")
            _need(isinstance(fmt, str) and fmt in FLOAT_FORMATS,
                  f"{what}: codebook format must be one of {', '.join(FLOAT_FORMATS)}, got {short(fmt)}")
            if version < 2:
                return "float32", None
            centroids = sig.get(f"{self.prefix}{len(chain) - 1}.centroids")
            _need(centroids is not None and centroids[0] == [self.k] and centroids[1] in _FLOAT_DTYPES,
                  f"{what}: its KMeansWeight's centroids must be recorded as {self.k} floats, got {short(centroids)}")
            return codebook_format(fmt, centroids[1]), None
        _need(spec.get("width") == self.bits, f"{what}: {self.bits} bits, but its FixedPoint is {short(spec.get('width'))} wide")
        frac = _int(spec.get("frac_width"), f"{what}: frac_width", 0, MAX_FRAC_WIDTH)
        return ("float32" if version < 2 else None), frac

    @staticmethod
    def _stream(meta: object, what: str, lo: int, hi: int, smin: int, smax: int) -> tuple[dict, int, int]:
        """(meta, count, bytes) of a stream whose count lies in [lo, hi] and symbols in [smin, smax]."""
        meta = _keys(meta, _STREAM_KEYS, what)
        try:
            table, count, *_, nbytes = codec.EncodedStream.check_meta(meta, max_count=hi)
        except CompressedFileError as e:
            raise _Bad(f"{what}: {e}") from None
        _need(count >= lo, f"{what}: {count} symbols, expected at least {lo}")
        syms = table.symbols
        _need(syms.size == 0 or smin <= int(syms[0]) and int(syms[-1]) <= smax,
              f"{what}: symbols outside [{smin}, {smax}]")
        return meta, count, nbytes


class _Header:
    """A model file's header, every field checked against the others and the section lengths; nothing decoded.

    Checks (all on the header alone): exact keys and JSON types everywhere;
    every tensor's shape (<= MAX_RANK dims, <= MAX_NUMEL elements) and dtype;
    raw keys, aliases, index_bits in [1, 16]; each layer's shape equals its
    tensor's, ``nnz`` <= its elements, both streams fit (see `_Layer`), its
    section has exactly the bytes its streams and codebook take; the raw
    section exactly the bytes of the raw tensors; no other section; every
    tensor stored raw, an alias, or re-created for a coded layer (a
    "placeholder": the weight's shape, a scalar, or 1-d of at most 2^16
    elements, under ``original`` or a chain entry that the structure records).
    """

    def __init__(self, header: dict, section_lengths: dict[str, int], name: str, version: int = VERSION):
        self.name = name
        self.version = version
        if header.get("format") != FORMAT_NAME:
            raise CompressedFileError(
                f"{name}: not a machop Huffman model file (format {short(header.get('format'))})")
        try:
            self._check(header, section_lengths)
        except _Bad as e:
            raise CompressedFileError(f"{name}: malformed header ({e})") from None

    def _check(self, header: dict, section_lengths: dict[str, int]) -> None:
        _keys(header, _HEADER_KEYS - {"dense_params"}, "the header", frozenset({"dense_params"}))
        self.structure = _check_structure(header["structure"])
        self.model_name: str | None = self.structure["model"]
        self.shrunk = bool(self.structure.get("shrunk"))  # the registry model with channels removed (shrink pass)
        tensors = header["tensors"]
        _need(isinstance(tensors, list), "tensors must be a list")
        self.signature: list[list] = []
        self.sig: dict[str, tuple[list[int], str]] = {}
        for entry in tensors:
            _need(isinstance(entry, list) and len(entry) == 3, "a tensors entry must be [key, shape, dtype]")
            key = _str(entry[0], "a tensor key")
            _need(key not in self.sig, f"tensor {key!r} is recorded twice")
            shape = _shape(entry[1], f"tensor {key!r}")
            _need(isinstance(entry[2], str) and entry[2] in _DTYPES,
                  f"tensor {key!r} has unknown dtype {short(entry[2])}")
            self.signature.append([key, shape, entry[2]])
            self.sig[key] = (shape, entry[2])
        raw = header["raw"]
        _need(isinstance(raw, list) and all(isinstance(k, str) and k in self.sig for k in raw),
              "raw must list recorded tensors")
        _need(len(set(raw)) == len(raw), "raw lists a tensor twice")
        self.raw_keys: list[str] = raw
        aliases = header["aliases"]
        _need(isinstance(aliases, dict) and all(isinstance(v, str) for v in aliases.values()),
              "aliases must map tensor names to tensor names")
        raw_set = set(raw)
        for key, first in aliases.items():
            _need(key in self.sig and first in self.sig and self.sig[key] == self.sig[first],
                  f"alias {key!r} names a tensor that is not recorded, or one of another shape")
            _need(key not in raw_set and first not in aliases and key != first,
                  f"alias {key!r} is stored raw, or names another alias")
        self.aliases: dict[str, str] = aliases
        self.index_bits = _int(header["index_bits"], "index_bits", 1, 16)
        if "dense_params" in header:
            _int(header["dense_params"], "dense_params", 0, 1 << 62)
        layers = header["layers"]
        _need(isinstance(layers, list), "layers must be a list")
        chains = _chains(self.structure)
        self.layers = [_Layer(rec, self.index_bits, self.sig, section_lengths, chains, self.version) for rec in layers]
        names = [layer.name for layer in self.layers]
        _need(len(set(names)) == len(names), "a layer is recorded twice")
        prefixes = [layer.prefix for layer in self.layers]
        _need(len(set(prefixes)) == len(prefixes), "two layer records code the same tensor")
        expected = {"raw", *(layer.section for layer in self.layers)}
        extra = set(section_lengths) - expected
        _need(not extra, f"unknown section {short(sorted(extra)[0]) if extra else ''}")
        _need("raw" in section_lengths, "raw section missing")
        self.raw_formats = [raw_format(k, self.sig[k][1], chains, self.version) for k in raw]  # stored dtypes
        self.raw_bytes = [_numel(self.sig[k][0]) * _ITEMSIZE[f.dtype] for k, f in zip(raw, self.raw_formats)]
        _need(section_lengths["raw"] == sum(self.raw_bytes),
              f"raw section has {section_lengths['raw']} bytes, expected {sum(self.raw_bytes)}")
        # tensors not stored: re-created for a coded layer (placeholders)
        by_prefix = {layer.prefix: layer for layer in self.layers}
        self.placeholders: list[tuple[str, list[int], str]] = []
        self.placeholder_bytes = 0
        for key, shape, dtype in self.signature:
            if key in raw_set or key in aliases:
                continue
            head, found, tail = f".{key}".partition(".parametrizations.")  # a dict lookup: no layers x tensors loop
            layer = by_prefix.get(f"{head}.parametrizations.{tail.partition('.')[0]}.".lstrip(".")) if found else None
            _need(layer is not None and key.startswith(layer.prefix), f"tensor {key!r} is neither stored raw nor coded")
            rest = key[len(layer.prefix):]
            index, _, attr = rest.partition(".")
            n_chain = len(chains.get((layer.module, layer.tensor), ()))
            _need(rest == "original" or index.isdigit() and int(index) < n_chain and attr and "." not in attr,
                  f"tensor {key!r} belongs to no parametrization the structure records")
            _need(shape == layer.shape or len(shape) == 0 or len(shape) == 1 and shape[0] <= MAX_CODEBOOK,
                  f"tensor {key!r} of shape {shape} fits neither its weight {layer.shape} nor a codebook")
            self.placeholders.append((key, shape, dtype))
            self.placeholder_bytes += _numel(shape) * _ITEMSIZE[dtype]

    def fail(self, message: str) -> CompressedFileError:
        return CompressedFileError(f"{self.name}: {message}")


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


class _Decoder:
    """Decodes a checked header's sections into a target graph, in the order that bounds memory.

    1. choose the target graph and check the file's tensors against it
       (`_target`): nothing of the file is decoded before;
    2. the re-created tensors must fit ``PLACEHOLDER_FACTOR`` x the model;
    3. raw tensors (bounded by the bytes present), placeholders, structure;
    4. coded layers: every count is at most the model's weight's size;
    5. the full state-dict layout is compared once more, then loaded.
    """

    def __init__(self, hdr: _Header, sections: dict[str, bytes], file_bytes: int):
        self.hdr, self.sections, self.file_bytes = hdr, sections, file_bytes
        self.name = hdr.name

    def fail(self, message: str) -> CompressedFileError:
        return self.hdr.fail(message)

    # ------------------------------------------------------------------ 1. the target
    def target(self, graph: MaseGraph | None, model: nn.Module | MaseGraph | None,
               context: PassContext | None, saved_class: str | None = None) -> tuple[MaseGraph, bool]:
        """(graph to load into, whether the file's structure must be re-created on it); architecture checked.

        A graph or model of your own must be of the class the file records
        (or ``saved_class``: `machop.ir.serialize.check_class`); a shrunk
        one is resized to the file's shapes (`fit_to_file`), checked first.
        """
        hdr = self.hdr
        if graph is not None:
            ctx_name = graph.context.model_name
            if ctx_name is None:  # a registry graph is checked by name below
                self._fit(check_class, hdr.structure, graph, self.name, saved_class)
            if same_signature(state_signature(graph.model), hdr.signature):
                return graph, False
            if ctx_name is not None and ctx_name != hdr.model_name:
                raise self.fail(
                    f"file holds a {hdr.model_name or hdr.structure.get('class')}, the graph is a {ctx_name}")
            if has_compression(graph.model):
                if ctx_name is None:
                    raise self.fail("the graph already holds masks or codebooks that differ from the file's; "
                                    "decode into a fresh model")
                return self._fresh(graph), True
            if ctx_name is None:
                self._fit(fit_to_file, graph.model, hdr.signature, hdr.structure, self.name)
            try:
                self._check_architecture(graph.model)
            except CompressedFileError:
                if not (hdr.shrunk and ctx_name is not None):
                    raise
                return self._fresh(graph), True  # the registry model, not (yet) shrunk as the file's
            return graph, True
        if model is not None:
            try:
                graph = base_graph(hdr.structure, model, self.name, context, signature=hdr.signature,
                                   saved_class=saved_class)  # the class checked, a shrunk model resized
            except ValueError as e:  # machop.ir.serialize checks the structure record too
                raise self.fail(_without(str(e), self.name)) from None
            self._check_architecture(graph.model)
            return graph, True
        return self._registry_graph(context), True

    def _fit(self, check, *args) -> None:
        """``check(*args)`` (`check_class`, `fit_to_file`), its one-line ValueError as this file's `CompressedFileError`."""
        try:
            check(*args)
        except ValueError as e:
            raise self.fail(_without(str(e), self.name)) from None

    def _fresh(self, graph: MaseGraph) -> MaseGraph:
        """A new graph of the registry model ``graph``'s context names, keeping its context, dummy input, device."""
        fresh = self._registry_graph(graph.context)
        fresh.dummy_input = graph.dummy_input
        fresh.model.to(graph.device)
        return fresh

    def _check_architecture(self, model: nn.Module) -> None:
        try:
            check_architecture(SimpleNamespace(model=model), self.hdr.signature, self.hdr.structure)
        except ArchitectureMismatch as e:
            what = self.hdr.model_name or self.hdr.structure.get("class") or "model"
            raise self.fail(f"the model does not match the file's {what}: {e}") from None

    def _registry_graph(self, context: PassContext | None) -> MaseGraph:
        """A new graph of the registry model: the one ``context`` names (with its data set), else the file's.

        Built on the meta device first (no memory) and checked against the
        file; a model named by the file alone must also fit its size limit.
        A shrunk model's file (``structure.shrunk``) gets the registry model
        with its Conv/Linear/BatchNorm layers resized to the file's shapes
        (none larger than the registry's), made real at that size only.
        """
        hdr = self.hdr
        if hdr.model_name is None:
            try:
                base_graph(hdr.structure, None, self.name, context)  # raises: your own model needs passing
            except ValueError as e:
                raise self.fail(_without(str(e), self.name)) from None
            raise self.fail("holds no registry model")  # not reached
        if hdr.model_name not in MODELS:
            raise self.fail(f"holds a {hdr.model_name!r}, which is not in this machop's model registry")
        asked = context is not None and context.model_name is not None
        if asked and context.model_name != hdr.model_name:
            raise self.fail(f"file holds a {hdr.model_name}, not the {context.model_name} asked for")
        by_file = not (asked and context.dataset_info is not None)
        if by_file:
            if hdr.structure["dataset_info"] is None:
                raise self.fail("does not name its model's data set: give the model, or a context with dataset_info")
            info = DatasetInfo(**hdr.structure["dataset_info"])
        else:
            info = context.dataset_info
        try:
            shrunk_to = base_signature(hdr.signature, hdr.structure) if hdr.shrunk else None
            meta = registry_skeleton(hdr.model_name, info, shrunk_to)
        except ShrunkShapeError as e:  # a layer the file claims larger than the registry's, or reshaped
            raise self.fail(f"the model does not match the file's shrunk {hdr.model_name}: {e}") from None
        except Exception as e:  # the registry model refuses this data set (e.g. images too small)
            raise self.fail(f"cannot build a {hdr.model_name} for {info}: {type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}") from None
        self._check_architecture(meta)
        size = _state_bytes(meta)
        allowed = max(MODEL_BYTES_FLOOR, MODEL_BYTES_PER_FILE_BYTE * self.file_bytes)
        if by_file and size > allowed:
            raise self.fail(f"names a {hdr.model_name} of {size} bytes, more than a {self.file_bytes}-byte file "
                            f"can hold (at most {allowed}); pass the model or a context naming it to load it anyway")
        context = context if context is not None else PassContext()
        context.model_name, context.dataset_info, context.shrunk = hdr.model_name, info, hdr.shrunk
        return MaseGraph(materialize(meta) if hdr.shrunk else get_model(hdr.model_name, info), context=context)

    # ------------------------------------------------------------------ 2.-5.
    def state(self, graph: MaseGraph, structured: bool) -> dict[str, torch.Tensor]:
        """The state dict to load (coded tensors as zero placeholders); the structure re-created if ``structured``."""
        hdr = self.hdr
        budget = PLACEHOLDER_FACTOR * _state_bytes(graph.model) + PLACEHOLDER_SLACK
        if hdr.placeholder_bytes > budget:
            raise self.fail(f"the tensors it re-creates take {hdr.placeholder_bytes} bytes, more than "
                            f"{PLACEHOLDER_FACTOR}x the model ({budget} bytes)")
        state: dict[str, torch.Tensor] = {}
        raw, at = self.sections["raw"], 0
        for key, size, fmt in zip(hdr.raw_keys, hdr.raw_bytes, hdr.raw_formats):
            shape, dtype = hdr.sig[key]
            chunk = raw[at : at + size]
            if dtype == "bool" and chunk.translate(None, b"\x00\x01"):
                raise self.fail(f"tensor {key!r} is bool but holds bytes other than 0 and 1")
            state[key] = _raw_tensor(chunk, shape, dtype, fmt)
            at += size
        for key, shape, dtype in hdr.placeholders:
            state[key] = torch.zeros(shape, dtype=_DTYPES[dtype])
        for key, first in hdr.aliases.items():
            if first not in state:
                raise self.fail(f"alias {key!r} names {first!r}, which is not stored")
            state[key] = state[first]
        if structured:
            inserted, nodes = len(hdr.structure["inserted"]), sum(1 for _ in graph.nodes)
            if inserted > INSERTED_PER_NODE * nodes:  # each insertion recompiles the graph: keep it the model's size
                raise self.fail(f"it inserts {inserted} modules into a graph of {nodes} nodes "
                                f"(at most {INSERTED_PER_NODE} per node)")
            try:
                apply_structure(graph, hdr.structure, state)
            except Exception as e:  # rebuild() calls constructors with the file's specs: any error is the file's
                detail = _without(str(e), "saved structure") if isinstance(e, ValueError) else why(e)
                raise self.fail(f"cannot re-create the model's structure ({detail})") from None
        return state

    def codes(self, graph: MaseGraph) -> list[tuple[str, str, WeightCodes]]:
        """Every coded layer decoded (its weight's shape is the model's: counts are bounded by it)."""
        out = []
        for layer in self.hdr.layers:
            try:
                out.append((layer.module, layer.tensor, self._layer(layer)))
            except CompressedFileError as e:
                msg = str(e)
                raise self.fail(f"layer {layer.name!r}: {msg}" if not msg.startswith(self.name) else
                                msg.removeprefix(f"{self.name}: ")) from None
        return out

    def _layer(self, layer: _Layer) -> WeightCodes:
        section = self.sections[layer.section]
        maps, data = section[: layer.map_bytes], section[layer.map_bytes :]
        v_len, g_len = layer.values[2], layer.gaps[2]
        values = codec.decode(codec.EncodedStream.from_parts(layer.values[0], data[:v_len], max_count=layer.nnz))
        gaps = codec.decode(codec.EncodedStream.from_parts(layer.gaps[0], data[v_len : v_len + g_len],
                                                           max_count=layer.live_numel))
        positions = flat_positions(layer.live, maps, layer.shape, gap_decode(gaps, self.hdr.index_bits,
                                                                             layer.live_numel))
        del gaps
        if positions.size != values.size or values.size != layer.nnz:
            raise self.fail(f"layer {layer.name!r}: {positions.size} positions for {values.size} values")
        if values.size and (values.min() < 0 or values.max() >= layer.k):
            raise self.fail(f"layer {layer.name!r}: codes outside the codebook")
        if layer.codebook_format is None:  # version >= 2 fixed point: the grid of the recorded widths
            codebook = fixed_point_grid(layer.bits, layer.frac_width)
        else:
            # in its stored format: load_weight_codes casts it to the centroids' dtype (exact)
            codebook = _tensor_from(data[v_len + g_len :], [layer.k], layer.codebook_format)
        flat_codes = np.zeros(layer.numel, dtype=np.int64)
        flat_codes[positions] = values
        flat_mask = np.zeros(layer.numel, dtype=bool)
        flat_mask[positions] = True
        return WeightCodes(
            codes=torch.from_numpy(flat_codes).reshape(layer.shape), codebook=codebook,
            mask=torch.from_numpy(flat_mask).reshape(layer.shape), bits=layer.bits, kind=layer.kind,
            codebook_format=layer.codebook_format or "float32",
        )

    def load(self, graph: MaseGraph, state: dict[str, torch.Tensor], codes: list[tuple[str, str, WeightCodes]]) -> None:
        got = state_signature(graph.model)
        if not same_signature(got, self.hdr.signature):
            raise self.fail("model does not match the file: " + first_mismatch(got, self.hdr.signature))
        try:
            graph.model.load_state_dict(state, strict=True)
            for qualname, tensor, wc in codes:
                load_weight_codes(graph.model.get_submodule(qualname), wc, tensor)
        except Exception as e:  # the structure the file names does not take its codes (a kind or grid mismatch)
            raise self.fail(f"cannot load the decoded weights ({why(e)})") from None


def _without(message: str, name: str) -> str:
    """``message`` without a leading file name (`fail` adds it back), on one line."""
    message = (message.splitlines() or [""])[0]
    return message.removeprefix(f"{name}: ").removeprefix(f"{name} ")


def check_header(header: dict, section_lengths: dict[str, int], name: str = "compressed file",
                 version: int = VERSION) -> None:
    """Check a model file's header against itself and its section lengths (CompressedFileError, one line)."""
    _Header(header, section_lengths, name, version)


def read_header(path: str | os.PathLike) -> dict:
    """The checked header of the model file at ``path``; reads the 20-byte prefix and the header only.

    Refuses (`CompressedFileError`, one line) a path that is missing, a
    directory or not a regular file, a file that is not a machop model file,
    whose size differs from what its header claims, or whose header is
    malformed. The sections' CRCs and the architecture are not checked.
    """
    with ContainerFile(path) as f:
        _Header(f.header, {n: length for n, length, _ in f.entries}, f.name, f.version)
        return f.header


def _decode(header: dict, sections: dict[str, bytes], file_bytes: int, graph: MaseGraph | None, name: str,
            context: PassContext | None, model: nn.Module | MaseGraph | None, version: int,
            saved_class: str | None = None) -> MaseGraph:
    hdr = _Header(header, {n: len(d) for n, d in sections.items()}, name, version)
    decoder = _Decoder(hdr, sections, file_bytes)
    graph, structured = decoder.target(graph, model, context, saved_class)
    state = decoder.state(graph, structured)
    codes = decoder.codes(graph)
    decoder.load(graph, state, codes)
    return graph


def decode_model(
    data: bytes,
    graph: MaseGraph | None = None,
    name: str = "compressed file",
    context: PassContext | None = None,
    model: nn.Module | MaseGraph | None = None,
    saved_class: str | None = None,
) -> MaseGraph:
    """Load a compressed file (``data``: its bytes) into a graph; returns the graph that holds the decoded model.

    - ``graph`` with the file's exact state-dict layout (e.g. the graph
      that was encoded): loaded in place.
    - ``graph`` of the file's dense architecture with no masks or codebooks
      (e.g. ``MaseGraph(MyNet())``): the file's structure is re-created on it
      (a shrunk model's layers first resized to the file's shapes, none
      larger than the model's).
    - ``graph`` of a registry model with another structure: a new graph of
      that model is built, keeping ``graph.context`` and ``graph.dummy_input``.
    - ``graph`` None: ``model`` if given (your own model, or a MaseGraph of
      it), else the registry model ``context`` names (``context.model_name``
      must then be the file's; built for ``context.dataset_info``), else the
      one the file names (at most ``MODEL_BYTES_PER_FILE_BYTE`` bytes per byte
      of the file, or ``MODEL_BYTES_FLOOR``).
    - anything else: CompressedFileError naming the first mismatching
      tensor, raised before any weight is touched.

    A graph or model of your own must be of the class the file records: a
    file of a ``TinyNet`` is refused by an ``OtherNet`` even of the same
    shapes; ``saved_class="OldName"`` opens it into a class renamed since.

    Order: the container and every header field are checked (nothing
    decoded), then the target model is chosen and the file's tensors are
    checked against it, and only then is anything decoded or allocated, each
    allocation bounded by the model's size or by the bytes present. Every
    refusal is a one-line `CompressedFileError` prefixed with ``name``.
    """
    header, sections = unpack_container(data, name)
    return _decode(header, sections, len(data), graph, name, context, model, version_of(data), saved_class)


def read_file(path: str | os.PathLike) -> bytes:
    """The bytes of the model file at ``path``, for `decode_model`; read in the order of the checks.

    The path must be a regular file (not a directory, FIFO or device: never
    read); its 20-byte prefix, then its header (bounded) are read and checked,
    every header field included (`read_header`), and only when the file's size
    is what the header claims is the rest read. CompressedFileError (one line;
    `machop.files.NoSuchFile`, also a FileNotFoundError, for a missing path).
    """
    with ContainerFile(path) as f:
        _Header(f.header, {n: length for n, length, _ in f.entries}, f.name, f.version)
        return f.read_all()


def load_compressed(
    path: str | os.PathLike, model: nn.Module | MaseGraph | None = None, context: PassContext | None = None,
    saved_class: str | None = None,
) -> MaseGraph:
    """A MaseGraph decoded from a compressed file.

    ``model``: your own model (or a MaseGraph of it) to decode into, of the
    class the file records (``saved_class="OldName"``: the class it was
    saved as, for a class renamed since); its architecture is checked
    against the file first, a shrunk model's layers resized to the file's
    shapes (none larger than the model's). None: the registry
    model ``context`` names (built for its ``dataset_info``), else the one the
    file names. ``context`` (default: a new one) becomes the graph's context.
    Any file that cannot be used raises a one-line `CompressedFileError`
    (a ValueError; a missing one `machop.files.NoSuchFile`, also a
    FileNotFoundError), before anything of it is decoded when its header,
    size or architecture is wrong.
    """
    return decode_model(read_file(path), None, name=str(path), context=context, model=model, saved_class=saved_class)


def file_header(data: bytes, name: str = "compressed file") -> dict:
    """The checked JSON header of a compressed model file in memory (for tools and reports)."""
    header, entries = unpack_header(data, name)
    _Header(header, {n: length for n, length, _ in entries}, name, version_of(data))
    return header


__all__ = [
    "FORMAT_NAME", "encode_model", "decode_model", "gap_encode", "gap_decode", "file_header", "read_header",
    "read_file", "check_header", "load_compressed",
]
