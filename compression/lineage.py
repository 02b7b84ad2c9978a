"""A variant's recipe as a technique chain, read from its lineage in the store.

Every stored variant names its parent (compression/store.py). Walking the parents from a submitted
variant back to its root, and naming each step by its technique and the settings that matter, gives
the recipe a class board shows next to each point:

    pretrained resnet20 → pruned 70 % + FT 2 ep → QAT 4-bit

Only variants the student's workspace sees are followed (its own and the pretrained ones); a parent
it no longer has (deleted, or made in a session before the store) ends the chain with "…".
"""
from __future__ import annotations

from typing import Any, Callable

# The library's public names this module relies on (repoint here if the package's API moves).
from .store import Store, StoredVariant

from .store_errors import StoreError
from .store_schema import Workspace

MAX_STEPS = 30
UNKNOWN = "…"


def _pct(value: Any) -> str:
    try:
        return f"{100 * float(value):.3g} %"
    except (TypeError, ValueError):
        return str(value)


def _finetuned(settings: dict) -> str:
    epochs = settings.get("finetune_epochs")
    return f" + FT {epochs:g} ep" if isinstance(epochs, (int, float)) and epochs else ""


def _quantized(s: dict) -> str:
    bits = s.get("bits")
    if isinstance(bits, str):
        return bits                                        # fp16, bf16
    return f"quantized w{bits}" + (f"a{s['a_bits']}" if s.get("a_bits") else "")


# technique -> its step's name from its settings
LABELS: dict[str, Callable[[dict], str]] = {
    "pretrained": lambda s: f"pretrained {s.get('arch', '')}".strip(),
    "trained": lambda s: (f"trained {s.get('arch', '')}".strip() if s.get("kd") != "none" else "trained alone")
                         + (f" {s['epochs']:g} ep" if isinstance(s.get("epochs"), (int, float)) else ""),
    "pruned": lambda s: f"pruned {_pct(s.get('amount'))}" + _finetuned(s),
    "filter-pruned": lambda s: f"filter-pruned {_pct(s.get('ratio'))}" + _finetuned(s),
    "quantized": _quantized,
    "QAT": lambda s: f"QAT {s.get('bits')}-bit" + (f" (a{s['a_bits']})" if s.get("a_bits") else ""),
    "int8": lambda s: "real int8",
    "shared": lambda s: f"shared k={s.get('clusters')}" + (" + centroid FT" if s.get("centroid_epochs") else ""),
    "distilled": lambda s: f"distilled (T={s.get('T')})",
    "uploaded": lambda s: "uploaded",
    "spiral": lambda s: f"spiral {s.get('stage', '')} {_pct(s.get('sparsity'))}",
    "deep-compression": lambda s: f"Deep Compression {s.get('stage', '')}",
}


def step_label(technique: str, settings: dict) -> str:
    """One step of a recipe: 'pruned 70 %', 'QAT 4-bit', or the technique's name when unknown."""
    try:
        return LABELS[technique](settings).strip() if technique in LABELS else technique
    except (TypeError, ValueError, KeyError):
        return technique


def recipe_chain(store: Store, workspace: Workspace, record: StoredVariant) -> list[str]:
    """The steps from the root to `record`, oldest first (module docstring)."""
    steps, seen = [], set()
    current: StoredVariant | None = record
    while current is not None and current.id not in seen and len(steps) < MAX_STEPS:
        seen.add(current.id)
        steps.append(step_label(current.technique, current.settings))
        if current.parent is None:
            return steps[::-1]
        try:
            current = store.variant(workspace, current.parent)
        except StoreError:
            current = None
    return [UNKNOWN] + steps[::-1]


def recipe_text(steps: list[str]) -> str:
    return " → ".join(steps)
