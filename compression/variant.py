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
