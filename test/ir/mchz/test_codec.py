"""Canonical Huffman codec: exact round trips, optimal lengths (vs a heapq Huffman), entropy bounds, edge cases."""

from __future__ import annotations

import heapq
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from machop.ir.mchz import codec
from machop.ir.mchz.codec import EncodedStream, HuffmanTable, code_lengths, decode, encode
from machop.ir.mchz.format import CompressedFileError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_lengths(counts: list[int]) -> list[int]:
    """Textbook Huffman with a heap: each merge deepens every symbol of both subtrees by one."""
    if len(counts) == 1:
        return [0]
    tie = itertools.count()
    heap = [(c, next(tie), [i]) for i, c in enumerate(counts)]
    heapq.heapify(heap)
    depth = [0] * len(counts)
    while len(heap) > 1:
        ca, _, a = heapq.heappop(heap)
        cb, _, b = heapq.heappop(heap)
        for i in a + b:
            depth[i] += 1
        heapq.heappush(heap, (ca + cb, next(tie), a + b))
    return depth


def round_trip(x: np.ndarray, **kw) -> EncodedStream:
    """Encode, serialise to (meta, bytes), parse back and decode; assert exact equality."""
    stream = encode(x, **kw)
    parsed = EncodedStream.from_parts(stream.meta(), stream.data())
    y = decode(parsed)
    assert y.dtype == np.int64
    np.testing.assert_array_equal(y, np.asarray(x).reshape(-1).astype(np.int64))
    return stream


def entropy_bits(x: np.ndarray) -> float:
    _, counts = np.unique(x, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


# skewed alphabets: geometric-ish draws over a small range, the shape of k-means indices and gaps
skewed = st.builds(
    lambda n, k, p, seed: np.minimum(np.random.default_rng(seed).geometric(p, n) - 1, k - 1),
    st.integers(1, 3000), st.integers(1, 300), st.floats(0.01, 0.99), st.integers(0, 2**32 - 1),
)
arbitrary = hnp.arrays(np.int64, st.integers(0, 400), elements=st.integers(-(2**62), 2**62))
small_alphabet = hnp.arrays(np.int64, st.integers(0, 2000), elements=st.integers(-3, 40))


@SETTINGS
@given(st.one_of(skewed, arbitrary, small_alphabet), st.one_of(st.none(), st.integers(1, 70)))
def test_round_trip_exact_and_optimal(x, block):
    stream = round_trip(x, block=block)
    n = x.size
    assert stream.count == n
    if n == 0:
        assert stream.nbits == 0
        return
    symbols, counts = np.unique(x, return_counts=True)
    optimum = sum(c * l for c, l in zip(counts.tolist(), reference_lengths(counts.tolist())))
    assert stream.nbits == optimum  # payload is exactly the Huffman optimum
    assert len(stream.payload) == (optimum + 7) // 8
    h = entropy_bits(x)
    assert h - 1e-9 * n <= stream.nbits < h + n  # entropy <= average length < entropy + 1 (per symbol)


@SETTINGS
@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=300))
def test_code_lengths_match_reference_huffman_total(counts):
    lengths = code_lengths(np.array(counts))
    ref = reference_lengths(counts)
    assert int(np.dot(lengths.astype(np.int64), counts)) == sum(c * l for c, l in zip(counts, ref))
    if len(counts) > 1:
        assert sum(2.0 ** -int(l) for l in lengths) == 1.0  # complete prefix code


def brute_force_limited(counts: list[int], cap: int) -> int:
    """Smallest sum(count * length) over all length vectors with lengths <= cap satisfying Kraft."""
    best = None
    for ls in itertools.product(range(1, cap + 1), repeat=len(counts)):
        if sum(2.0 ** -l for l in ls) <= 1.0:
            cost = sum(c * l for c, l in zip(counts, ls))
            best = cost if best is None else min(best, cost)
    return best


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 1000), min_size=2, max_size=6), st.integers(1, 4))
def test_length_limit_is_optimal_under_the_cap(counts, cap):
    if len(counts) > 2**cap:
        with pytest.raises(ValueError):
            code_lengths(np.array(counts), cap)
        return
    lengths = code_lengths(np.array(counts), cap)
    assert lengths.max() <= cap
    assert int(np.dot(lengths.astype(np.int64), counts)) == brute_force_limited(counts, cap)


def fibonacci(n: int) -> list[int]:
    f = [1, 1]
    while len(f) < n:
        f.append(f[-1] + f[-2])
    return f


def test_extremely_skewed_counts_hit_the_cap_and_round_trip():
    counts = fibonacci(45)  # unrestricted Huffman depth would be 44
    assert max(reference_lengths(counts)) == 44
    table = HuffmanTable.from_counts(np.arange(45), np.array(counts))
    assert table.max_length == codec.MAX_CODE_LENGTH
    # codes longer than the 16-bit decode table take the fallback path
    x = np.repeat(np.arange(45), np.minimum(counts, 300))
    np.random.default_rng(0).shuffle(x)
    stream = round_trip(x, table=table, block=64)
    assert stream.n_blocks > 1


def test_skewed_but_fitting_counts_keep_the_unrestricted_optimum():
    counts = fibonacci(30)  # depth 29 <= 32: the cap must not cost a single bit
    lengths = code_lengths(np.array(counts))
    assert int(np.dot(lengths.astype(np.int64), counts)) == sum(c * l for c, l in zip(counts, reference_lengths(counts)))
    x = np.repeat(np.arange(30), np.minimum(counts, 50))
    round_trip(x, table=HuffmanTable.from_counts(np.arange(30), np.array(counts)))


