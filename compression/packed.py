"""The packed model file: how Deep Compression stores a pruned, weight-shared network.

Han et al. 2016 ("Deep Compression", section 4) store each layer as
- where its nonzero weights are: the *gaps* between consecutive nonzeros rather than absolute
  positions, since gaps are small numbers that Huffman coding shrinks further;
- what they are: a codebook of the layer's distinct values plus, per nonzero weight, an index into
  it (Huffman-coded too: a few centroids are used far more often than others).

This file does that for every Conv2d and Linear weight, and per tensor picks whichever of four
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
runs of zeros are.

File layout (integers little-endian):

    offset  size  what
    0       4     magic b"CMPK"
    4       2     format version (uint16) = 1
    6       4     header length H (uint32)
    10      8     payload length P (uint64)
    18      H     header: UTF-8 JSON {"format", "arch", "width", "metadata", "tensors": [descriptor…]},
                  zlib-compressed (a resnet20's header shrinks from 12 kB to 1 kB; read it with
                  json.loads(zlib.decompress(...)))
    18+H    P     payload: each tensor's segments, in descriptor order
    18+H+P  32    SHA-256 of everything before it (catches damage, not forgery: a hostile file can
                  carry a valid checksum, so everything is validated as well)

A descriptor names the tensor, its dtype and shape; a weight's descriptor also gives its layout,
the number of stored values, the number of gap symbols, the codebook size and the byte length of each
segment (gap_table, gaps, codebook, index_table, indices, values; a Huffman table is
huffman.table_to_bytes). A tensor without a layout is raw: numel · itemsize bytes.

Loading runs no code from the file (no pickle, no torch.load) and checks every number it reads;
anything malformed raises files.ModelFileError with a message that says what to do.
"""
from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from . import huffman
from .files import ModelFileError, check_identity, check_tensor_specs, model_from_state_dict
from .models import ARCHS
from .prune import prunable_layers

MAGIC = b"CMPK"
VERSION = 1
FORMAT = "compression-playground-packed"
PREAMBLE = struct.Struct("<4sHIQ")          # magic, version, header length, payload length
CHECKSUM_BYTES = 32                         # SHA-256
ESCAPE = 255                                # gap symbol: "255 zeros, no nonzero yet"
MAX_CODEBOOK = 256
MAX_ELEMENTS = 1 << 26                      # per tensor and per file: far above resnet56 at width 8
MAX_TENSORS = 10_000
MAX_HEADER_BYTES = 1 << 24                  # uncompressed

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


