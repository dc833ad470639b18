"""Canonical Huffman coding of integer arrays, vectorised with numpy.

- **Code lengths** are optimal under a length cap (`MAX_CODE_LENGTH` = 32
  bits): package-merge (Larmore & Hirschberg), one vectorised merge per code
  length. When the unrestricted Huffman code fits under the cap the total
  is the unrestricted optimum (going past 32 bits takes Fibonacci-like
  counts, e.g. 34 symbols with Fibonacci counts, 15 million in all);
  otherwise it is the best code with lengths <= 32. The cap lets a code sit
  with its in-word offset in one 64-bit word, and a 16-bit table decodes
  all codes up to 16 bits directly. A stream with one distinct symbol gets a 0-bit code (its count is
  stored), so the mean length always lies in ``[entropy, entropy + 1)``.
- **Codes** are canonical (sorted by length, then symbol), so a table is just
  the distinct symbols and their lengths.
- **Encode**: per-symbol code and length by table lookup, bit offsets by a
  cumulative sum, then every code is shifted into place inside a 64-bit
  window anchored at the 32-bit word it starts in, and the windows of each
  word are summed (disjoint bits: a sum is an OR) by differences of a
  cumulative sum. Chunks of 128k symbols keep temporaries in cache; no loop
  per symbol.
- **Decode**: the symbols are cut into blocks of ``block`` symbols (a power
  of two near 4 sqrt(n), 64..1024). The encoder records where each block
  starts (the *sync table*: block bit-lengths, fixed-width, a fraction of a
  percent of the payload); the decoder then decodes all blocks at once, one
  symbol per block per step, each step a lookup of the next 16 bits in a
  table (codes longer than 16 bits fall back to a binary search). The Python
  loop runs over the ``block`` symbol slots (at most 1024), never over the
  symbols themselves. Pointer jumping over every bit position needs no sync
  table but does ~log2(chunk) gathers per *bit*: a prototype was ~7x slower
  on a 1M-symbol gap stream, too slow for the 20x-over-dahuffman target.

Bits are written most-significant first; the last byte is zero-padded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .format import CompressedFileError

MAX_CODE_LENGTH = 32  # longest code; keeps a code and its in-word offset inside one 64-bit window
MAX_SYMBOLS = 1 << 16  # largest alphabet
TABLE_BITS = 16  # the decoder's direct lookup table covers codes up to this length
MIN_BLOCK, MAX_BLOCK = 64, 1024  # symbols per decode block (what the writer picks)
# The largest block a reader accepts: decoding takes `block` Python steps per group of 2048 blocks, so a stream
# of 2^20 symbols in one block of 2^20 took 13.8 s (0.08 s with blocks of 4096, 0.04 s with the writer's 1024).
MAX_BLOCK_LIMIT = 1 << 12
_CHUNK = 1 << 17  # symbols per encode chunk (temporaries stay in cache)
_LANE_GROUP = 2048  # blocks decoded together
_DENSE_RANGE = 1 << 22  # symbol value ranges up to this use a direct lookup table instead of a sort
_U64 = np.uint64
LENGTH_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVW"  # code length 0..32 as one character
_DIGIT_VALUE = {c: i for i, c in enumerate(LENGTH_DIGITS)}
_DIGIT_BASE = np.full(128, 255, dtype=np.uint8)  # ASCII -> code length (255: not a digit)
_DIGIT_BASE[np.frombuffer(LENGTH_DIGITS.encode(), dtype=np.uint8)] = np.arange(len(LENGTH_DIGITS), dtype=np.uint8)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_COUNT = 1 << 40  # symbols in one stream (a weight of a trillion entries)
MAX_SYNC_WIDTH = 48


# --------------------------------------------------------------------------- code construction


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths for positive ``counts`` with no length above ``max_length``.

    Package-merge: level ``l`` (from the deepest) is the sorted merge of the
    leaves with the pairwise sums ("packages") of level ``l+1``; taking the
    ``2n - 2`` cheapest items of the top level and expanding packages down
    gives each symbol's length as the number of levels where it is taken.
    Since the items taken at each level are a prefix of the sorted leaves,
    only the number of leaves taken per level is needed. One symbol gets
    length 0 (nothing needs to be sent).
    """
    counts = np.asarray(counts)
    if counts.ndim != 1:
        raise ValueError("counts must be a 1-d array")
    n = counts.size
    if n and counts.min() <= 0:
        raise ValueError("counts must be positive")
    if n <= 1:
        return np.zeros(n, dtype=np.uint8)
    if not 1 <= max_length <= 63 or n > (1 << max_length):
        raise ValueError(f"{n} symbols do not fit in codes of at most {max_length} bits")
    levels = min(max_length, n - 1)  # an optimal code is never longer than n - 1
    order = np.argsort(counts, kind="stable")
    leaves = counts[order].astype(np.int64)
    items = leaves
    is_package = []  # per level, deepest+1 first
    for _ in range(levels - 1):
        even = items.size // 2 * 2
        packages = items[0:even:2] + items[1:even:2]
        at = np.searchsorted(leaves, packages, side="right") + np.arange(packages.size)  # leaves first on ties
        flags = np.zeros(n + packages.size, dtype=bool)
        flags[at] = True
        merged = np.empty(n + packages.size, dtype=np.int64)
        merged[at] = packages
        merged[~flags] = leaves
        is_package.append(flags)
        items = merged
    take = 2 * n - 2
    if take > items.size:  # cannot happen for n <= 2**max_length
        raise AssertionError("package-merge: too few items")
    leaves_taken = []
    for flags in reversed(is_package):
        packages_taken = int(np.count_nonzero(flags[:take]))
        leaves_taken.append(take - packages_taken)
        take = 2 * packages_taken
    leaves_taken.append(take)  # the deepest level holds leaves only
    taken = np.sort(np.asarray(leaves_taken))
    lengths = np.empty(n, dtype=np.uint8)
    lengths[order] = taken.size - np.searchsorted(taken, np.arange(n), side="right")
    return lengths


