"""Fuzzing the ``.mchz`` reader with hostile headers, and its memory ceiling.

A real compressed file (LeNet-5 on 16x16 images: pruned weights and
activations, k-means convolutions with float16 codebooks and float16
biases, fixed-point linear layers with inserted input quantizers; ~12 kB) is taken apart, its JSON header mutated (sizes,
counts, nbits, blocks, sync fields, shapes, code lengths, symbol runs, dtypes,
index_bits, codebook sizes, nnz, tensor signatures, the structure record,
nesting depth, the section table, section lengths, the live maps' records and bits) and re-packed with valid
CRCs (`pack_container`). Every outcome must be a one-line `CompressedFileError`
or an exact decode (the state dict equal to the original's, byte for byte).

The one exception is a mutation of *content* (a code table's symbol values or
code lengths, the raw tensors' order, ``index_bits``): the CRCs are recomputed,
so such a file is a valid file of another model (no checksum ties the header
to what the payload means). For those the decode may also differ, but must
be consistent: the same state-dict layout, and re-encoding it and decoding
again gives the same model.

The memory ceiling is measured in a fresh subprocess (``ru_maxrss`` is a
process-wide peak): the hypothesis examples plus the hand-made worst cases of
the security report are decoded there, as ``ch test`` does (`load_compressed`
with the config's model) and from the file alone.
"""

from __future__ import annotations

import copy
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machop.config import ConfigError
from machop.datasets import DatasetInfo
from machop.files import BadFileError
from machop.ir import MaseGraph, PassContext
from machop.models import get_model
from machop.ir.mchz import CompressedFileError, EncodedStream, decode_model, encode_model, load_compressed
from machop.passes.graph.transforms.huffman import HuffmanArgs, check_decode_args
from machop.ir.mchz.format import (
    MAGIC,
    MAX_HEADER_BYTES,
    MAX_HEADER_DEPTH,
    PREFIX_SIZE,
    VERSION,
    deflate_header,
    inflate_header,
    pack_container,
    read_container_header,
    unpack_container,
)
from machop.ir.mchz.model import file_header, map_bytes, read_file, read_header
from machop.nn import get_mask
from machop.passes.graph.transforms.prune import prune_transform_pass
from machop.passes.graph.transforms.quantize import quantize_transform_pass

REPO = Path(__file__).resolve().parents[5]
INFO = DatasetInfo("tiny16", 10, 1, (16, 16))
NAME = "fuzz.mchz"
QUANTIZE = {"by": "type", "conv2d": {"config": {"name": "kmeans", "weight_bits": 3, "codebook": "float16", "bias": "float16"}},
            "linear": {"config": {"name": "integer", "data_in_width": 8, "data_in_frac_width": 4, "weight_width": 5,
                                  "weight_frac_width": 6, "bias_width": 8, "bias_frac_width": 6}}}
