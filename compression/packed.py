"""The packed model file: how Deep Compression stores a pruned, weight-shared network.

Han et al. 2016 ("Deep Compression", section 4) store each layer as
- where its nonzero weights are: the *gaps* between consecutive nonzeros rather than absolute
  positions, since gaps are small numbers that Huffman coding shrinks further;
- what they are: a codebook of the layer's distinct values plus, per nonzero weight, an index into
  it (Huffman-coded too: a few centroids are used far more often than others).

layouts.py plans and encodes each tensor that way (dense or sparse positions; raw, codebook,
per-channel codebook or grid values). This module puts the encoded tensors into one file, validates
everything it reads back, and decodes it.

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

import numpy as np
import torch
from torch import nn

from . import huffman
from .layouts import (DTYPES, ESCAPE, GRID, LAYOUTS, MAX_CODEBOOK, MAX_GRID_SYMBOL, TensorPlan, encode_tensor,
                      from_bits, plan_model, positions_from_gaps)
from .models import ARCHS
from .checks import check_identity, check_tensor_specs
from .weights import ModelFileError, model_from_state_dict

MAGIC = b"CMPK"
VERSION = 1
FORMAT = "compression-playground-packed"
PREAMBLE = struct.Struct("<4sHIQ")          # magic, version, header length, payload length
CHECKSUM_BYTES = 32                         # SHA-256
MAX_ELEMENTS = 1 << 26                      # per tensor and per file: far above resnet56 at width 8
MAX_TENSORS = 10_000
MAX_HEADER_BYTES = 1 << 24                  # uncompressed


# --- pack --------------------------------------------------------------------------------------------

def header_bytes(model: nn.Module, plans: list[TensorPlan], metadata: dict | None) -> bytes:
    """The zlib-compressed JSON header: format, architecture, width, metadata and each tensor's descriptor."""
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
    header = header_bytes(model, plans, metadata)
    payload = b"".join(encode_tensor(p) for p in plans)
    body = PREAMBLE.pack(MAGIC, VERSION, len(header), len(payload)) + header + payload
    return body + hashlib.sha256(body).digest()


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
