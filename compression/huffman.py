"""Canonical Huffman coding of small non-negative integers (symbols 0 … 65535).

Huffman (1952): put every symbol in a heap keyed by its frequency, then repeatedly merge the two
least frequent subtrees into one. A symbol's code length l_s is its depth in the final tree. Of all
prefix codes this minimises the coded size

    bits = Σ_s f_s · l_s,        and   n · H ≤ bits < n · (H + 1),   H = −Σ_s p_s log2 p_s,

so frequent symbols get short codes and rare ones long codes.

Canonical codes (DEFLATE, JPEG): only the code *lengths* are kept. Sort the symbols by (length,
symbol); read as a binary fraction 0.c, each code is the Kraft sum Σ 2^−l of the codes before it:

    code_0 = 0,    code_{i+1} = (code_i + 1) << (l_{i+1} − l_i).

The table that travels with the bits is therefore just symbol → code length.

Bits are written most significant first. Decoding looks at L bits at a time (L = the longest code):
in canonical order the codes tile the L-bit windows, code i owning the 2^(L − l_i) windows that start
with it, so one array lookup tells which symbol starts at a bit position and how long its code is.
Code lengths are capped at MAX_CODE_LENGTH = 16 so that lookup array has at most 65,536 entries.
"""
from __future__ import annotations

import heapq
import math
import struct

import numpy as np

MAX_CODE_LENGTH = 16
MAX_SYMBOL = 65535


class HuffmanError(ValueError):
    """A code table or a bit stream is malformed."""


# --- code lengths ------------------------------------------------------------------------------------

def _symbols_and_counts(frequencies) -> tuple[np.ndarray, np.ndarray]:
    """(symbols, counts) of the symbols that occur, from a {symbol: count} dict or a bincount array."""
    if isinstance(frequencies, dict):
        symbols = np.array(sorted(s for s, c in frequencies.items() if c > 0), dtype=np.int64)
        counts = np.array([frequencies[s] for s in symbols.tolist()], dtype=np.int64)
    else:
        counts = np.asarray(frequencies, dtype=np.int64)
        symbols = np.flatnonzero(counts > 0)
        counts = counts[symbols]
    if len(symbols) and (symbols[0] < 0 or symbols[-1] > MAX_SYMBOL):
        raise ValueError(f"symbols must be integers 0 … {MAX_SYMBOL}")
    return symbols, counts


def _tree_depths(counts: np.ndarray) -> np.ndarray:
    """Depth of each leaf in the Huffman tree built from `counts` (at least two of them)."""
    heap = [(int(c), i, [i]) for i, c in enumerate(counts)]   # (frequency, tie-break, leaves below)
    heapq.heapify(heap)
    depths = np.zeros(len(counts), dtype=np.int64)
    tie = len(heap)
    while len(heap) > 1:
        f1, _, leaves1 = heapq.heappop(heap)
        f2, _, leaves2 = heapq.heappop(heap)
        merged = leaves1 + leaves2
        depths[merged] += 1          # every leaf under the new node sits one level deeper
        heapq.heappush(heap, (f1 + f2, tie, merged))
        tie += 1
    return depths


def code_lengths(frequencies) -> dict[int, int]:
    """Huffman code length of every symbol that occurs: {symbol: length}.

    `frequencies` is a {symbol: count} dict or an array of counts indexed by symbol (np.bincount).
    A lone symbol gets a 1-bit code. Lengths never exceed MAX_CODE_LENGTH: if the tree is deeper,
    the counts are halved (rounding up, so none reaches zero) until it is not; that flattens the
    distribution and costs a fraction of a percent in size.
    """
    symbols, counts = _symbols_and_counts(frequencies)
    if len(symbols) == 0:
        return {}
    if len(symbols) == 1:
        return {int(symbols[0]): 1}
    depths = _tree_depths(counts)
    while depths.max() > MAX_CODE_LENGTH:
        counts = (counts + 1) // 2
        depths = _tree_depths(counts)
    return dict(zip(symbols.tolist(), depths.tolist()))


def huffman_bits(frequencies, table: dict[int, int] | None = None) -> int:
    """The coded size in bits, Σ_s f_s · l_s, without encoding anything (`table` defaults to the
    Huffman code of `frequencies`)."""
    table = code_lengths(frequencies) if table is None else table
    symbols, counts = _symbols_and_counts(frequencies)
    return sum(int(c) * table[int(s)] for s, c in zip(symbols, counts))


# --- canonical codes ---------------------------------------------------------------------------------

