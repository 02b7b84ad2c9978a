"""How one tensor travels in a packed file: its layout, planned from exact sizes, then encoded.

Han et al. 2016 ("Deep Compression", section 4) store each layer as
- where its nonzero weights are: the *gaps* between consecutive nonzeros rather than absolute
  positions, since gaps are small numbers that Huffman coding shrinks further;
- what they are: a codebook of the layer's distinct values plus, per nonzero weight, an index into
  it (Huffman-coded too: a few centroids are used far more often than others).

This module does that for every Conv2d and Linear weight, and per tensor picks whichever of four
layouts is smallest (each size is known exactly before encoding anything):

    positions  dense   every element is stored, zeros included (best for unpruned layers)
               sparse  only nonzeros; their gaps are Huffman-coded
    values     raw     the values themselves, in the tensor's dtype
               codebook  the ≤ 256 distinct values (exact) + Huffman-coded indices
               channel_codebook  one codebook per output channel (≤ 256 values each, their counts as
                       uint16) + Huffman-coded indices into the value's own channel's codebook
               grid    every value of output channel c is m · s_c for a small integer m: what uniform
                       quantization produces (ŵ = (q − z)·s). Stores s_c (float32) and the least m of each
                       channel (int16), then m − m_min Huffman-coded; float32(m) · s_c reproduces each
                       value bit for bit (checked when packing; otherwise another layout is used)

Every other tensor (BN parameters and statistics, biases, num_batches_tracked) is stored raw.
Values travel as their exact bit patterns, so a reloaded model gives the same logits bit for bit.
(A zero weight is stored as +0.0: a pruned weight that was -0.0 comes back as +0.0, equal in value.)

Gaps: a gap g (zeros since the previous nonzero) is written as ⌊g / 255⌋ ESCAPE symbols, each meaning
"255 zeros, no nonzero yet", then the symbol g mod 255; so the alphabet is 0 … 255 however long the
runs of zeros are. packed.py puts the encoded tensors into the file and decodes them again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import huffman
from .prune import prunable_layers
from .weights import computed_state_dict

ESCAPE = 255                                # gap symbol: "255 zeros, no nonzero yet"
MAX_CODEBOOK = 256

# dtype name -> (torch dtype, how its values travel: the same-size little-endian unsigned integer)
DTYPES = {
    "float32": (torch.float32, "<u4"), "float16": (torch.float16, "<u2"),
    "bfloat16": (torch.bfloat16, "<u2"), "float64": (torch.float64, "<u8"),
    "int64": (torch.int64, "<u8"), "int32": (torch.int32, "<u4"), "int16": (torch.int16, "<u2"),
    "int8": (torch.int8, "<u1"), "uint8": (torch.uint8, "<u1"),
}
_SAME_SIZE_INT = {1: (torch.uint8, np.uint8), 2: (torch.int16, np.int16),
                  4: (torch.int32, np.int32), 8: (torch.int64, np.int64)}
LAYOUTS = {   # (positions, values) -> payload segments, in order
    ("dense", "raw"): ("values",),
    ("sparse", "raw"): ("gap_table", "gaps", "values"),
    ("dense", "codebook"): ("codebook", "index_table", "indices"),
    ("sparse", "codebook"): ("gap_table", "gaps", "codebook", "index_table", "indices"),
    ("dense", "channel_codebook"): ("channel_counts", "codebook", "index_table", "indices"),
    ("sparse", "channel_codebook"): ("gap_table", "gaps", "channel_counts", "codebook", "index_table", "indices"),
    ("dense", "grid"): ("grid", "index_table", "indices"),
    ("sparse", "grid"): ("gap_table", "gaps", "grid", "index_table", "indices"),
}
GRID = np.dtype([("scale", "<f4"), ("least", "<i2")])    # per output channel, 6 bytes
MAX_GRID_SYMBOL = 4095


# --- values as bit patterns --------------------------------------------------------------------------

def dtype_name(dtype: torch.dtype) -> str:
    for name, (torch_dtype, _) in DTYPES.items():
        if torch_dtype == dtype:
            return name
    raise ValueError(f"cannot pack tensors of dtype {dtype}; supported: {', '.join(DTYPES)}")


def to_bits(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's elements as unsigned integers with the same bits (flattened)."""
    tensor = tensor.detach().cpu().contiguous()
    int_dtype, _ = _SAME_SIZE_INT[tensor.element_size()]
    np_bits = DTYPES[dtype_name(tensor.dtype)][1]
    return tensor.view(int_dtype).numpy().reshape(-1).view(np_bits)