def computed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of the model as it computes, under the plain names: a pruned tensor becomes
    weight_orig · weight_mask, a parametrized one (weight sharing, …) the parametrization's output.
    Nothing is copied or changed."""
    state = model.state_dict()
    part_of, computed = {}, {}          # state_dict key -> plain key it is part of; plain key -> tensor
    with torch.no_grad():
        for prefix, module in model.named_modules():
            p = f"{prefix}." if prefix else ""
            if parametrize.is_parametrized(module):
                for t in module.parametrizations:
                    computed[p + t] = getattr(module, t)
                    part_of.update({k: p + t for k in state if k.startswith(f"{p}parametrizations.{t}.")})
            for key in list(module._parameters):
                t = key.removesuffix("_orig")
                if key.endswith("_orig") and hasattr(module, t + "_mask"):
                    computed[p + t] = module._parameters[key] * getattr(module, t + "_mask")
                    part_of.update({p + key: p + t, f"{p}{t}_mask": p + t})
    out = {}
    for key, value in state.items():
        plain = part_of.get(key, key)
        if plain not in out:
            out[plain] = (computed[plain] if plain in computed else value).detach().cpu()
    return out


def plan_model(model: nn.Module) -> list[TensorPlan]:
    weights = {f"{name}.weight" for name in prunable_layers(model)}
    return [plan_weight(k, v) if k in weights else plan_raw(k, v)
            for k, v in computed_state_dict(model).items()]


# --- pack --------------------------------------------------------------------------------------------

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


def _header(model: nn.Module, plans: list[TensorPlan], metadata: dict | None) -> bytes:
    arch = getattr(model, "arch", None)
    if arch not in ARCHS:
        raise ValueError(f"the model's .arch is {arch!r}; packing needs one of {', '.join(ARCHS)}")
    header = {"format": FORMAT, "arch": arch, "width": float(getattr(model, "width", 1.0)),
              "metadata": metadata or {}, "tensors": [p.descriptor() for p in plans]}
    return zlib.compress(json.dumps(header, separators=(",", ":"), default=str).encode("utf-8"), 9)


def pack_model(model: nn.Module, metadata: dict | None = None) -> bytes:
    """The model as a packed file (layout in the module docstring); `metadata` (JSON-able values)
    travels in the header and comes back from unpack_model."""
    plans = plan_model(model)
    header = _header(model, plans, metadata)
    payload = b"".join(encode_tensor(p) for p in plans)
    body = PREAMBLE.pack(MAGIC, VERSION, len(header), len(payload)) + header + payload
    return body + hashlib.sha256(body).digest()


def packed_breakdown(model: nn.Module) -> list[dict]:
    """Where the packed file's bytes go, from the plan (nothing is encoded).

    One row per Conv2d/Linear weight, then one for all other tensors and one for the header and
    checksum; the rows' total_bytes add up to len(pack_model(model)).
    """
    plans = plan_model(model)
    rows = []
    other = 0
    for p in plans:
        if not p.is_weight:
            other += p.total_bytes
            continue
        nonzero = int(np.count_nonzero(p.bits))
        rows.append({
            "name": p.name.removesuffix(".weight"), "shape": p.shape, "params": int(p.bits.size),
            "nonzero": nonzero, "positions": p.positions, "values": p.values,
            "codebook_size": len(p.codebook) if p.codebook is not None else 0,
            "position_bytes": p.sizes.get("gap_table", 0) + p.sizes.get("gaps", 0),
            "index_bytes": p.sizes.get("index_table", 0) + p.sizes.get("indices", 0),
            "codebook_bytes": p.sizes.get("codebook", 0) + p.sizes.get("channel_counts", 0) + p.sizes.get("grid", 0),
            "raw_bytes": p.sizes.get("values", 0),
            "total_bytes": p.total_bytes, "bits_per_nonzero": 8 * p.total_bytes / max(1, nonzero),
        })
    rows.append(_summary_row("other tensors (BN, biases)", other))
    header = len(_header(model, plans, None)) + PREAMBLE.size + CHECKSUM_BYTES
    rows.append(_summary_row("header + checksum", header))
    return rows


def packed_summary(rows: list[dict]) -> dict:
    """Totals of packed_breakdown() rows: file bytes, weight bytes, nonzero weights, bits per nonzero."""
    weights = [r for r in rows if r["params"]]
    nonzero = sum(r["nonzero"] for r in weights)
    weight_bytes = sum(r["total_bytes"] for r in weights)
    return {"total_bytes": sum(r["total_bytes"] for r in rows), "weight_bytes": weight_bytes,
            "nonzero": nonzero, "bits_per_nonzero": 8 * weight_bytes / max(1, nonzero)}


def fixed_width_bytes(model: nn.Module) -> int:
    """The packed size if every Huffman-coded stream used fixed-width codes instead: 8 bits per gap
    symbol and ceil(log2 k) bits per codebook index. The difference is what Huffman coding saves."""
    plans = plan_model(model)
    total = len(_header(model, plans, None)) + PREAMBLE.size + CHECKSUM_BYTES
    for p in plans:
        sizes = dict(p.sizes)
        if p.gaps is not None:
            sizes.pop("gap_table", None)
            sizes["gaps"] = len(p.gaps)
        if p.grid is not None:
            sizes.pop("index_table", None)
            sizes["indices"] = math.ceil(len(p.indices) * max(1, math.ceil(math.log2(int(p.indices.max(initial=0)) + 2))) / 8)
        if p.codebook is not None:
            sizes.pop("index_table", None)
            largest = int(p.channel_counts.max()) if p.channel_counts is not None else len(p.codebook)
            sizes["indices"] = math.ceil(len(p.indices) * max(1, math.ceil(math.log2(max(2, largest)))) / 8)
        total += sum(sizes.values())
    return total


def _summary_row(name: str, n_bytes: int) -> dict:
    return {"name": name, "shape": (), "params": 0, "nonzero": 0, "positions": "", "values": "raw",
            "codebook_size": 0, "position_bytes": 0, "index_bytes": 0, "codebook_bytes": 0,
            "raw_bytes": n_bytes, "total_bytes": n_bytes, "bits_per_nonzero": 0.0}


# --- unpack ------------------------------------------------------------------------------------------

def unpack_model(data: bytes, name: str = "file") -> tuple[nn.Module, dict]:
    """Rebuild (model in eval mode, metadata) from pack_model's bytes; ModelFileError if malformed.

    metadata holds what the caller packed plus "format", "arch" and "width".
    """
    header, payload = read_container(data, name)
    arch, width, metadata = _read_identity(header, name)
    descriptors = _read_descriptors(header, len(payload), name)
    check_tensor_specs({d["name"]: (d["dtype"], d["shape"]) for d in descriptors}, arch, width, name)
    tensors, offset = {}, 0
    for d in descriptors:
        segments = {}
        for segment, size in d["bytes"].items():
            segments[segment] = payload[offset:offset + size]
            offset += size
        tensors[d["name"]] = _decode_tensor(d, segments, name)
    try:
        model = model_from_state_dict(tensors, arch, width, name)
    except ModelFileError:
        raise
    except (IndexError, RuntimeError, ValueError, TypeError) as exc:   # a shape the model cannot take
        raise ModelFileError(f"{name}: the tensors do not fit together as a {arch} ({exc}). "
                             f"Pack the model again from the app.") from None
    return model, {**metadata, "format": FORMAT, "arch": arch, "width": width}


def _damaged(name: str, what: str) -> ModelFileError:
    return ModelFileError(f"{name} is damaged or was not written by this app: {what}. "
                          f"Pack (export) the model again.")


def read_container(data: bytes, name: str = "file") -> tuple[dict, bytes]:
    """Check magic, version, length and checksum; return (header dict, payload bytes)."""
    data = bytes(data)
    if data[:4] != MAGIC:
        raise ModelFileError(f"{name} is not a packed model file (it does not start with {MAGIC!r}). "
                             f"Upload a file packed by this app, or load .safetensors weights instead.")
    if len(data) < PREAMBLE.size + CHECKSUM_BYTES:
        raise ModelFileError(f"{name} is truncated: a packed model file is at least "
                             f"{PREAMBLE.size + CHECKSUM_BYTES} bytes, this one has {len(data)}. "
                             f"The download or copy was cut short; fetch the file again.")
    _, version, header_len, payload_len = PREAMBLE.unpack_from(data)
    if version != VERSION:
        raise ModelFileError(f"{name} is packed in format version {version}; this app reads version "
                             f"{VERSION}. Pack the model again with this version of the app.")
    expected = PREAMBLE.size + header_len + payload_len + CHECKSUM_BYTES
    if len(data) < expected:
        raise ModelFileError(f"{name} is truncated or damaged: it announces {expected} bytes but has "
                             f"{len(data)}. The download or copy was cut short; fetch the file again.")
    if len(data) > expected:
        raise ModelFileError(f"{name} is damaged: {len(data) - expected} unexpected bytes follow its end. "
                             f"Fetch the file again.")
    body = data[:-CHECKSUM_BYTES]
    if hashlib.sha256(body).digest() != data[-CHECKSUM_BYTES:]:
        raise ModelFileError(f"{name} is damaged: its SHA-256 checksum does not match its contents "
                             f"(bytes were changed or lost). Fetch or export the file again.")
    header = _parse_header(body[PREAMBLE.size:PREAMBLE.size + header_len], name)
    return header, body[PREAMBLE.size + header_len:]


def _parse_header(compressed: bytes, name: str) -> dict:
    inflate = zlib.decompressobj()
    try:
        text = inflate.decompress(compressed, MAX_HEADER_BYTES)   # at most that many bytes out
    except zlib.error:
        raise _damaged(name, "its header is not zlib-compressed") from None
    if inflate.unconsumed_tail:
        raise _damaged(name, f"its header unpacks to more than {MAX_HEADER_BYTES} bytes")
    if not inflate.eof or inflate.unused_data:
        raise _damaged(name, "its compressed header is incomplete or followed by stray bytes")
    try:
        header = json.loads(text.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _damaged(name, f"its header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _damaged(name, "its header is not a JSON object")
    return header


def _reject_constant(constant: str):
    raise ValueError(f"{constant} is not allowed")


def _read_identity(header: dict, name: str) -> tuple[str, float, dict]:
    if header.get("format") != FORMAT:
        raise _damaged(name, f"its header does not name the format {FORMAT!r}")
    arch, width, metadata = header.get("arch"), header.get("width"), header.get("metadata", {})
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise _damaged(name, "its width multiplier is not a number")
    arch, width = check_identity(arch, width, name)
    if not isinstance(metadata, dict):
        raise _damaged(name, "its metadata is not a JSON object")
    return arch, width, metadata


def _count(d: dict, key: str, low: int, high: int, name: str) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        shown = repr(value) if isinstance(value, int) and abs(value) < 1 << 64 else type(value).__name__
        raise _damaged(name, f"tensor {d.get('name')!r}: {key} = {shown}, expected an integer in {low} … {high}")
    return value


def _read_descriptors(header: dict, payload_len: int, name: str) -> list[dict]:
    """Validate every descriptor; return them with shape as a tuple and all segment sizes filled."""
    tensors = header.get("tensors")
    if not isinstance(tensors, list) or len(tensors) > MAX_TENSORS:
        raise _damaged(name, "its header has no valid tensor list")
    out, seen, total_elements, total_bytes = [], set(), 0, 0
    for d in tensors:
        if (not isinstance(d, dict) or not isinstance(d.get("name"), str) or len(d["name"]) > 200
                or d["name"] in seen):
            raise _damaged(name, "a tensor has no name, or a name appears twice")
        seen.add(d["name"])
        d = _read_descriptor(d, name)
        total_elements += math.prod(d["shape"])
        if total_elements > MAX_ELEMENTS:
            raise _damaged(name, f"its tensors claim more than {MAX_ELEMENTS:,} values in all")
        total_bytes += sum(d["bytes"].values())
        out.append(d)
    if total_bytes != payload_len:
        raise _damaged(name, f"its tensors need {total_bytes} payload bytes, the file has {payload_len}")
    return out


def _read_descriptor(d: dict, name: str) -> dict:
    tensor = d["name"]
    if not isinstance(d.get("dtype"), str) or d["dtype"] not in DTYPES:
        raise _damaged(name, f"tensor {tensor!r} has no dtype this app reads (allowed: {', '.join(DTYPES)})")
    itemsize = np.dtype(DTYPES[d["dtype"]][1]).itemsize
    shape = d.get("shape")
    if (not isinstance(shape, list) or len(shape) > 8
            or not all(type(n) is int and 0 <= n <= MAX_ELEMENTS for n in shape)):
        raise _damaged(name, f"tensor {tensor!r} has a shape that is not a short list of sizes")
    numel = math.prod(shape)
    if numel > MAX_ELEMENTS:
        raise _damaged(name, f"tensor {tensor!r} claims {numel:,} values, more than the "
                             f"{MAX_ELEMENTS:,} this app loads")
    out = {"name": tensor, "dtype": d["dtype"], "shape": tuple(shape), "itemsize": itemsize}
    if "positions" not in d:                                   # a raw tensor
        out.update(positions="dense", values="raw", stored=numel, bytes={"values": numel * itemsize})
        return out
    layout = (d.get("positions"), d.get("values"))
    if not all(isinstance(part, str) for part in layout) or layout not in LAYOUTS:
        raise _damaged(name, f"tensor {tensor!r} has an unknown layout")
    sizes = d.get("bytes")
    if not isinstance(sizes, dict) or list(sizes) != list(LAYOUTS[layout]):
        raise _damaged(name, f"tensor {tensor!r} does not list the segments of a {layout} layout")
    for segment in sizes:
        _count({"name": tensor, segment: sizes[segment]}, segment, 0, 1 << 40, name)
    out.update(positions=layout[0], values=layout[1], bytes=sizes)
    out["stored"] = _count(d, "stored", 0, numel, name)
    if layout[0] == "dense" and out["stored"] != numel:
        raise _damaged(name, f"tensor {tensor!r} is dense but stores {out['stored']} of {numel} values")
    if layout[0] == "sparse":
        out["gap_symbols"] = _count(d, "gap_symbols", out["stored"], out["stored"] + numel // ESCAPE + 1, name)
    if layout[1] == "codebook":
        out["codebook"] = _count(d, "codebook", 0, MAX_CODEBOOK, name)
        expected = {"codebook": out["codebook"] * itemsize}
    elif layout[1] == "grid":
        rows = shape[0] if len(shape) > 1 else 0
        if rows < 2 or d["dtype"] != "float32":
            raise _damaged(name, f"tensor {tensor!r} cannot have per-channel grids")
        expected = {"grid": rows * GRID.itemsize}
    elif layout[1] == "channel_codebook":
        rows = shape[0] if len(shape) > 1 else 0
        if rows < 2 or itemsize > 4:
            raise _damaged(name, f"tensor {tensor!r} cannot have per-channel codebooks")
        out["codebook"] = _count(d, "codebook", 0, MAX_CODEBOOK * rows, name)
        expected = {"channel_counts": rows * 2, "codebook": out["codebook"] * itemsize}
    else:
        expected = {"values": out["stored"] * itemsize}
    for segment, size in expected.items():
        if sizes[segment] != size:
            raise _damaged(name, f"tensor {tensor!r}: segment {segment} has {sizes[segment]} bytes, "
                                 f"expected {size}")
    return out


def _decode_tensor(d: dict, segments: dict[str, bytes], name: str) -> torch.Tensor:
    np_bits = DTYPES[d["dtype"]][1]
    numel = math.prod(d["shape"])
    try:
        positions = np.arange(numel)
        if d["positions"] == "sparse":
            gaps = _decode_symbols(segments["gap_table"], segments["gaps"], d["gap_symbols"], ESCAPE, "gap")
            positions = positions_from_gaps(gaps)
            if len(positions) != d["stored"] or (len(positions) and positions[-1] >= numel):
                raise huffman.HuffmanError(f"the gaps give {len(positions)} positions up to "
                                           f"{positions[-1] if len(positions) else 0}, expected "
                                           f"{d['stored']} below {numel}")
        if d["values"] == "codebook":
            codebook = np.frombuffer(segments["codebook"], dtype=np_bits)
            indices = _decode_symbols(segments["index_table"], segments["indices"], d["stored"],
                                      len(codebook) - 1, "codebook index")
            values = codebook[indices]
        elif d["values"] == "channel_codebook":
            values = _channel_values(d, segments, positions, np_bits)
        elif d["values"] == "grid":
            values = _grid_values(d, segments, positions)
        else:
            values = np.frombuffer(segments["values"], dtype=np_bits)
        flat = np.zeros(numel, dtype=np_bits)
        flat[positions] = values
    except huffman.HuffmanError as exc:
        raise _damaged(name, f"tensor {d['name']!r} cannot be decoded ({exc})") from None
    return from_bits(flat, d["dtype"], d["shape"])


def _grid_values(d: dict, segments: dict[str, bytes], positions: np.ndarray) -> np.ndarray:
    """Values of a grid tensor: float32(least m + symbol) · s of the value's channel, as bits."""
    grid = np.frombuffer(segments["grid"], dtype=GRID)
    symbols = _decode_symbols(segments["index_table"], segments["indices"], d["stored"], MAX_GRID_SYMBOL, "grid step")
    channels = positions // (math.prod(d["shape"]) // d["shape"][0])
    multiples = (grid["least"][channels].astype(np.int64) + symbols).astype(np.float32)
    return (multiples * grid["scale"][channels]).astype("<f4").view("<u4")


