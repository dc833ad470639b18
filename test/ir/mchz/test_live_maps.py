"""Structure that costs no bits (format version 3): live maps of dead rows, columns and kernels.

Oracles: ``np.flatnonzero`` of the mask (positions), the decoded model's
state dict and outputs against the encoded model's (bit-exact), the
version 2 file of the same model (a fixture written before version 3 existed).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from machop.ir import MaseGraph
from machop.ir.mchz import CompressedFileError, decode_model, encode_model, file_header
from machop.ir.mchz.format import VERSION, pack_container, unpack_container, version_of
from machop.ir.mchz.model import flat_positions, live_positions
from machop.nn import get_mask
from machop.passes.graph import PASSES

DATA = Path(__file__).parent / "data"
X = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))


def state_hash(model: torch.nn.Module, skip: str | None = None) -> str:
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        if skip is not None and key.endswith(skip):
            continue
        h.update(key.encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("shape", [(7,), (5, 6), (4, 3, 2, 2), (3, 4, 5), (1, 9, 3), (6, 1)])
@pytest.mark.parametrize("seed", range(4))
def test_live_positions_map_back_to_the_flat_positions(shape, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(shape) < rng.uniform(0.1, 0.9)
    mask[rng.random(shape[0]) < 0.4] = False  # dead rows
    if len(shape) >= 2:
        mask[:, rng.random(shape[1]) < 0.4] = False  # dead columns
    if len(shape) >= 3:
        mask.reshape(shape[0] * shape[1], -1)[rng.random(shape[0] * shape[1]) < 0.3] = False  # dead kernels
    for how in (None, "channels", "kernels"):
        record, maps, inner = live_positions(mask.reshape(-1), list(shape), how)
        assert np.array_equal(flat_positions(record, maps, list(shape), inner), np.flatnonzero(mask)), how
        assert inner.size == mask.sum()


def test_a_version_2_file_still_decodes_and_version_3_is_smaller_below_the_iid_bound():
    """lenet300 on 4x4 images, fc1 and fc2 channelwise-pruned, 4-bit k-means, written by the version 2 encoder."""
    data = (DATA / "lenet300_tiny_v2.mchz").read_bytes()
    assert version_of(data) == 2
    graph = decode_model(data)
    assert state_hash(graph.model) == "1602a50a1e966dc79292f6907cff2a58ea68f52b847e086e69d6dd6c9255d8d3"
    with torch.no_grad():
        y = graph.model.eval()(X)
    assert hashlib.sha256(y.numpy().tobytes()).hexdigest() == \
        "656c9f07fc745dde58efdd30b08cbb1c0ab8ead5d55251936c4e68170789b2ce"
    again, report = encode_model(graph)
    assert version_of(again) == VERSION == 3
    old = {layer["name"]: layer for layer in file_header(data)["layers"]}
    rows = {r["layer"]: r for r in report["layers"]}
    for name in ("fc1", "fc2"):  # whole dead output rows: the positions cost the row map, nearly nothing else
        r = rows[name]
        assert r["position_map"] == "channels"
        assert r["position_bits_per_weight"] < r["iid_bound_bits_per_weight"] / 4
        d = r["nnz"] / r["numel"]
        assert r["iid_bound_bits_per_weight"] == pytest.approx(-(d * math.log2(d) + (1 - d) * math.log2(1 - d)) / d)
        assert r["positions_bytes"] * 8 < old[name]["gaps"]["nbits"] / 4
    assert len(again) < len(data) - 1000
    decoded = decode_model(again)
    assert state_hash(decoded.model) == state_hash(graph.model)
    with torch.no_grad():
        assert torch.equal(decoded.model.eval()(X), y)


class Wide(torch.nn.Module):
    """Every layer kind whose axes 0/1 mean something else, large enough for a map to pay for its header bytes."""

    def __init__(self):
        super().__init__()
        self.grouped = torch.nn.Conv2d(16, 64, 3, padding=1, groups=2)  # axis 1: input channels per group
        self.depthwise = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)  # axis 1 of size 1
        self.up = torch.nn.ConvTranspose2d(64, 32, 3)  # axis 0: input channels, axis 1: output channels
        self.vol = torch.nn.Conv3d(1, 16, 3)
        self.emb = torch.nn.Embedding(400, 32)
        self.lstm = torch.nn.LSTM(32, 64, batch_first=True)
        self.fc = torch.nn.Linear(96, 10)

    def forward(self, x):
        t = self.up(self.depthwise(self.grouped(x)))
        v = self.vol(x[:, :4].unsqueeze(1)).mean(dim=(2, 3, 4))
        tokens = (x[:, 0, 0].abs() * 100).long().clamp(0, 399)
        seq, _ = self.lstm(t.flatten(2).transpose(1, 2))
        h = torch.cat([seq[:, -1], self.emb(tokens).mean(1)], dim=1)
        return self.fc(h), v


def _wide_graph(kill) -> tuple[MaseGraph, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6)
    graph = MaseGraph(Wide(), dummy_input=x)
    graph, _ = PASSES["prune"](graph, {"weight": {"sparsity": 0.3}})
    with torch.no_grad():
        for w in graph.weights():
            mask = get_mask(w.module, w.tensor_name)
            if mask is not None and mask.dim() >= 1 and mask.shape[0] > 1:
                kill(mask)
    graph, _ = PASSES["quantize"](graph, {"by": "type", "default": {"config": {"name": "kmeans", "weight_bits": 4}}})
    return graph, x


def _rows(m):
    m[::2] = False


def _cols(m):
    if m.dim() >= 2 and m.shape[1] > 1:
        m[:, : m.shape[1] // 2] = False


def _kernels(m):
    if m.dim() >= 3:
        m.view(m.shape[0] * m.shape[1], -1)[::3] = False


@pytest.mark.parametrize("kill", [_rows, _cols, _kernels], ids=["rows", "columns", "kernels"])
def test_dead_structure_is_cheaper_and_decodes_bit_identically(kill):
    """Grouped and depthwise convs, a transposed conv, conv3d, an embedding, LSTM weights."""
    graph, x = _wide_graph(kill)
    graph.model.eval()
    with torch.no_grad():
        expected = graph.model(x)
    data, report = encode_model(graph)
    flat, flat_report = encode_model(graph, live_maps=False)  # the positions as version 2 laid them out
    assert not any("live" in layer for layer in file_header(flat)["layers"])
    mapped = {r["layer"]: r for r in report["layers"] if r["position_map"] is not None}
    # the layers large enough for a map to pay for its header bytes (depthwise and vol are not)
    want = {"_rows": {"grouped", "up", "emb", "lstm.weight_ih_l0", "lstm.weight_hh_l0"},
            "_cols": {"grouped", "up", "emb", "lstm.weight_ih_l0", "lstm.weight_hh_l0"},
            "_kernels": {"up"}}[kill.__name__]
    assert want <= set(mapped), sorted(mapped)
    assert len(data) < len(flat)
    assert report["total"]["parts"]["positions"] < flat_report["total"]["parts"]["positions"]
    for r in mapped.values():  # structure goes below the bound an i.i.d. mask of the same density costs
        assert r["position_bits_per_weight"] < r["iid_bound_bits_per_weight"], r["layer"]
    for blob in (data, flat):
        decoded = decode_model(blob, model=Wide())
        decoded.model.eval()
        # every tensor but the float originals (not stored: re-created from the codes), and every weight as used
        assert state_hash(decoded.model, skip=".original") == state_hash(graph.model, skip=".original")
        for w in graph.weights():
            assert torch.equal(getattr(w.module, w.tensor_name),
                               getattr(decoded.model.get_submodule(w.qualname), w.tensor_name)), w.name
        with torch.no_grad():
            got = decoded.model(x)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.fixture(scope="module")
def mapped_file() -> tuple[dict, dict[str, bytes], bytes]:
    graph = decode_model((DATA / "lenet300_tiny_v2.mchz").read_bytes())
    data, _ = encode_model(graph)
    header, sections = unpack_container(data)
    return header, sections, data


def _repack(header: dict, sections: dict[str, bytes], edit=None, section=None, version: int = VERSION) -> bytes:
    import copy

    header = copy.deepcopy(header)
    layer = header["layers"][0]  # fc1: 300 rows (120 live), 16 columns
    assert layer["name"] == "fc1" and layer["live"] == {"map": "channels", "rows": 120, "cols": 16}
    if edit is not None:
        edit(layer)
    body = dict(sections)
    if section is not None:
        body["layer:fc1"] = section(bytearray(body["layer:fc1"]))
    return pack_container(header, list(body.items()), version=version)


@pytest.mark.parametrize("edit, match", [
    (lambda r: r["live"].update(rows=301), r"live.rows must be an integer in \[0, 300\]"),
    (lambda r: r["live"].update(cols=-1), r"live.cols must be an integer in \[0, 16\]"),
    (lambda r: r["live"].update(map="rows"), r"live.map must be one of channels, kernels"),
    (lambda r: r["live"].update(extra=1), r"live has unknown key\(s\) 'extra'"),
    (lambda r: r["live"].pop("cols"), r"live lacks cols"),
    (lambda r: r.update(live={"map": "kernels", "kernels": 4801}), r"live.kernels must be an integer in \[0, 4800\]"),
    (lambda r: r["live"].update(rows=0), r"nnz must be an integer in \[0, 0\]"),
    (lambda r: r["live"].update(rows=121), r"layer 'fc1': row map has 120 live entries, the header claims 121"),
    (lambda r: r.update(live={"map": "kernels", "kernels": 1920}), r"section of layer 'fc1' has \d+ bytes, expected"),
    (lambda r: r["live"].update(cols=15), r"nnz must be an integer in \[0, 1800\], got 1920"),
    (lambda r: r.pop("live"), r"layer 'fc1'"),
])
def test_hostile_live_records_are_refused_in_one_line(mapped_file, edit, match):
    header, sections, _ = mapped_file
    with pytest.raises(CompressedFileError, match=match) as err:
        decode_model(_repack(header, sections, edit), name="m.mchz")
    assert "\n" not in str(err.value) and str(err.value).startswith("m.mchz: ")


def test_map_padding_bits_and_a_live_record_in_a_version_2_file_are_refused(mapped_file):
    header, sections, _ = mapped_file

    def padding(data: bytearray) -> bytes:
        data[37] |= 0x80  # 300 row bits: bits 300..303 of byte 37 are padding
        return bytes(data)

    with pytest.raises(CompressedFileError, match=r"layer 'fc1': row map has bits set beyond its 300 entries"):
        decode_model(_repack(header, sections, section=padding), name="m.mchz")
    with pytest.raises(CompressedFileError, match=r"a layer record has unknown key\(s\) 'live'"):
        decode_model(_repack(header, sections, version=2), name="m.mchz")
