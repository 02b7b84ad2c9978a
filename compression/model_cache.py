"""A server-wide cache of loaded models, bounded by bytes, least recently used first out.

Every variant's weights live on disk (compression/blobs.py); a model is built from them when a page
asks for it and kept here while there is room. Memory therefore depends on the bound, not on how many
variants or sessions there are.

Size of a model = bytes of its parameters and buffers (numel · element size of each tensor, each
counted once) — what the weights occupy; Python objects and autograd bookkeeping add a few kB more.

The bound: PLAYGROUND_MODEL_CACHE_MB (default 256 MB). A resnet20 takes 1.1 MB, so the default holds
a class's worth of variants (~230 resnet20s); the issue's memory goal (a server with 20 kept variants
in 5 workspaces within 300 MB of an idle one) needs the bound below 300 MB with room left for the
pages' own work. A model larger than the whole bound is returned but not kept.

Thread-safe: pages and workers share one cache. Two threads asking for the same model at once load
it once; the second waits for the first. The cached models are shared: never modify one (copy it with
models.copy_model first, as the library's verbs do).
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Callable

from torch import nn

DEFAULT_MB = 256


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each tensor counted once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def default_cache_bytes() -> int:
    """PLAYGROUND_MODEL_CACHE_MB in bytes (default 256 MB)."""
    raw = os.environ.get("PLAYGROUND_MODEL_CACHE_MB", "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_MB
    except ValueError:
        raise ValueError(f"PLAYGROUND_MODEL_CACHE_MB={raw!r} is not a number of megabytes") from None
    return int(max(0.0, mb) * 1024 * 1024)


class ModelCache:
    """Models by key (a weights file's SHA-256), at most `max_bytes` of them (see the module docstring)."""

    def __init__(self, max_bytes: int | None = None):
        self.max_bytes = default_cache_bytes() if max_bytes is None else max_bytes
        self._items: OrderedDict[str, tuple[nn.Module, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self.hits = self.misses = 0

    def get(self, key: str, load: Callable[[], nn.Module]) -> nn.Module:
        """The cached model for `key`, or `load()`'s result (cached if it fits)."""
        model = self._lookup(key)
        if model is not None:
            return model
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            model = self._lookup(key)          # loaded by another thread while this one waited
            if model is not None:
                return model
            try:
                model = load()
                with self._lock:
                    self.misses += 1
                    self._insert(key, model, model_bytes(model))
            finally:
                with self._lock:
                    self._loading.pop(key, None)
        return model

    def _lookup(self, key: str) -> nn.Module | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def _insert(self, key: str, model: nn.Module, size: int) -> None:
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = (model, size)
        self._total += size
        while self._total > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self._total -= evicted

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def keys(self) -> list[str]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0
