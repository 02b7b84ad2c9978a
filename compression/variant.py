"""One record for a model variant: the model, how it was made, and what it measures.

Pipelines, the CLI, and the app's table, charts and downloads all read this record. Variants form a
tree: each names its parent (None for a model trained from scratch or uploaded).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .metrics import Metrics

_ids = itertools.count(1)


@dataclass
class Variant:
    name: str
    model: nn.Module
    technique: str                                   # pretrained, trained, pruned, structured, quantized, ...
    settings: dict[str, Any] = field(default_factory=dict)  # the technique's parameters
    parent: str | None = None                        # id of the variant it was made from
    metrics: Metrics = field(default_factory=Metrics)
    id: str = field(default_factory=lambda: f"v{next(_ids)}")
    created: float = field(default_factory=time.time)
    artifacts: dict[str, bytes] = field(default_factory=dict)   # e.g. {"int8": ...}: extra downloads
    history: list[dict] = field(default_factory=list)          # training curve, per-round results, ...

    @property
    def recipe(self) -> str:
        """How it was made, in one line: 'pruned (method=magnitude, amount=0.5)'."""
        settings = ", ".join(f"{k}={_short(v)}" for k, v in self.settings.items())
        return f"{self.technique} ({settings})" if settings else self.technique

    def row(self) -> dict[str, Any]:
        """A flat row for tables and reports (no model, no per-layer detail)."""
        return {"id": self.id, "name": self.name, "technique": self.technique, "recipe": self.recipe,
                "parent": self.parent, **self.metrics.to_dict()}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class VariantBook:
    """The variants of one session (or one CLI run), in the order they were made."""

    def __init__(self) -> None:
        self._items: dict[str, Variant] = {}

    def add(self, variant: Variant) -> Variant:
        self._items[variant.id] = variant
        return variant

    def get(self, variant_id: str | None) -> Variant | None:
        return self._items.get(variant_id) if variant_id else None

    def remove(self, variant_id: str) -> None:
        self._items.pop(variant_id, None)

    def __iter__(self):
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, variant_id: str) -> bool:
        return variant_id in self._items

    def root_of(self, variant: Variant) -> Variant:
        """The dense ancestor a variant's compression ratio is taken against."""
        seen = set()
        while variant.parent and variant.parent in self._items and variant.id not in seen:
            seen.add(variant.id)
            variant = self._items[variant.parent]
        return variant

    def rows(self) -> list[dict]:
        return [v.row() for v in self]


def measure_variant(model, technique: str, settings: dict | None = None, parent: Variant | None = None,
                    name: str | None = None, eval_set=None, test_set=None, latency: bool = False,
                    reference_bytes: int | None = None, **extra) -> Variant:
    """Measure `model` and wrap it in a Variant. The compression ratio is taken against
    `reference_bytes`, else the parent's reference (its dense root), else the model itself."""
    from .metrics import measure

    if reference_bytes is None and parent is not None:
        reference_bytes = parent.metrics.reference_bytes or None
    metrics = measure(model, reference_bytes=reference_bytes, eval_set=eval_set, test_set=test_set,
                      latency=latency)
    return Variant(name or technique, model, technique, dict(settings or {}), parent.id if parent else None,
                   metrics, **extra)



def pareto_frontier(rows: list[dict], size: str = "bytes_packed", accuracy: str = "eval_accuracy") -> list[str]:
    """Ids of the rows no other row beats on both counts (smaller and at least as accurate)."""
    usable = sorted((r for r in rows if r.get(accuracy) is not None), key=lambda r: (r[size], -r[accuracy]))
    frontier, best = [], -1.0
    for r in usable:
        if r[accuracy] > best:
            frontier.append(r["id"])
            best = r[accuracy]
    return frontier


REPORT_COLUMNS = ("id", "name", "technique", "recipe", "parent", "eval_accuracy", "test_accuracy", "params",
                  "nonzero_params", "sparsity", "macs", "nonzero_macs", "bytes_fp32", "bytes_gzip", "bytes_packed",
                  "compression_ratio", "latency_b1_ms", "latency_b256_ms")


def report_csv(rows: list[dict]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def report_json(rows: list[dict]) -> str:
    import json

    return json.dumps([{k: r.get(k) for k in REPORT_COLUMNS} for r in rows], indent=2)


def file_stem(variant: Variant) -> str:
    """A safe file name for a variant's downloads."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", variant.name).strip("-").lower() or variant.id
