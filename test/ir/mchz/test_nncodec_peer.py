"""bench/nncodec_peer.py: the levels NNCodec gets are the decoded model's weights, and NNCodec codes them losslessly.

NNCodec (``pip install --no-deps nncodec``: its own requirements pin numpy<2
and pull torchvision) is optional; without it only the level mapping is tested.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from machop.ir.mchz import decode_model
from machop.nn import weight_codes

BENCH = Path(__file__).resolve().parents[3] / "bench"
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def peer():
    spec = importlib.util.spec_from_file_location("nncodec_peer", BENCH / "nncodec_peer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def graphs():
    return [decode_model((DATA / name).read_bytes()) for name in ("lenet300_tiny_v1.mchz", "lenet300_tiny_v2.mchz")]


def test_signed_levels(peer):
    assert peer.signed_levels(np.array([0.5, -0.25, 0.0, -1.0, 2.0, 0.5])).tolist() == [1, -1, 0, -2, 2, 1]
    grid = np.arange(-8, 8) * 0.125  # a fixed-point grid: the levels are its integer codes
    assert peer.signed_levels(grid).tolist() == list(range(-8, 8))


def test_levels_give_back_every_weight(peer, graphs):
    """Oracle: each weight as the model uses it, from its level and the codebook's sorted values."""
    for graph in graphs:
        levels = peer.model_levels(graph)
        assert levels
        for w in graph.weights():
            wc = weight_codes(w.module, w.tensor_name)
            book = np.unique(wc.codebook.double().numpy())
            neg, pos = book[book < 0][::-1], book[book > 0]
            lv = levels[w.name].astype(np.int64)
            value = np.zeros(lv.shape)
            value[lv < 0] = neg[-lv[lv < 0] - 1]
            value[lv > 0] = pos[lv[lv > 0] - 1]
            used = getattr(w.module, w.tensor_name).detach().double().numpy()
            assert np.array_equal(value, used), w.name


def test_nncodec_codes_the_levels_losslessly(peer, graphs):
    pytest.importorskip("nncodec")
    for graph in graphs:
        levels = peer.model_levels(graph)
        for row_skipping in (True, False):
            bitstream = peer.nncodec_encode(levels, row_skipping)
            assert 0 < len(bitstream) < sum(a.size for a in levels.values())  # < 1 byte per weight
            back = peer.nncodec_decode(bitstream)
            for name, a in levels.items():
                assert np.array_equal(back[f"{name}.weight" if not name.endswith("weight") else name], a), name
        r = peer.compare(graph)
        assert r["nncodec_weight_bytes"] == peer.nncodec_bytes(levels) > 0
        assert r["machop_weight_bytes"] == r["parts"]["values"] + r["parts"]["positions"] > 0