FUZZ = settings(max_examples=300, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MEMORY_EXAMPLES = 40  # hypothesis examples also decoded in the memory subprocess
CEILING_MB = 200


def make_file() -> bytes:
    torch.manual_seed(0)
    graph = MaseGraph(get_model("lenet5", INFO), context=PassContext(model_name="lenet5", dataset_info=INFO))
    graph, _ = prune_transform_pass(graph, {"weight": {"sparsity": 0.8}, "activation": {"sparsity": 0.3}})
    with torch.no_grad():  # dead structure, so that the file holds live maps of both kinds
        get_mask(graph.model.conv2, "weight").view(50 * 20, 25)[::3] = False  # conv2: dead kernels
        get_mask(graph.model.fc1, "weight")[::3] = False  # fc1: dead rows
    graph, _ = quantize_transform_pass(graph, QUANTIZE)
    data = encode_model(graph)[0]
    assert {layer.get("live", {}).get("map") for layer in file_header(data)["layers"]} >= {"channels", "kernels"}
    return data


def state_of(model: torch.nn.Module) -> dict[str, tuple[str, tuple, bytes]]:
    """Every state-dict entry as (dtype, shape, bytes): equality is bit-exact (NaN payloads included)."""
    out = {}
    for key, t in model.state_dict().items():
        flat = t.detach().cpu().contiguous().reshape(-1)
        out[key] = (str(t.dtype), tuple(t.shape), flat.view(torch.uint8).numpy().tobytes())
    return out


class Original:
    def __init__(self):
        self.data = make_file()
        self.header, sections = unpack_container(self.data)
        text = inflate_header(self.data[PREFIX_SIZE : PREFIX_SIZE + struct.unpack_from("<I", self.data, 12)[0]])
        self.order = [e["name"] for e in json.loads(text)["sections"]]
        self.sections = [(name, sections[name]) for name in self.order]
        self.state = state_of(decode_model(self.data).model)
        self.paths = _paths(self.header)
        self.benign = [p for p in self.paths if p[-1] in BENIGN_KEYS or p in BENIGN_PATHS]


@pytest.fixture(scope="module")
def original() -> Original:
    return Original()


# --------------------------------------------------------------------------- mutations


def _paths(obj, prefix=()) -> list[tuple]:
    """The path of every value inside ``obj`` (containers included)."""
    out = []
    for key, value in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
        out.append(prefix + (key,))
        if isinstance(value, (dict, list)):
            out.extend(_paths(value, prefix + (key,)))
    return out


def _parent(obj, path):
    for key in path[:-1]:
        if isinstance(obj, dict) and key in obj or isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return None
    return obj


def _deep(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


N8, N5 = 10**8, 5 * 10**8
INTERESTING = [
    0, 1, -1, 2, 3, 7, 8, 16, 17, 31, 32, 33, 63, 64, 1024, 1 << 16, (1 << 16) + 1, 1 << 20, (1 << 20) + 1, N8, N5,
    1 << 31, 1 << 32, 1 << 40, (1 << 40) + 1, (1 << 63) - 1, 1 << 63, 1 << 64, 10**30, -(1 << 63), -(1 << 63) - 1,
    0.5, 1.0, 1e8, 1e300, -0.0, True, False, None, "", "0", "1", "W", "X", "float64", "bool", "int64", "kmeans",
    "integer", "conv1", "fc1", "raw", "layer:fc1", "WeightMask", "KMeansWeight", "FixedPoint", "Compact", "float16",
    "bfloat16", "float32", {"dtype": "bfloat16"}, {"bits": 3, "codebook": "bfloat16"}, [], {}, [N8], [N5],
    [-1], [0], [1 << 40, 1 << 40], [1 << 62, 1 << 62], [0, 1 << 62], [3, -2], [[0, 1]], [[0, 2]], [[(1 << 63) - 1, 2]],
    [[0, 10**6]], [[-5, 3]], [[0, 1]] * 3, [[0, "1"]], [[0]], {"x": 1}, _deep(MAX_HEADER_DEPTH + 8), [1] * 40,
    "channels", "kernels", {"map": "channels", "rows": 1, "cols": 1}, {"map": "kernels", "kernels": 1 << 40},
    {"map": "kernels", "kernels": 0}, {"map": "channels", "rows": N8, "cols": N8}, {"map": "rows"},
]
# fields that no decoded tensor depends on: a new value of the same type must still decode exactly
BENIGN_KEYS = {"node", "dense_params", "seed", "target", "method", "scope", "granularity"}
BENIGN_PATHS = {("structure", "class"), ("structure", "dataset_info", "name")}
CONTENT_KEYS = {"symbols", "lengths"}  # a code table's values: a changed one can be a valid table of another model
# how stored values read (version 2): a 16-bit format of the same size, a fixed-point bias's frac width
SPEC_CONTENT_KEYS = {"dtype", "codebook", "width", "frac_width"}


def is_content(path: tuple) -> bool:
    if path[:2] == ("structure", "parametrizations") and (
            "spec" in path[:-1] and path[-1] in SPEC_CONTENT_KEYS or path[-1] in ("spec", "chain") or len(path) <= 5):
        return True  # a chain's spec (or the chain, or the record) read differently: another model's values
    return bool(path) and (path[0] in ("raw", "index_bits") or any(k in CONTENT_KEYS for k in path if isinstance(k, str)))


values = st.one_of(st.sampled_from(INTERESTING), st.integers(-(1 << 70), 1 << 70), st.integers(-3, 70),
                   st.text(alphabet="0123456789ABVWX-.", max_size=4))
STREAM_FIELDS = ["count", "nbits", "block", "sync_base", "sync_width", "symbols", "lengths"]
LIVE_FIELDS = ["map", "rows", "cols", "kernels", "extra"]
EXTRA_KEYS = ["conv1.parametrizations.weight.1.extra", "fc1.parametrizations.weight.0.mask", "fc1.parametrizations.weight.7.x",
              "fc1.parametrizations.weight.original", "bogus", "conv1_act_prune.channel_mask", "conv1.bias", "fc2.weight"]
SHAPES = [[N5], [N8], [1 << 40], [-1], [3, -2], [1 << 62, 1 << 62], [], [8], [500, 50], [20, 1, 5, 5], [0, 1 << 62],
          [1] * 40, [1.5], ["1"], None]
DTYPES = ["float32", "float64", "bool", "uint8", "int64", "bfloat16", "complex64", 1]


@st.composite
def mutation(draw, orig: "Original") -> tuple:
    """One mutation, as plain data (hypothesis prints it on failure)."""
    paths = orig.paths
    kind = draw(st.sampled_from(["replace", "replace", "nudge", "delete", "add_key", "append", "extra_tensor",
                                 "huge_layer", "stream", "stream", "table", "deep", "section_bytes", "benign",
                                 "live", "live", "map_bit"]))
    if kind == "benign":
        return (kind, draw(st.sampled_from(orig.benign)))
    if kind in ("replace", "append"):
        return (kind, draw(st.sampled_from(paths)), draw(values))
    if kind == "add_key":
        return (kind, draw(st.sampled_from(paths)), draw(values), draw(st.sampled_from(["extra", "count", "name", "module"])))
    if kind == "nudge":
        return (kind, draw(st.sampled_from(paths)), draw(st.sampled_from([-9, -2, -1, 1, 2, 7, 8, 9, 1 << 20, 1 << 40])))
    if kind in ("delete", "deep"):
        return (kind, draw(st.sampled_from(paths)))
    if kind == "extra_tensor":
        return (kind, draw(st.sampled_from(EXTRA_KEYS)), draw(st.sampled_from(SHAPES)), draw(st.sampled_from(DTYPES)),
                draw(st.booleans()))
    if kind == "huge_layer":
        return (kind, draw(st.integers(0, 3)), draw(st.sampled_from([N8, N5, 1 << 40, 1 << 41])), draw(st.booleans()))
    if kind == "stream":
        return (kind, draw(st.integers(0, 3)), draw(st.sampled_from(["values", "gaps"])),
                draw(st.sampled_from(STREAM_FIELDS)), draw(values))
    if kind == "table":
        return (kind, draw(st.integers(0, 4)), draw(st.sampled_from(["name", "length", "crc32", "extra"])), draw(values))
    if kind == "live":  # a live record's field set (or the record added, removed) on any layer
        return (kind, draw(st.integers(0, 3)), draw(st.sampled_from(LIVE_FIELDS + ["add", "remove"])), draw(values))
    if kind == "map_bit":  # one bit of a layer's live maps flipped (its section's CRC recomputed)
        return (kind, draw(st.integers(0, 3)), draw(st.integers(0, 1 << 12)))
    return (kind, draw(st.integers(0, 4)), draw(st.sampled_from(["cut", "grow", "empty"])))


def apply(header: dict, sections: list[tuple[str, bytes]], table_edits: list, m: tuple) -> bool:
    """Apply mutation ``m`` in place; returns whether it may change the file's content (see the module docstring).

    A mutation that an earlier one made impossible (its target gone or of another type) is dropped.
    """
    try:
        return _apply(header, sections, table_edits, m)
    except (KeyError, IndexError, TypeError, AttributeError, ZeroDivisionError):
        return False


def _apply(header: dict, sections: list[tuple[str, bytes]], table_edits: list, m: tuple) -> bool:
    kind = m[0]
    if kind in ("replace", "nudge", "delete", "add_key", "append", "deep", "benign"):
        path = m[1]
        parent = _parent(header, path)
        key = path[-1]
        if parent is None or (isinstance(parent, list) and not (isinstance(key, int) and key < len(parent))) \
                or (isinstance(parent, dict) and key not in parent):
            return False
        if kind == "replace":
            parent[key] = copy.deepcopy(m[2])
        elif kind == "nudge":
            value = parent[key]
            parent[key] = value + m[2] if type(value) is int else m[2]
        elif kind == "delete":
            del parent[key]
        elif kind == "benign":
            value = parent[key]
            parent[key] = value + 1 if type(value) is int else value / 2 if type(value) is float else f"{value}-x"
        elif kind == "deep":
            parent[key] = _deep(MAX_HEADER_DEPTH + 1 + len(path) % 5)
        elif kind == "add_key" and isinstance(parent[key], dict):
            parent[key][m[3]] = copy.deepcopy(m[2])
        elif kind == "append" and isinstance(parent[key], list):
            parent[key].append(copy.deepcopy(m[2]))
        else:
            parent[key] = copy.deepcopy(m[2])
        return is_content(path)
    if kind == "extra_tensor":
        _, key, shape, dtype, raw = m
        header["tensors"].append([key, shape, dtype])
        if raw:
            header["raw"].append(key)
        return False
    if kind == "huge_layer":  # the report: a layer of N weights, all kept, one-symbol tables, no payload
        _, index, n, with_tensors = m
        layer = header["layers"][index]
        old = layer["shape"]
        books = {name: codebook_of(data, layer) for name, data in sections}  # measured on the record before the change
        one = {"count": n, "nbits": 0, "block": 1024, "sync_base": 0, "sync_width": 0, "symbols": [[0, 1]], "lengths": "0"}
        layer.update(shape=[n], nnz=n, values=dict(one), gaps=dict(one))
        layer.pop("live", None)
        prefix = f"{layer['name']}.parametrizations.weight."
        if with_tensors:
            for entry in header["tensors"]:
                if entry[0].startswith(prefix) and entry[1] == old:
                    entry[1] = [n]
        for i, (name, data) in enumerate(sections):
            if name == f"layer:{layer['name']}":
                sections[i] = (name, books[name])
        return False
    if kind == "stream":
        _, index, which, field, value = m
        header["layers"][index][which][field] = copy.deepcopy(value)
        return field in CONTENT_KEYS
    if kind == "table":
        table_edits.append(m[1:])
        return False
    if kind == "live":
        _, index, field, value = m
        layer = header["layers"][index]
        if field == "remove":
            del layer["live"]
        elif field == "add":
            layer["live"] = copy.deepcopy(value)
        else:
            layer["live"][field] = copy.deepcopy(value)
        return False
    if kind == "map_bit":  # a flip changes a map's count of ones (or sets a padding bit): always refused
        _, index, bit = m
        layer = header["layers"][index]
        n = map_bytes(layer["live"], layer["shape"])
        at = [i for i, (name, _) in enumerate(sections) if name == f"layer:{layer['name']}"][0]
        data = bytearray(sections[at][1])
        data[(bit // 8) % n] ^= 1 << (bit % 8)
        sections[at] = (sections[at][0], bytes(data))
        return False
    _, index, how = m  # section_bytes: pack_container records the new length: the layer records then disagree
    name, data = sections[index]
    sections[index] = (name, data[:-1] if how == "cut" else data + b"\x00" if how == "grow" else b"")
    return how == "grow"  # a cut and a grow of one section make a valid file whose last byte is 0


def codebook_of(section: bytes, layer: dict) -> bytes:
    """The codebook bytes at the end of a layer's section (none for a fixed-point layer; 2 per entry in float16)."""
    try:
        streams = sum(EncodedStream.check_meta(layer[k])[-1] for k in ("values", "gaps"))
        streams += map_bytes(layer.get("live"), layer["shape"])
    except (CompressedFileError, KeyError, TypeError):  # an earlier mutation broke the record: leave the section
        return section
    return section[streams:]


def repack(header: dict, sections: list[tuple[str, bytes]], table_edits: list) -> bytes:
    """`pack_container`, then the section table edited and the header CRC recomputed."""
    data = pack_container(header, sections)
    if not table_edits:
        return data
    head_len = struct.unpack_from("<I", data, 12)[0]
    text = json.loads(inflate_header(data[PREFIX_SIZE : PREFIX_SIZE + head_len]))
    for index, field, value in table_edits:
        entry = text["sections"][index % len(text["sections"])]
        entry[field] = copy.deepcopy(value)
    return container(json.dumps(text, separators=(",", ":")).encode(), data[PREFIX_SIZE + head_len :])


def container(text: bytes, body: bytes = b"", compress: bool = True) -> bytes:
    """A container around header text ``text`` (any bytes) with a valid header CRC."""
    head = deflate_header(text) if compress else text
    fixed = struct.pack("<8sHHI", MAGIC, VERSION, 0, len(head))
    return fixed + struct.pack("<I", zlib.crc32(head, zlib.crc32(fixed))) + head + body


def mutate(orig: Original, mutations: list[tuple]) -> tuple[bytes, bool]:
    header, sections, edits = copy.deepcopy(orig.header), list(orig.sections), []
    content = False
    for m in mutations:
        content |= apply(header, sections, edits, m)
    return repack(header, sections, edits), content


def outcome(data: bytes, orig: Original, content: bool) -> str:
    """'refused', 'exact' or (content mutations only) 'other model'; fails the test otherwise."""
    try:
        graph = decode_model(data, name=NAME)
    except CompressedFileError as e:
        message = str(e)
        assert "\n" not in message and message.startswith(f"{NAME}: "), message
        return "refused"
    got = state_of(graph.model)
    if got == orig.state:
        return "exact"
    assert content, "a structural mutation decoded into another model"
    assert {k: v[:2] for k, v in got.items()} == {k: v[:2] for k, v in orig.state.items()}
    again = decode_model(encode_model(graph)[0])
    assert state_of(again.model) == got
    return "other model"


# --------------------------------------------------------------------------- the fuzz test


def test_mutated_headers_are_refused_in_one_line_or_decode_exactly(original):
    seen: Counter = Counter()

    @FUZZ
    @given(st.lists(mutation(original), min_size=1, max_size=3))
    def run(mutations):
        data, content = mutate(original, mutations)
        seen[outcome(data, original, content)] += 1

    run()
    assert seen["refused"] > 50 and seen["exact"] >= 5, seen


# --------------------------------------------------------------------------- memory, in a fresh process

SUBPROCESS = r"""
import json, resource, sys, time
import torch
from machop.datasets import DatasetInfo
from machop.ir import PassContext
from machop.ir.mchz import CompressedFileError, load_compressed

manifest = json.load(open(sys.argv[1]))
info = DatasetInfo("tiny16", 10, 1, (16, 16))

def state_of(model):
    out = {}
    for k, t in model.state_dict().items():
        out[k] = (str(t.dtype), tuple(t.shape), t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return out

try:
    import ctypes
    trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    trim = None

def peak_kb(reset):
    # The peak RSS (ru_maxrss) is a high-water mark. On Linux, writing 5 to clear_refs lowers the memory's own mark
    # (VmHWM) to the current RSS (ru_maxrss also keeps the peaks of exited threads, so VmHWM is read), and
    # malloc_trim first hands freed heap back, so that reusing it cannot hide a new peak. Elsewhere: ru_maxrss.
    if reset:
        if trim is not None:
            trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

reference = state_of(load_compressed(manifest["original"]).model)  # builds the model once (and imports everything)
base = peak_kb(reset=True)
results = []
for entry in manifest["files"]:
    for how in ("ch test", "file alone"):
        ctx = PassContext(model_name="lenet5", dataset_info=info) if how == "ch test" else None
        before = peak_kb(reset=True)
        t = time.perf_counter()
        try:
            got = state_of(load_compressed(entry["path"], context=ctx).model)
            if got == reference:
                result = "exact"
            elif {k: v[:2] for k, v in got.items()} == {k: v[:2] for k, v in reference.items()}:
                result = "other model"
            else:
                result = "error: another layout"
        except CompressedFileError as e:
            result = "refused" if "\n" not in str(e) else "error: message of several lines"
        except BaseException as e:
            result = f"error: {type(e).__name__}: {str(e)[:200]}"
        results.append({"file": entry["path"], "how": how, "result": result, "seconds": time.perf_counter() - t,
                        "peak_growth_mb": (peak_kb(reset=False) - before) / 1024, "content": entry["content"]})
print(json.dumps({"results": results, "baseline_mb": base / 1024,
                  "growth_mb": max(r["peak_growth_mb"] for r in results)}))
"""


def worst_cases(orig: Original) -> dict[str, bytes]:
    """The security report's files, and relatives, each well under 100 KB."""
    out: dict[str, bytes] = {}
    for n in (N8, 1 << 40):
        out[f"layer-{n}-one-symbol"] = mutate(orig, [("huge_layer", 2, n, True)])[0]
        out[f"layer-{n}-shape-only"] = mutate(orig, [("huge_layer", 2, n, False)])[0]
    out["extra-tensor-5e8-coded"] = mutate(orig, [("extra_tensor", EXTRA_KEYS[0], [N5], "float64", False)])[0]
    out["extra-tensor-5e8-raw"] = mutate(orig, [("extra_tensor", "bogus", [N5], "float64", True)])[0]
    out["extra-tensor-5e8-elsewhere"] = mutate(orig, [("extra_tensor", "bogus", [N5], "float64", False)])[0]
    out["index-bits-1e6"] = mutate(orig, [("replace", ("index_bits",), 10**6)])[0]
    out["negative-dims"] = mutate(orig, [("replace", ("tensors", 1, 1), [-20, 1, 5, 5])])[0]
    out["huge-dims"] = mutate(orig, [("replace", ("tensors", 1, 1), [1 << 62, 1 << 62])])[0]
    out["section-claims-1TB"] = mutate(orig, [("table", 1, "length", 1 << 40)])[0]
    out["structure-extra-key"] = mutate(orig, [("add_key", ("structure",), 1, "extra")])[0]
    out["structure-missing-key"] = mutate(orig, [("delete", ("structure", "parametrizations"))])[0]
    out["structure-wrong-type"] = mutate(orig, [("replace", ("structure", "inserted"), {"x": 1})])[0]
    out["block-2^20"] = mutate(orig, [("stream", 2, "values", "block", 1 << 20)])[0]  # decoding would take ~1 step a symbol
    for n in (1000, 4097):  # inserted modules in one chain, listed backwards: each insertion recompiles the graph
        header = copy.deepcopy(orig.header)
        header["structure"]["inserted"] += [
            {"name": f"q{i}", "user": f"q{i + 1}" if i < n - 1 else "conv1_act_prune", "arg": 0, "class": "FixedPoint",
             "spec": {"width": 8, "frac_width": 4}} for i in range(n)]
        out[f"inserted-chain-{n}"] = pack_container(header, orig.sections)
    # a consistent file of a 100 GB lenet5 (16 Mpixel images): one-symbol tables, nothing but the header
    header, sections = copy.deepcopy(orig.header), list(orig.sections)
    header["structure"]["dataset_info"]["image_size"] = [4096, 4096]
    big = [500, 50 * 1021 * 1021]
    for entry in header["tensors"]:
        if entry[0].startswith("fc1.parametrizations.weight.") and entry[1] == [500, 50]:
            entry[1] = big
    layer = header["layers"][2]
    book = codebook_of(sections[3][1], layer)
    n = big[0] * big[1]
    one = {"count": n, "nbits": 0, "block": 1024, "sync_base": 0, "sync_width": 0, "symbols": [[0, 1]], "lengths": "0"}
    layer.update(shape=big, nnz=n, values=dict(one), gaps=dict(one))
    layer.pop("live", None)
    sections[3] = (sections[3][0], book)
    out["consistent-100GB-model"] = pack_container(header, sections)
    # a zlib bomb (48 MiB of JSON), a JSON bomb just within the limit, deep nesting
    out["zlib-bomb"] = container(b'{"x":[' + b"{}," * (16 << 20) + b'{}],"sections":[]}')
    text = json.dumps({**orig.header, "x": None}, separators=(",", ":")).encode()
    sections_json = json.dumps([{"name": n, "length": len(d), "crc32": zlib.crc32(d)} for n, d in orig.sections]).encode()
    fill = b"[[]]," * ((MAX_HEADER_BYTES - len(text) - len(sections_json) - 64) // 5)
    text = text.replace(b'"x":null', b'"x":[' + fill + b'[]],"sections":' + sections_json)
    assert MAX_HEADER_BYTES - 64 <= len(text) <= MAX_HEADER_BYTES
    out["json-bomb-2MiB"] = container(text, b"".join(d for _, d in orig.sections))
    out["nesting-100000"] = container(b"[" * 100_000 + b"]" * 100_000)
    return out


def test_memory_ceiling_of_refusing_hostile_files(original, tmp_path):
    files: dict[str, tuple[bytes, bool]] = {k: (v, False) for k, v in worst_cases(original).items()}

    @settings(max_examples=MEMORY_EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(mutation(original), min_size=1, max_size=3))
    def collect(mutations):
        data, content = mutate(original, mutations)
        files[f"hypothesis-{len(files):03d}"] = (data, content)

    collect()
    (tmp_path / "original.mchz").write_bytes(original.data)
    manifest = {"original": str(tmp_path / "original.mchz"), "files": []}
    for name, (data, content) in files.items():
        assert len(data) < 100_000, (name, len(data))
        path = tmp_path / f"{name}.mchz"
        path.write_bytes(data)
        manifest["files"].append({"path": str(path), "content": content})
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, str(tmp_path / "manifest.json")], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert len(results) == 2 * len(files)
    bad = [r for r in results if r["result"].startswith("error") or r["result"] == "other model" and not r["content"]]
    assert not bad, bad[:5]
    worst = {Path(r["file"]).stem: r for r in results if not Path(r["file"]).stem.startswith("hypothesis")}
    assert all(r["result"] == "refused" for r in worst.values()), worst
    top = sorted(results, key=lambda r: -r["peak_growth_mb"])[:5]
    print("peak growth (MB) per file:", [(Path(r["file"]).stem, r["how"], round(r["peak_growth_mb"], 1)) for r in top])
    assert report["growth_mb"] < CEILING_MB, top
    assert max(r["seconds"] for r in worst.values()) < 5


# --------------------------------------------------------------------------- paths that are not files


def one_line_refusal(fn, path, match: str) -> BadFileError:
    """A one-line BadFileError naming ``path`` (a CompressedFileError, or machop.files' refusal to open it)."""
    with pytest.raises(BadFileError, match=match) as err:
        fn(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    return err.value


@pytest.mark.parametrize("fn", [load_compressed, read_file, read_header, read_container_header])
def test_directory_device_fifo_and_missing_paths(tmp_path, fn):
    one_line_refusal(fn, tmp_path, "is a directory")
    one_line_refusal(fn, "/dev/zero", "not a regular file")  # never read: that would not end
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    one_line_refusal(fn, fifo, "not a regular file")  # opened non-blocking: no writer needed
    missing = one_line_refusal(fn, tmp_path / "none.mchz", "no such file")
    assert isinstance(missing, FileNotFoundError)


def test_a_large_file_that_is_not_mchz_is_refused_by_its_magic(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04")
        f.truncate(1 << 30)  # sparse: 1 GiB claimed, nothing on disk
    tracemalloc.start()
    t = time.perf_counter()
    try:
        one_line_refusal(load_compressed, path, "bad magic")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t < 1 and peak < 1 << 20
    # a real header followed by a gigabyte: refused by the size its header claims, before reading the sections
    with open(path, "wb") as f:
        f.write(make_small_container())
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        one_line_refusal(load_compressed, path, "unexpected trailing bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def make_small_container() -> bytes:
    return pack_container({"format": "machop.huffman"}, [("raw", b"")])


def test_deep_nesting_and_bombs_are_one_line(original):
    for depth in (MAX_HEADER_DEPTH + 1, 900, 100_000):
        data = container(b"[" * depth + b"]" * depth)
        with pytest.raises(CompressedFileError, match="nested") as err:
            decode_model(data, name=NAME)
        assert "\n" not in str(err.value)
    nested = {**original.header, "structure": {**original.header["structure"], "x": _deep(MAX_HEADER_DEPTH + 2)}}
    with pytest.raises(CompressedFileError, match=f"deeper than {MAX_HEADER_DEPTH}"):
        decode_model(pack_container(nested, original.sections), name=NAME)
    with pytest.raises(CompressedFileError, match=f"inflates to more than {MAX_HEADER_BYTES} bytes"):
        decode_model(container(b"[" + b"0," * MAX_HEADER_BYTES + b"0]"), name=NAME)
    with pytest.raises(CompressedFileError, match=r"malformed header \(\d+ bytes, the limit is"):
        decode_model(container(bytes(MAX_HEADER_BYTES + 1), compress=False), name=NAME)
    with pytest.raises(CompressedFileError, match="refused: non-finite number NaN"):
        decode_model(container(b'{"a": NaN, "sections": []}'), name=NAME)


def test_report_cases_name_what_is_wrong(original):
    """The security report's files, each refused in one line that says why (and names the right tensor)."""
    cases = worst_cases(original)
    expect = {
        "layer-100000000-one-symbol": r"does not match the file's lenet5: 'fc1.weight' is float32\[500, 50\] in the model",
        "layer-100000000-shape-only": r"layer 'fc1' has shape \[100000000\] but its tensor is recorded as \[500, 50\]",
        "layer-1099511627776-one-symbol": r"'fc1.weight' is float32\[500, 50\] in the model but float32\[1099511627776\]",
        "layer-1099511627776-shape-only": r"layer 'fc1' has shape \[1099511627776\] but its tensor is recorded as",
        "extra-tensor-5e8-coded": r"tensor 'conv1.parametrizations.weight.1.extra' of shape \[500000000\] fits neither",
        "extra-tensor-5e8-raw": r"raw section has 650 bytes, expected 4000000650",  # biases: conv float16, fc int8
        "extra-tensor-5e8-elsewhere": r"tensor 'bogus' is neither stored raw nor coded",
        "index-bits-1e6": r"index_bits must be an integer in \[1, 16\]",
        "negative-dims": r"shape must be a list",
        "huge-dims": r"shape must be a list",
        "section-claims-1TB": r"truncated",
        "structure-extra-key": r"structure: bad structure record: the record has unknown key 'extra'",
        "structure-missing-key": r"structure: bad structure record: the record lacks key 'parametrizations'",
        "structure-wrong-type": r"structure: bad structure record: inserted must be a list",
        "consistent-100GB-model": r"names a lenet5 of \d+ bytes, more than a \d+-byte file can hold",
        "zlib-bomb": r"inflates to more than",
        "json-bomb-2MiB": r"the header has unknown key\(s\) 'x'",
        "nesting-100000": rf"nested deeper than {MAX_HEADER_DEPTH}",
        "block-2^20": r"layer 'fc1': values: bad stream description: field out of range",
        "inserted-chain-1000": r"it inserts 1006 modules into a graph of 10 nodes \(at most 4 per node\)",
        "inserted-chain-4097": r"structure: bad structure record: inserted lists more than 4096 modules",
    }
    for name, data in cases.items():
        with pytest.raises(CompressedFileError, match=expect[name]) as err:
            decode_model(data, name=NAME)
        assert "\n" not in str(err.value), name
    # what `ch test lenet5 ...` sees for the 100 GB model: the architecture, named by its first tensor
    with pytest.raises(CompressedFileError, match=r"'fc1.weight' is float32\[500, 50\] in the model"):
        decode_model(cases["consistent-100GB-model"], name=NAME, context=PassContext(model_name="lenet5", dataset_info=INFO))
    with pytest.raises(CompressedFileError, match="file holds a lenet5, not the vgg7 asked for"):
        decode_model(original.data, name=NAME, context=PassContext(model_name="vgg7", dataset_info=INFO))


def test_every_flipped_bit_of_a_live_map_is_refused(original):
    """A flipped map bit changes a map's count of ones, or sets a padding bit: refused, naming the layer."""
    rng = __import__("random").Random(0)
    with_maps = [(i, layer) for i, layer in enumerate(original.header["layers"]) if "live" in layer]
    assert len(with_maps) >= 2
    for index, layer in with_maps:
        n = map_bytes(layer["live"], layer["shape"])
        for bit in [*rng.sample(range(8 * n), 12), 8 * n - 1]:
            data, _ = mutate(original, [("map_bit", index, bit)])
            with pytest.raises(CompressedFileError, match=rf"layer '{layer['name']}': \w+ map has") as err:
                decode_model(data, name=NAME)
            assert "\n" not in str(err.value)


def test_read_header_and_check_decode_args(original, tmp_path):
    path = tmp_path / "m.mchz"
    path.write_bytes(original.data)
    assert read_header(path) == file_header(original.data) == original.header
    check_decode_args(None, HuffmanArgs(path=str(path)), "passes.huffman_decode", [])
    (tmp_path / "notes.txt").write_text("hello\n" * 10)
    (tmp_path / "bad.mchz").write_bytes(mutate(original, [("replace", ("index_bits",), 0)])[0])
    for given_path, match in [(tmp_path, "is a directory"), (tmp_path / "notes.txt", "bad magic"),
                              (tmp_path / "bad.mchz", "index_bits must be"), (tmp_path / "no.mchz", "no such file: ")]:
        with pytest.raises(ConfigError, match=match) as err:
            check_decode_args(None, HuffmanArgs(path=str(given_path)), "passes.huffman_decode", [])
        assert "\n" not in str(err.value) and "passes.huffman_decode.path" in str(err.value)