def _channel_values(d: dict, segments: dict[str, bytes], positions: np.ndarray, np_bits: str) -> np.ndarray:
    """Values of a channel_codebook tensor: codebook[start of the value's channel + its index]."""
    rows = d["shape"][0]
    counts = np.frombuffer(segments["channel_counts"], dtype="<u2").astype(np.int64)
    codebook = np.frombuffer(segments["codebook"], dtype=np_bits)
    if counts.max(initial=0) > MAX_CODEBOOK or counts.sum() != len(codebook):
        raise huffman.HuffmanError(f"the channel codebook sizes add up to {counts.sum()}, not {len(codebook)}")
    indices = _decode_symbols(segments["index_table"], segments["indices"], d["stored"],
                              max(0, int(counts.max(initial=0)) - 1), "codebook index")
    channels = positions // (math.prod(d["shape"]) // rows)
    if np.any(indices >= counts[channels]):
        raise huffman.HuffmanError("an index points past its channel's codebook")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return codebook[starts[channels] + indices]


def _decode_symbols(table_bytes: bytes, data: bytes, count: int, largest: int, what: str) -> np.ndarray:
    table = huffman.table_from_bytes(table_bytes)
    if table and max(table) > largest:
        raise huffman.HuffmanError(f"{what} symbol {max(table)} is out of range (largest {largest})")
    return huffman.decode(data, table, count)