def from_bits(bits: np.ndarray, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    torch_dtype, np_bits = DTYPES[dtype]
    bits = np.ascontiguousarray(bits, dtype=np_bits)
    _, np_int = _SAME_SIZE_INT[bits.itemsize]
    return torch.from_numpy(bits.view(np_int).copy()).view(torch_dtype).reshape(shape)


def positive_zeros(weight: torch.Tensor) -> torch.Tensor:
    """-0.0 → +0.0, so that "zero" is exactly the all-zero bit pattern."""
    return torch.where(weight == 0, torch.zeros((), dtype=weight.dtype), weight)


# --- positions as gaps -------------------------------------------------------------------------------

def gap_symbols(nonzero_at: np.ndarray) -> np.ndarray:
    """Sorted nonzero positions → gap symbols (see the module docstring)."""
    gaps = np.diff(nonzero_at, prepend=-1) - 1
    per_nonzero = gaps // ESCAPE + 1                       # escapes, then the remainder
    symbols = np.full(int(per_nonzero.sum()), ESCAPE, dtype=np.int64)
    symbols[np.cumsum(per_nonzero) - 1] = gaps % ESCAPE
    return symbols


def positions_from_gaps(symbols: np.ndarray) -> np.ndarray:
    """Inverse of gap_symbols: an escape advances 255 positions, a gap g advances g + 1 and lands
    on a nonzero."""
    advance = np.where(symbols == ESCAPE, ESCAPE, symbols + 1)
    return (np.cumsum(advance) - 1)[symbols != ESCAPE]


# --- planning: the size of every layout, before encoding -----------------------------------------------

@dataclass
class TensorPlan:
    name: str
    dtype: str
    shape: tuple[int, ...]
    bits: np.ndarray                     # flattened values as unsigned integers
    is_weight: bool = False              # a Conv2d/Linear weight (the others are always raw)
    positions: str = "dense"
    values: str = "raw"
    stored: int = 0                      # values stored: numel when dense, nonzeros when sparse
    gaps: np.ndarray | None = None       # gap symbols (sparse)
    gap_table: dict = field(default_factory=dict)
    codebook: np.ndarray | None = None   # distinct values (codebook), as bits
    indices: np.ndarray | None = None    # index of each stored value in the codebook (its channel's)
    channel_counts: np.ndarray | None = None   # channel_codebook: codebook entries per output channel
    grid: np.ndarray | None = None             # grid: (scale, least multiple) per output channel
    index_table: dict = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)   # segment -> bytes

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())

    def descriptor(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if (self.positions, self.values) != ("dense", "raw"):
            d.update(positions=self.positions, values=self.values, stored=self.stored, bytes=self.sizes)
            if self.positions == "sparse":
                d["gap_symbols"] = len(self.gaps)
            if self.values in ("codebook", "channel_codebook"):
                d["codebook"] = len(self.codebook)
        return d


def _huffman_sizes(symbols: np.ndarray, table_key: str, bits_key: str) -> tuple[dict, dict[str, int]]:
    """(Huffman table of `symbols`, {table_key: its bytes, bits_key: bytes of the coded symbols})."""
    frequencies = np.bincount(symbols, minlength=1)
    table = huffman.code_lengths(frequencies)
    n_bits = huffman.huffman_bits(frequencies, table)
    return table, {table_key: huffman.table_size(table), bits_key: math.ceil(n_bits / 8)}


def plan_raw(name: str, tensor: torch.Tensor) -> TensorPlan:
    bits = to_bits(tensor)
    return TensorPlan(name, dtype_name(tensor.dtype), tuple(tensor.shape), bits, stored=bits.size,
                      sizes={"values": bits.nbytes})


def plan_weight(name: str, weight: torch.Tensor) -> TensorPlan:
    """Size every layout of a Conv2d/Linear weight and keep the smallest."""
    plan = plan_raw(name, positive_zeros(weight))
    plan.is_weight = True
    bits, itemsize = plan.bits, plan.bits.itemsize
    nonzero_at = np.flatnonzero(bits)
    gaps = gap_symbols(nonzero_at)
    gap_table, gap_sizes = _huffman_sizes(gaps, "gap_table", "gaps")
    options = {("dense", "raw"): ({"values": bits.nbytes}, None),
               ("sparse", "raw"): ({**gap_sizes, "values": len(nonzero_at) * itemsize}, None)}
    for positions, stored in (("sparse", bits[nonzero_at]), ("dense", bits)):
        codebook, indices = np.unique(stored, return_inverse=True)
        if len(codebook) > MAX_CODEBOOK:
            break                        # the dense values have at least as many distinct ones
        index_table, index_sizes = _huffman_sizes(indices, "index_table", "indices")
        sizes = {**(gap_sizes if positions == "sparse" else {}),
                 "codebook": codebook.nbytes, **index_sizes}
        options[(positions, "codebook")] = (sizes, (codebook, indices, index_table))
    rows = weight.shape[0] if weight.dim() > 1 else 1
    if rows > 1 and itemsize <= 4:
        for positions, at in (("sparse", nonzero_at), ("dense", np.arange(bits.size))):
            per_channel = channel_codebooks(bits[at], at // (bits.size // rows), rows)
            if per_channel is None:
                continue
            counts, codebook, indices = per_channel
            index_table, index_sizes = _huffman_sizes(indices, "index_table", "indices")
            sizes = {**(gap_sizes if positions == "sparse" else {}), "channel_counts": counts.nbytes,
                     "codebook": codebook.nbytes, **index_sizes}
            options[(positions, "channel_codebook")] = (sizes, (codebook, indices, index_table, counts))
    if rows > 1 and plan.dtype == "float32":
        for positions, at in (("sparse", nonzero_at), ("dense", np.arange(bits.size))):
            found = uniform_grid(bits[at].view("<f4"), at // (bits.size // rows), rows)
            if found is None:
                break
            grid, symbols = found
            index_table, index_sizes = _huffman_sizes(symbols, "index_table", "indices")
            sizes = {**(gap_sizes if positions == "sparse" else {}), "grid": grid.nbytes, **index_sizes}
            options[(positions, "grid")] = (sizes, (grid, symbols, index_table))
    layout = min(options, key=lambda k: sum(options[k][0].values()))   # ties: the simpler, listed first
    plan.positions, plan.values = layout
    plan.sizes = options[layout][0]
    plan.stored = bits.size if plan.positions == "dense" else len(nonzero_at)
    if plan.positions == "sparse":
        plan.gaps, plan.gap_table = gaps, gap_table
    if plan.values == "codebook":
        plan.codebook, plan.indices, plan.index_table = options[layout][1]
    if plan.values == "channel_codebook":
        plan.codebook, plan.indices, plan.index_table, plan.channel_counts = options[layout][1]
    if plan.values == "grid":
        plan.grid, plan.indices, plan.index_table = options[layout][1]
    return plan


def uniform_grid(values: np.ndarray, channels: np.ndarray, rows: int):
    """If every float32 value of channel c is exactly float32(m · s_c) for integers m spanning at most
    MAX_GRID_SYMBOL + 1 steps: (per-channel (s_c, least m) as GRID, the symbols m − least m); else None.

    The step is estimated from the smallest gap between the channel's distinct values, refined from the
    value with the largest multiple (whose rounding error, relative to m, is the smallest), and checked
    on every value: a wrong guess only means that another layout is used."""
    grid = np.zeros(rows, dtype=GRID)
    multiples = np.zeros(len(values), dtype=np.int64)
    order = np.argsort(channels, kind="stable")
    bounds = np.searchsorted(channels[order], np.arange(rows + 1))
    for c in range(rows):
        at = order[bounds[c]:bounds[c + 1]]
        v = values[at]
        found = channel_step(v)
        if found is None:
            return None
        step, m = found
        if m.max(initial=0) - m.min(initial=0) > MAX_GRID_SYMBOL or abs(m.min(initial=0)) > 32767:
            return None
        grid[c] = (step, m.min(initial=0))
        multiples[at] = m - m.min(initial=0)
    return grid, multiples


def channel_step(v: np.ndarray):
    """(s, m) with float32(m · s) == v exactly, m integers, or None."""
    distinct = np.unique(v)
    rough = np.concatenate([np.diff(distinct), np.abs(distinct[distinct != 0])])
    rough = rough[rough > 0]
    if len(rough) == 0:
        return np.float32(0), np.zeros(len(v), dtype=np.int64)        # all zeros
    m = np.rint(distinct.astype(np.float64) / rough.min()).astype(np.int64)
    far = np.argmax(np.abs(m))
    estimate = np.float32(distinct[far] / np.float64(m[far]))
    for step in (estimate, *np.nextafter(estimate, [np.float32(np.inf), np.float32(-np.inf)])):
        step = np.float32(step)
        if step <= 0:
            continue
        m = np.rint(v.astype(np.float64) / np.float64(step)).astype(np.int64)
        if np.array_equal((m.astype(np.float32) * step).view("<u4"), v.view("<u4")):
            return step, m
    return None


def channel_codebooks(values: np.ndarray, channels: np.ndarray, rows: int):
    """Per-channel codebooks of `values` (bit patterns, ≤ 32 bits) whose output channel is `channels`:
    (entries per channel as uint16, the codebooks one after another, each value's index within its own
    channel's codebook), or None when some channel has more than 256 distinct values."""
    keys = (channels.astype(np.uint64) << np.uint64(32)) | values.astype(np.uint64)
    unique, inverse = np.unique(keys, return_inverse=True)
    unique_channel = (unique >> np.uint64(32)).astype(np.int64)
    counts = np.bincount(unique_channel, minlength=rows)
    if counts.max(initial=0) > MAX_CODEBOOK:
        return None
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    codebook = (unique & np.uint64(0xFFFFFFFF)).astype(values.dtype)
    indices = inverse.reshape(-1) - starts[channels]
    return counts.astype("<u2"), codebook, indices.astype(np.int64)


def plan_model(model: nn.Module) -> list[TensorPlan]:
    weights = {f"{name}.weight" for name in prunable_layers(model)}
    return [plan_weight(k, v) if k in weights else plan_raw(k, v)
            for k, v in computed_state_dict(model).items()]


# --- encoding --------------------------------------------------------------------------------------------

def encode_tensor(plan: TensorPlan) -> bytes:
    segments = {}
    if plan.positions == "sparse":
        segments["gap_table"] = huffman.table_to_bytes(plan.gap_table)
        segments["gaps"] = huffman.encode(plan.gaps, plan.gap_table)[0]
    if plan.values == "raw":
        values = plan.bits if plan.positions == "dense" else plan.bits[plan.bits != 0]
        segments["values"] = values.tobytes()
    else:
        if plan.values == "channel_codebook":
            segments["channel_counts"] = plan.channel_counts.tobytes()
        if plan.values == "grid":
            segments["grid"] = plan.grid.tobytes()
        else:
            segments["codebook"] = plan.codebook.tobytes()
        segments["index_table"] = huffman.table_to_bytes(plan.index_table)
        segments["indices"] = huffman.encode(plan.indices, plan.index_table)[0]
    assert {k: len(v) for k, v in segments.items()} == plan.sizes, "planned and encoded sizes differ"
    return b"".join(segments[k] for k in LAYOUTS[plan.positions, plan.values])
