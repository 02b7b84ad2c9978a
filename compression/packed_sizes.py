"""Where a packed file's bytes go, read from the plans (nothing is encoded): per layer, in all, and
what Huffman coding saves against fixed-width codes."""
from __future__ import annotations

import math

import numpy as np
from torch import nn

from .layouts import plan_model
from .packed import CHECKSUM_BYTES, PREAMBLE, header_bytes


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
    header = len(header_bytes(model, plans, None)) + PREAMBLE.size + CHECKSUM_BYTES
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
    total = len(header_bytes(model, plans, None)) + PREAMBLE.size + CHECKSUM_BYTES
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