def test_empty_input():
    stream = round_trip(np.zeros(0, dtype=np.int64))
    assert stream.nbits == 0 and stream.data() == b""


@pytest.mark.parametrize("n", [1, 7, 5000])
def test_one_distinct_symbol_costs_zero_bits(n):
    stream = round_trip(np.full(n, -42))
    assert stream.nbits == 0 and stream.data() == b""


def test_all_symbols_distinct_full_alphabet():
    x = np.random.default_rng(1).permutation(codec.MAX_SYMBOLS) * 3 - 7
    stream = round_trip(x)
    assert stream.nbits == 16 * codec.MAX_SYMBOLS  # a uniform power-of-two alphabet: a fixed-length code


def test_all_symbols_distinct_not_power_of_two():
    x = np.arange(1000)
    stream = round_trip(x)
    assert stream.nbits == sum(reference_lengths([1] * 1000))


def test_too_many_symbols_is_refused():
    with pytest.raises(ValueError, match="exceed"):
        encode(np.arange(codec.MAX_SYMBOLS + 1))


def test_wide_value_range_uses_the_sorting_path():
    x = np.array([-(2**62), 2**62, 0, 2**62, 5] * 100)
    round_trip(x)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, bool])
def test_integer_dtypes(dtype):
    x = (np.random.default_rng(2).integers(0, 2, 500) if dtype is bool else np.arange(500) % 200).astype(dtype)
    round_trip(x)


def test_floats_are_refused():
    with pytest.raises(TypeError):
        encode(np.ones(3))


def test_symbols_missing_from_a_given_table_are_refused():
    table = HuffmanTable.from_data(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="not in the table"):
        encode(np.array([1, 2, 4]), table=table)
    with pytest.raises(ValueError, match="not in the table"):
        encode(np.array([0, 1]), table=table)


def test_large_stream_many_blocks():
    rng = np.random.default_rng(3)
    x = np.clip(rng.normal(16, 5, 300_000).round(), 0, 31).astype(np.int64)
    stream = round_trip(x)
    assert stream.block == codec.MAX_BLOCK and stream.n_blocks == -(-x.size // codec.MAX_BLOCK)
    assert stream.sync_bits < 0.005 * stream.nbits  # the sync table is a fraction of a percent


def test_table_json_round_trip_and_validation():
    table = HuffmanTable.from_data(np.array([5, 5, 6, 9, 10, 10, 10, 11]))
    j = table.to_json()
    assert j["symbols"] == [[5, 2], [9, 3]]
    back = HuffmanTable.from_json(j)
    np.testing.assert_array_equal(back.symbols, table.symbols)
    np.testing.assert_array_equal(back.lengths, table.lengths)
    with pytest.raises(ValueError, match="Kraft"):
        HuffmanTable(np.array([1, 2, 3]), np.array([1, 1, 2]))
    with pytest.raises(ValueError, match="Kraft"):
        HuffmanTable(np.array([1, 2, 3]), np.array([2, 2, 2]))
    with pytest.raises(ValueError, match="ascending"):
        HuffmanTable(np.array([2, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match="lengths"):
        HuffmanTable.from_json({"symbols": [[0, 2]], "lengths": "1"})


def test_inconsistent_stream_parts_are_refused():
    stream = encode(np.arange(300) % 7, block=64)
    meta, data = stream.meta(), stream.data()
    with pytest.raises(CompressedFileError):
        EncodedStream.from_parts(meta, data[:-1])
    with pytest.raises(CompressedFileError):
        EncodedStream.from_parts({**meta, "nbits": meta["nbits"] + 8}, data)
    with pytest.raises(CompressedFileError):
        EncodedStream.from_parts({**meta, "count": "x"}, data)
    # a sync table that does not match the codes is detected by the decoder
    bad = EncodedStream.from_parts({**meta, "sync_base": meta["sync_base"] + 1}, data)
    with pytest.raises(CompressedFileError, match="corrupt"):
        decode(bad)


def test_canonical_codes_are_prefix_free_and_ordered():
    table = HuffmanTable.from_data(np.random.default_rng(4).geometric(0.3, 2000))
    codes, lengths = table.codes(), table.lengths.astype(int)
    words = [format(int(c), f"0{l}b") for c, l in zip(codes, lengths)]
    for a, b in itertools.permutations(words, 2):
        assert not b.startswith(a)
    order = np.lexsort((table.symbols, lengths))
    assert [words[i] for i in order] == sorted(words, key=lambda w: (len(w), w))


def test_mean_length_against_entropy_on_realistic_stream():
    x = np.minimum(np.random.default_rng(5).geometric(0.1, 100_000) - 1, 31)
    stream = encode(x)
    h = entropy_bits(x) / x.size
    assert h <= stream.nbits / x.size < h + 1
    assert math.isclose(stream.nbits / x.size, h, rel_tol=0.02)


def test_more_blocks_than_one_lane_group():
    x = np.random.default_rng(6).integers(0, 5, 3 * codec._LANE_GROUP + 5)
    stream = round_trip(x, block=1)
    assert stream.n_blocks > 3 * codec._LANE_GROUP
    round_trip(x, block=3)