def _canonical_arrays(table: dict[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(symbols, lengths, codes) in canonical order, after checking the table is a prefix code."""
    check_table(table)
    pairs = sorted(table.items(), key=lambda item: (item[1], item[0]))
    symbols = np.array([s for s, _ in pairs], dtype=np.int64)
    lengths = np.array([l for _, l in pairs], dtype=np.int64)
    weights = 1 << (MAX_CODE_LENGTH - lengths)          # 2^−l in units of 2^−MAX_CODE_LENGTH
    kraft_before = np.cumsum(weights) - weights
    codes = kraft_before >> (MAX_CODE_LENGTH - lengths)
    return symbols, lengths, codes


def check_table(table: dict[int, int]) -> None:
    """Raise HuffmanError unless `table` maps symbols 0 … 65535 to lengths 1 … 16 with Kraft sum
    Σ 2^−l ≤ 1 (the condition for a prefix code with those lengths to exist)."""
    for symbol, length in table.items():
        if not (isinstance(symbol, int) and 0 <= symbol <= MAX_SYMBOL):
            raise HuffmanError(f"code table names symbol {symbol!r}; symbols are 0 … {MAX_SYMBOL}")
        if not (isinstance(length, int) and 1 <= length <= MAX_CODE_LENGTH):
            raise HuffmanError(f"code length {length!r} for symbol {symbol}; lengths are 1 … {MAX_CODE_LENGTH}")
    if sum(1 << (MAX_CODE_LENGTH - l) for l in table.values()) > 1 << MAX_CODE_LENGTH:
        raise HuffmanError("code table is not a prefix code (its Kraft sum Σ 2^-l exceeds 1)")


def canonical_codes(table: dict[int, int]) -> dict[int, str]:
    """The canonical code of each symbol as a string of '0'/'1' (for reading, not for speed)."""
    symbols, lengths, codes = _canonical_arrays(table)
    return {int(s): format(int(c), f"0{l}b") for s, l, c in zip(symbols, lengths, codes)}


# --- encode ------------------------------------------------------------------------------------------

def encode(symbols: np.ndarray, table: dict[int, int] | None = None) -> tuple[bytes, dict[int, int]]:
    """Huffman-code a 1-d array of symbols: (bytes, table {symbol: code length}).

    The last byte is padded with zero bits; the decoder needs the symbol count. `table` defaults to
    the Huffman code of the symbols' own frequencies.
    """
    symbols = _as_symbols(symbols)
    if table is None:
        table = code_lengths(np.bincount(symbols)) if len(symbols) else {}
    if len(symbols) == 0:
        return b"", table
    order, lengths, codes = _canonical_arrays(table)
    length_of = np.zeros(MAX_SYMBOL + 1, dtype=np.int64)
    code_of = np.zeros(MAX_SYMBOL + 1, dtype=np.int64)
    length_of[order], code_of[order] = lengths, codes
    n_bits, code = length_of[symbols], code_of[symbols]
    if (n_bits == 0).any():
        raise HuffmanError("a symbol to encode has no code in the table")
    # Left-align every code in 16 bits, spell those out as a (n, 16) matrix of bits, keep the
    # first l bits of each row (row-major, so in order) and pack them eight to a byte.
    aligned = (code << (MAX_CODE_LENGTH - n_bits)).astype(">u2")
    bit_matrix = np.unpackbits(aligned.view(np.uint8)).reshape(-1, MAX_CODE_LENGTH)
    keep = np.arange(MAX_CODE_LENGTH) < n_bits[:, None]
    return np.packbits(bit_matrix[keep]).tobytes(), table


def _as_symbols(symbols) -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or not (np.issubdtype(symbols.dtype, np.integer) or symbols.size == 0):
        raise ValueError("symbols must be a 1-d array of integers")
    symbols = symbols.astype(np.int64)
    if len(symbols) and (symbols.min() < 0 or symbols.max() > MAX_SYMBOL):
        raise ValueError(f"symbols must be integers 0 … {MAX_SYMBOL}")
    return symbols


# --- decode ------------------------------------------------------------------------------------------

def decode(data: bytes, table: dict[int, int], count: int) -> np.ndarray:
    """Decode `count` symbols from `data`; raises HuffmanError on a corrupt or short stream."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    if not table:
        raise HuffmanError(f"{count} symbols to decode but the code table is empty")
    n_bits = len(data) * 8
    if count < 0 or count > n_bits:
        raise HuffmanError(f"{count} symbols cannot fit in {len(data)} bytes (every code is at least one bit)")
    symbols, lengths, _ = _canonical_arrays(table)
    window = int(lengths.max())
    if len(data) > math.ceil(count * window / 8):
        raise HuffmanError(f"{len(data)} bytes are more than {count} codes of at most {window} bits fill")
    if n_bits >= 1 << 31:
        raise ValueError("decode handles at most 256 MB of coded bits at a time")
    # Lookup on `window`-bit values: code i owns 2^(window − l_i) consecutive windows; the rest,
    # if the code is incomplete, start no code (length 0).
    repeats = 1 << (window - lengths)
    symbol_of = np.zeros(1 << window, dtype=np.int64)
    length_of = np.zeros(1 << window, dtype=np.uint8)
    used = int(repeats.sum())
    symbol_of[:used], length_of[:used] = np.repeat(symbols, repeats), np.repeat(lengths, repeats)

    windows = _windows(data, window)                   # the window starting at every bit position
    length_at = length_of[windows]
    # next_start[p]: where the code after one starting at bit p starts; position n_bits (past the
    # end, no code there) points at itself.
    next_start = np.empty(n_bits + 1, dtype=np.int32)
    next_start[:-1] = np.arange(n_bits, dtype=np.int32) + length_at
    next_start[-1] = n_bits
    np.minimum(next_start, n_bits, out=next_start)
    starts = _follow(next_start, count)
    valid = starts < n_bits
    if not valid.all() or (length_at[starts] == 0).any() or starts[-1] + length_at[starts[-1]] > n_bits:
        raise HuffmanError("the coded bits are corrupt or cut short")
    return symbol_of[windows[starts]]


def _follow(next_start: np.ndarray, count: int) -> np.ndarray:
    """Start positions of `count` codes: each code starts where the previous one ended.

    Inherently sequential, so a plain loop; memoryviews keep each step a cheap C-level lookup.
    """
    starts = np.empty(count, dtype=np.int64)
    out, step = memoryview(starts), memoryview(next_start)
    position = 0
    for i in range(count):
        out[i] = position
        position = step[position]
    return starts


def _windows(data: bytes, width: int) -> np.ndarray:
    """The `width`-bit value (width ≤ 25) starting at every bit position of `data`, zero-padded."""
    b = np.frombuffer(data + bytes(4), dtype=np.uint8).astype(np.uint32)
    word = (b[:-4] << 24) | (b[1:-3] << 16) | (b[2:-2] << 8) | b[3:-1]   # big-endian word at each byte
    windows = np.empty((len(data), 8), dtype=np.int32)
    for offset in range(8):               # the window starting `offset` bits into each byte
        windows[:, offset] = (word << np.uint32(offset)) >> np.uint32(32 - width)   # uint32: high bits fall off
    return windows.reshape(-1)


# --- the table as bytes ------------------------------------------------------------------------------

_TABLE_HEAD = struct.Struct("<IB")   # number of symbols, bytes per symbol (1 or 2)


def table_to_bytes(table: dict[int, int]) -> bytes:
    """symbol → length as: count (uint32), symbol width (uint8), symbols ascending, lengths (uint8)."""
    symbols = np.array(sorted(table), dtype=np.int64)
    width = 2 if len(symbols) and symbols[-1] > 255 else 1
    lengths = np.array([table[s] for s in symbols.tolist()], dtype=np.uint8)
    return (_TABLE_HEAD.pack(len(symbols), width) + symbols.astype(f"<u{width}").tobytes()
            + lengths.tobytes())


def table_size(table: dict[int, int]) -> int:
    """len(table_to_bytes(table)), without building it."""
    width = 2 if table and max(table) > 255 else 1
    return _TABLE_HEAD.size + len(table) * (width + 1)


def table_from_bytes(data: bytes) -> dict[int, int]:
    """Inverse of table_to_bytes; raises HuffmanError on anything malformed."""
    if len(data) < _TABLE_HEAD.size:
        raise HuffmanError(f"code table of {len(data)} bytes is too short")
    n, width = _TABLE_HEAD.unpack_from(data)
    if width not in (1, 2) or len(data) != _TABLE_HEAD.size + n * (width + 1):
        raise HuffmanError("code table has the wrong size for the symbols it announces")
    symbols = np.frombuffer(data, dtype=f"<u{width}", count=n, offset=_TABLE_HEAD.size).astype(np.int64)
    lengths = np.frombuffer(data, dtype=np.uint8, count=n, offset=_TABLE_HEAD.size + n * width)
    if n > 1 and (np.diff(symbols) <= 0).any():
        raise HuffmanError("code table lists a symbol twice or out of order")
    table = dict(zip(symbols.tolist(), lengths.astype(np.int64).tolist()))
    check_table(table)
    return table