def _counts(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values (ascending) and their counts; a bincount when the value range is small."""
    if data.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(data.min()), int(data.max())
    if hi - lo < _DENSE_RANGE:
        counts = np.bincount((data - lo) if lo else data, minlength=hi - lo + 1)
        present = np.flatnonzero(counts)
        return present.astype(np.int64) + lo, counts[present].astype(np.int64)
    symbols, counts = np.unique(data, return_counts=True)
    return symbols.astype(np.int64), counts.astype(np.int64)


@dataclass(frozen=True, eq=False)
class HuffmanTable:
    """A canonical code: distinct ``symbols`` (ascending int64) and their code ``lengths``.

    Derived arrays (canonical order, codes, lookup tables) are computed once.
    """

    symbols: np.ndarray
    lengths: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        lengths = np.asarray(self.lengths)
        if lengths.size and (lengths.min() < 0 or lengths.max() > MAX_CODE_LENGTH):
            raise ValueError(f"code lengths must be in [1, {MAX_CODE_LENGTH}]")
        symbols = np.ascontiguousarray(self.symbols, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.uint8)
        object.__setattr__(self, "symbols", symbols)
        object.__setattr__(self, "lengths", lengths)
        n = symbols.size
        if symbols.ndim != 1 or lengths.shape != symbols.shape:
            raise ValueError("symbols and lengths must be 1-d arrays of the same size")
        if n > MAX_SYMBOLS:
            raise ValueError(f"{n} distinct symbols exceed the limit of {MAX_SYMBOLS}")
        if n > 1 and np.any(symbols[1:] <= symbols[:-1]):
            raise ValueError("symbols must be strictly ascending")
        if n == 1 and lengths[0] != 0:
            raise ValueError("a single symbol has a 0-bit code")
        if n > 1:
            if lengths.min() < 1 or lengths.max() > MAX_CODE_LENGTH:
                raise ValueError(f"code lengths must be in [1, {MAX_CODE_LENGTH}]")
            kraft = np.sum(np.left_shift(np.uint64(1), (MAX_CODE_LENGTH - lengths).astype(np.uint64)), dtype=np.uint64)
            if int(kraft) != 1 << MAX_CODE_LENGTH:
                raise ValueError("code lengths do not form a complete prefix code (Kraft sum != 1)")

    # -------------------------------------------------------------- construction
    @classmethod
    def from_counts(cls, symbols: np.ndarray, counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> "HuffmanTable":
        """The optimal code (lengths capped at ``max_length``) for ``counts`` of ``symbols``."""
        symbols = np.asarray(symbols, dtype=np.int64)
        order = np.argsort(symbols, kind="stable")
        return cls(symbols[order], code_lengths(np.asarray(counts)[order], min(max_length, MAX_CODE_LENGTH)))

    @classmethod
    def from_data(cls, data: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> "HuffmanTable":
        """The optimal code for the symbol frequencies of ``data``."""
        symbols, counts = _counts(_as_int64(data))
        return cls.from_counts(symbols, counts, max_length)

    # -------------------------------------------------------------- JSON form
    def to_json(self) -> dict:
        """``{"symbols": [[first, count], ...] runs of consecutive symbols, "lengths": "55667..."}``.

        Each length is one character of `LENGTH_DIGITS` (0..32), in symbol order.
        """
        runs = []
        if self.symbols.size:
            breaks = np.flatnonzero(np.diff(self.symbols) != 1) + 1
            firsts = np.concatenate(([0], breaks))
            sizes = np.diff(np.concatenate((firsts, [self.symbols.size])))
            runs = [[int(self.symbols[f]), int(c)] for f, c in zip(firsts, sizes)]
        return {"symbols": runs, "lengths": "".join(LENGTH_DIGITS[x] for x in self.lengths.tolist())}

    @classmethod
    def from_json(cls, obj: dict) -> "HuffmanTable":
        """Inverse of `to_json`; ValueError if malformed.

        Cheap on hostile input: the runs are checked (integers, ``first`` and
        the run's last symbol within int64, ascending, not overlapping, at most
        `MAX_SYMBOLS` symbols in all) before any array is made.
        """
        if not isinstance(obj, dict):
            raise ValueError("code table must be an object")
        runs, digits = obj.get("symbols"), obj.get("lengths")
        if not isinstance(digits, str) or not isinstance(runs, list):
            raise ValueError("code table must have a 'symbols' list and a 'lengths' string")
        if len(runs) > MAX_SYMBOLS or len(digits) > MAX_SYMBOLS:
            raise ValueError(f"code table has more than {MAX_SYMBOLS} symbols")
        total, prev_last = 0, None
        for run in runs:
            if not isinstance(run, list) or len(run) != 2 or not all(type(v) is int for v in run):
                raise ValueError("bad symbol run (not [first, count] integers)")
            first, count = run
            if not 1 <= count <= MAX_SYMBOLS or not _INT64_MIN <= first <= _INT64_MAX - (count - 1):
                raise ValueError("bad symbol run (count or symbols out of range)")
            if prev_last is not None and first <= prev_last:
                raise ValueError("symbol runs must be ascending and must not overlap")
            total += count
            if total > MAX_SYMBOLS:
                raise ValueError(f"code table has more than {MAX_SYMBOLS} symbols")
            prev_last = first + count - 1
        if len(digits) != total or any(c not in _DIGIT_VALUE for c in digits):
            raise ValueError("code lengths do not match the symbols")
        parts = [np.arange(count, dtype=np.int64) + np.int64(first) for first, count in runs]
        symbols = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return cls(symbols, _DIGIT_BASE[np.frombuffer(digits.encode("ascii"), dtype=np.uint8)])

    # -------------------------------------------------------------- derived
    @property
    def max_length(self) -> int:
        return int(self.lengths.max()) if self.lengths.size else 0

    def coded_bits(self, symbols: np.ndarray, counts: np.ndarray) -> int:
        """Payload bits for ``counts`` of ``symbols`` (all in the table)."""
        pos = np.searchsorted(self.symbols, symbols)
        return int(np.dot(self.lengths[pos].astype(np.int64), np.asarray(counts, dtype=np.int64)))

    def _canonical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(order, left-justified start of each code in canonical order, codes in symbol order)."""
        if "canonical" not in self._cache:
            order = np.argsort(self.lengths, kind="stable")  # by length, then symbol
            L = self.max_length
            ls = self.lengths[order].astype(np.uint64)
            inc = np.left_shift(np.uint64(1), np.uint64(L) - ls)
            start = np.cumsum(inc, dtype=np.uint64) - inc
            codes = np.empty(self.symbols.size, dtype=np.uint64)
            codes[order] = start >> (np.uint64(L) - ls)
            self._cache["canonical"] = (order, start, codes)
        return self._cache["canonical"]

    def codes(self) -> np.ndarray:
        """The canonical code of each symbol (uint64, in the low ``lengths`` bits)."""
        return self._canonical()[2]

    def _encoder_lut(self) -> tuple[int, np.ndarray, np.ndarray] | tuple[None, np.ndarray, np.ndarray]:
        """(offset, code left-justified in 64 bits, length) indexed by ``value - offset``.

        With offset None the arrays are in symbol order (index by rank).
        """
        if "enc" not in self._cache:
            left = np.left_shift(self.codes(), (64 - self.lengths.astype(np.uint64)))
            lens = self.lengths
            lo = int(self.symbols[0])
            span = int(self.symbols[-1]) - lo + 1
            if span <= _DENSE_RANGE:
                dense_left = np.zeros(span, dtype=np.uint64)
                dense_len = np.zeros(span, dtype=np.uint8)
                dense_left[self.symbols - lo] = left
                dense_len[self.symbols - lo] = lens
                self._cache["enc"] = (lo, dense_left, dense_len)
            else:
                self._cache["enc"] = (None, left, lens)
        return self._cache["enc"]

    def _decoder_table(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(T, table, starts, canonical lengths, canonical symbols).

        ``table[w]`` for the next T bits ``w`` is ``rank << 6 | length`` of the
        code starting there, or 0 when the code is longer than T bits.
        """
        if "dec" not in self._cache:
            order, start, _ = self._canonical()
            L = self.max_length
            T = min(L, TABLE_BITS)
            ls = self.lengths[order].astype(np.int64)
            short = ls <= T
            ranks = np.flatnonzero(short)
            reps = np.left_shift(1, T - ls[short])
            entry = (ranks.astype(np.uint32) << np.uint32(6)) | ls[short].astype(np.uint32)
            table = np.zeros(1 << T, dtype=np.uint32)
            first = (start[short] >> _U64(L - T)).astype(np.int64)
            filled = np.repeat(entry, reps)
            idx = np.repeat(first - np.cumsum(reps) + reps, reps) + np.arange(filled.size)
            table[idx] = filled
            self._cache["dec"] = (T, table, start, ls.astype(np.uint64), self.symbols[order])
        return self._cache["dec"]


def _as_int64(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.dtype.kind not in "iub":
        raise TypeError(f"Huffman coding needs an integer array, got dtype {data.dtype}")
    if data.dtype == np.uint64 and data.size and data.max() > np.iinfo(np.int64).max:
        raise ValueError("symbol values must fit in int64")
    return np.ascontiguousarray(data.reshape(-1), dtype=np.int64)


# --------------------------------------------------------------------------- bit writing


def _write_bits(lengths: np.ndarray, nbits: int, left: Callable[[int, int], np.ndarray], chunk: int = _CHUNK) -> bytes:
    """Pack codes MSB-first into ``ceil(nbits/8)`` bytes.

    ``left(a, b)`` gives codes ``a..b-1`` left-justified in uint64s (a
    callable so each chunk is gathered while it is in cache), ``lengths[i]``
    is code ``i``'s length (uint8, 1..32 bits). Each code is shifted into the 64-bit window that
    starts at the 32-bit word holding its first bit (it never leaves that
    window); the windows of one word are summed with a cumulative sum (the
    codes' bits are disjoint, so a sum is an OR), and word ``j`` is the high
    half of window ``j`` OR the low half of window ``j - 1``.
    """
    if lengths.dtype != np.uint8:
        raise TypeError("lengths must be uint8")
    nwords = (nbits + 31) // 32
    windows = np.zeros(nwords + 1, dtype=np.uint64)
    base = 0
    for a in range(0, lengths.size, chunk):
        ln = lengths[a : a + chunk]
        phase = base & 31
        end = np.cumsum(ln, dtype=np.uint32)
        if phase:
            end += np.uint32(phase)
        start = end - ln  # bit offsets from the first word this chunk touches
        csum = np.cumsum(left(a, a + chunk) >> (start & np.uint32(31)), dtype=np.uint64)
        last = (start ^ end) > np.uint32(31)  # the next code starts in another word
        last[-1] = True
        per_word = csum[last]
        per_word[1:] -= per_word[:-1].copy()
        first_word = base >> 5
        windows[first_word : first_word + per_word.size] |= per_word
        base += int(end[-1]) - phase
    low = windows[:-1] & _U64(0xFFFFFFFF)
    words = windows[:-1] >> _U64(32)
    words[1:] |= low[:-1]
    return words.astype(">u4").tobytes()[: (nbits + 7) // 8]


def _byte_windows(buf: bytes, pad: int, dtype: str = ">u8") -> np.ndarray:
    """``w[i]`` = the 64 (or 32) bits starting at byte ``i``, big-endian, for every byte plus ``pad`` more."""
    raw = np.zeros(len(buf) + pad + 8, dtype=np.uint8)
    raw[: len(buf)] = np.frombuffer(buf, dtype=np.uint8)
    view = np.ndarray(shape=(len(buf) + pad,), dtype=dtype, buffer=raw, strides=(1,))
    return view.astype(view.dtype.newbyteorder("="))


def _read_fixed(buf: bytes, count: int, width: int) -> np.ndarray:
    """``count`` unsigned ``width``-bit integers packed MSB-first (inverse of `_write_bits`)."""
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.int64)
    w = _byte_windows(buf, 0)
    at = np.arange(count, dtype=np.uint64) * _U64(width)
    return ((w[at >> _U64(3)] << (at & _U64(7))) >> _U64(64 - width)).astype(np.int64)


# --------------------------------------------------------------------------- streams


def default_block(count: int) -> int:
    """Symbols per decode block: the power of two at or above 4 sqrt(count), within [64, 1024].

    Decoding takes ``block`` vectorised steps over ``count / block`` lanes;
    the sync table costs ~log2(sqrt(block)) bits per block. About 4 sqrt(n)
    keeps it under ~0.5% of the payload for streams of a few thousand
    symbols and ~0.2% for long ones, with at most 1024 steps.
    """
    if count <= 1:
        return MIN_BLOCK
    return int(min(MAX_BLOCK, max(MIN_BLOCK, 1 << math.ceil(math.log2(4 * math.sqrt(count))))))


@dataclass(frozen=True, eq=False)
class EncodedStream:
    """A Huffman-coded array: its table, payload and sync table.

    ``payload`` holds ``nbits`` code bits (zero-padded to a byte). ``sync``
    holds the bit length of each block of ``block`` symbols but the last,
    minus ``sync_base``, as ``sync_width``-bit integers.
    """

    table: HuffmanTable
    count: int
    nbits: int
    payload: bytes
    block: int
    sync_base: int
    sync_width: int
    sync: bytes

    @property
    def n_blocks(self) -> int:
        return max(1, -(-self.count // self.block))

    @property
    def sync_bits(self) -> int:
        return (self.n_blocks - 1) * self.sync_width

    @property
    def nbytes(self) -> int:
        """Bytes of payload plus sync table (what the file stores besides the JSON metadata)."""
        return len(self.payload) + len(self.sync)

    def meta(self) -> dict:
        """JSON-able description (everything but the bytes)."""
        return {
            "count": self.count, "nbits": self.nbits, "block": self.block,
            "sync_base": self.sync_base, "sync_width": self.sync_width, **self.table.to_json(),
        }

    def data(self) -> bytes:
        return self.payload + self.sync

    @staticmethod
    def check_meta(meta: dict, max_count: int | None = None) -> tuple[HuffmanTable, int, int, int, int, int, int]:
        """``(table, count, nbits, block, sync_base, sync_width, bytes)`` of a stream description, all checked.

        Nothing is allocated but the code table (at most `MAX_SYMBOLS`
        entries): integer fields and their ranges (``count <= max_count``
        when given, and at most `MAX_COUNT`; ``block`` in [1, 4096];
        ``sync_width`` <= 48; ``sync_base`` <= ``nbits``), the code table, and
        that ``count`` symbols fit ``nbits``: none with no symbols,
        ``nbits == 0`` with one (its count is then bounded only by
        ``max_count``), ``count * shortest <= nbits <= count * longest`` with
        two or more. ``bytes`` is what the payload and sync table must take.
        CompressedFileError if anything is off.
        """
        try:
            if not isinstance(meta, dict):
                raise TypeError("not an object")
            table = HuffmanTable.from_json(meta)
            fields = [meta[k] for k in ("count", "nbits", "block", "sync_base", "sync_width")]
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise CompressedFileError(f"bad stream description: {e}") from None
        if not all(type(v) is int for v in fields):
            raise CompressedFileError("bad stream description: count, nbits, block and sync fields must be integers")
        count, nbits, block, base, width = fields
        limit = MAX_COUNT if max_count is None else min(MAX_COUNT, max_count)
        if not 0 <= count <= limit:
            raise CompressedFileError(f"bad stream description: {count} symbols, at most {limit} fit")
        if not 0 <= nbits <= count * MAX_CODE_LENGTH or not 1 <= block <= MAX_BLOCK_LIMIT or not 0 <= base <= nbits \
                or not 0 <= width <= MAX_SYNC_WIDTH:
            raise CompressedFileError("bad stream description: field out of range")
        n = table.symbols.size
        if (count == 0) != (n == 0):
            raise CompressedFileError("bad stream description: symbol table does not match the count")
        shortest = int(table.lengths.min()) if n else 0
        if nbits < count * shortest or nbits > count * table.max_length:
            raise CompressedFileError("bad stream description: bit count does not match the symbol count")
        nbytes = (nbits + 7) // 8 + ((max(1, -(-count // block)) - 1) * width + 7) // 8
        return table, count, nbits, block, base, width, nbytes

    @classmethod
    def from_parts(cls, meta: dict, data: bytes, max_count: int | None = None) -> "EncodedStream":
        """Inverse of `meta` / `data`; CompressedFileError if they are inconsistent.

        `check_meta` first (nothing allocated), then ``data`` must be exactly
        the payload and sync table it claims. So a stream of two or more
        symbols never holds more than ``8 * len(data)`` symbols, and one of
        one symbol no more than ``max_count``.
        """
        table, count, nbits, block, base, width, nbytes = cls.check_meta(meta, max_count)
        if len(data) != nbytes:
            raise CompressedFileError(f"stream has {len(data)} bytes, expected {nbytes}")
        n_payload = (nbits + 7) // 8
        return cls(table, count, nbits, bytes(data[:n_payload]), block, base, width, bytes(data[n_payload:]))


def _code_table(data: np.ndarray) -> tuple[HuffmanTable, np.ndarray | None]:
    """The optimal table for ``data`` and, when the value range is small, ``data - min`` (reused as LUT index)."""
    lo, hi = int(data.min()), int(data.max())
    if hi - lo >= _DENSE_RANGE:
        return HuffmanTable.from_data(data), None
    idx = data - lo if lo else data
    counts = np.bincount(idx, minlength=hi - lo + 1)
    present = np.flatnonzero(counts)
    return HuffmanTable(present.astype(np.int64) + lo, code_lengths(counts[present])), idx


def encode(data: np.ndarray, table: HuffmanTable | None = None, block: int | None = None) -> EncodedStream:
    """Huffman-code the integer array ``data`` (flattened) with ``table`` (default: its optimal code).

    ``block`` is the number of symbols per decode block (default `default_block`).
    """
    data = _as_int64(data)
    n = data.size
    block = default_block(n) if block is None else int(block)
    if not 1 <= block <= MAX_BLOCK_LIMIT:
        raise ValueError(f"block must be in [1, {MAX_BLOCK_LIMIT}], got {block}")
    idx = None
    if table is None:
        if n == 0:
            table = HuffmanTable(np.zeros(0, np.int64), np.zeros(0, np.uint8))
        else:
            table, idx = _code_table(data)
    if n and table.symbols.size == 0:
        raise ValueError("data holds symbols that are not in the table")
    if n == 0 or table.symbols.size == 1:
        if n and np.any(data != table.symbols[0]):
            raise ValueError("data holds symbols that are not in the table")
        return EncodedStream(table, n, 0, b"", block, 0, 0, b"")
    lo, left_lut, len_lut = table._encoder_lut()
    trusted = idx is not None
    if lo is not None:
        if not trusted:
            idx = data - lo if lo else data
            if idx.min() < 0 or idx.max() >= len_lut.size:
                raise ValueError("data holds symbols that are not in the table")
    else:
        idx = np.minimum(np.searchsorted(table.symbols, data), table.symbols.size - 1)
        if not trusted and np.any(table.symbols[idx] != data):
            raise ValueError("data holds symbols that are not in the table")
    lengths = len_lut[idx]
    if not trusted and lo is not None and not lengths.all():
        raise ValueError("data holds symbols that are not in the table")
    nbits = int(lengths.sum(dtype=np.int64))
    payload = _write_bits(lengths, nbits, lambda a, b: left_lut[idx[a:b]])
    n_blocks = -(-n // block)
    base, width, sync = 0, 0, b""
    if n_blocks > 1:
        block_bits = np.add.reduceat(lengths, np.arange(0, n, block), dtype=np.int64)[:-1]
        base = int(block_bits.min())
        rel = (block_bits - base).astype(np.uint64)
        width = int(rel.max()).bit_length()
        if width:
            rel <<= _U64(64 - width)
            sync = _write_bits(np.full(rel.size, width, np.uint8), rel.size * width, lambda a, b: rel[a:b])
    return EncodedStream(table, n, nbits, payload, block, base, width, sync)


def decode(stream: EncodedStream) -> np.ndarray:
    """The int64 array that `encode` coded; CompressedFileError if the bits do not decode exactly."""
    table, n = stream.table, stream.count
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if table.symbols.size == 1:
        return np.full(n, table.symbols[0], dtype=np.int64)
    K, M = stream.block, stream.n_blocks
    rel = _read_fixed(stream.sync, M - 1, stream.sync_width)
    shortest, longest = int(table.lengths.min()), table.max_length
    steps = min(K, n)
    last = n - (M - 1) * K  # symbols in the last block
    block_bits = rel + stream.sync_base  # each full block's length: K codes, so within [K * shortest, K * longest]
    if M > 1 and (block_bits.min() < K * shortest or block_bits.max() > K * longest):
        raise CompressedFileError("Huffman stream is corrupt (a sync table entry does not fit its block)")
    bounds = np.empty(M + 1, dtype=np.int64)  # where each block starts, and the end of the payload
    bounds[0], bounds[M] = 0, stream.nbits
    np.cumsum(block_bits, out=bounds[1:M])  # at most count * 32: no overflow
    if not last * shortest <= stream.nbits - bounds[M - 1] <= last * longest:
        raise CompressedFileError("Huffman stream is corrupt (sync table beyond the payload)")
    canon_sym = table._decoder_table()[4]
    out = np.empty(n, dtype=np.int64)
    for g0 in range(0, M, _LANE_GROUP):  # groups of blocks keep each step's reads within cache
        g1 = min(M, g0 + _LANE_GROUP)
        entries, ends = _decode_blocks(stream.payload, bounds[g0:g1], steps, table, last if g1 == M else steps)
        if np.any(ends != bounds[g0 + 1 : g1 + 1]):
            raise CompressedFileError("Huffman stream is corrupt (codes do not end where the sync table says)")
        ranks = entries.T.reshape(-1)[: min(n, g1 * K) - g0 * K] >> np.uint32(6)
        out[g0 * K : g0 * K + ranks.size] = canon_sym[ranks]
    return out


def _decode_blocks(
    payload: bytes, starts: np.ndarray, steps: int, table: HuffmanTable, last: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``steps`` symbols from each start at once (the last start only ``last``).

    Returns the table entries ``(steps, len(starts))`` (``rank << 6 | length``)
    and where each block ended.
    """
    T, lut, code_starts, canon_len, _ = table._decoder_table()
    L = table.max_length
    first_byte = int(starts[0]) >> 3
    end_byte = (int(starts[-1]) + steps * L) // 8 + 2  # the furthest any lane can read (also on corrupt data)
    windows = _byte_windows(payload[first_byte:end_byte], end_byte - min(end_byte, len(payload)))
    G = starts.size
    out = np.empty((steps, G), dtype=np.uint32)
    pos = (starts - 8 * first_byte).astype(np.uint64)
    byte, win = np.empty(G, np.uint64), np.empty(G, np.uint64)
    length = np.empty(G, np.uint32)
    three, seven, mask = _U64(3), _U64(7), np.uint32(63)
    shift, long_shift = _U64(64 - T), _U64(64 - L)
    end_last = 0
    for k in range(steps):  # one symbol of every block per step
        np.right_shift(pos, three, out=byte)
        np.take(windows, byte, out=win)
        np.bitwise_and(pos, seven, out=byte)
        np.left_shift(win, byte, out=win)  # the next 64 - 7 bits, MSB first
        entry = out[k]
        np.take(lut, win >> shift, out=entry)
        if L > T:  # codes longer than the table: binary search among the left-justified code starts
            slow = np.flatnonzero(entry == 0)
            if slow.size:
                rank = np.searchsorted(code_starts, win[slow] >> long_shift, side="right") - 1
                entry[slow] = (rank.astype(np.uint32) << np.uint32(6)) | canon_len[rank].astype(np.uint32)
        np.bitwise_and(entry, mask, out=length)
        np.add(pos, length, out=pos)
        if k == last - 1:
            end_last = int(pos[-1])
    ends = pos.astype(np.int64) + 8 * first_byte
    ends[-1] = end_last + 8 * first_byte
    return out, ends
