"""Server-wide caches bounded by bytes, least recently used first out: loaded models (`ModelCache`) and,
through the same `ByteCache`, the app's slider results (ui/cached.py).

Every variant's weights live on disk (compression/blobs.py); a model is built from them when a page
asks for it and kept here while there is room. Memory therefore depends on the bound, not on how many
variants or sessions there are.

Size of a model = bytes of its parameters and buffers (numel · element size of each tensor, each
counted once) — what the weights occupy; Python objects and autograd bookkeeping add a few kB more.
`nbytes` weighs anything else a cache keeps (tuples and dicts of models, tensors and numbers).

The bound of the model cache: PLAYGROUND_MODEL_CACHE_MB (default 256 MB). A resnet20 takes 1.1 MB, so
the default holds a class's worth of variants (~230 resnet20s); the issue's memory goal (a server with
20 kept variants in 5 workspaces within 300 MB of an idle one) needs the bound below 300 MB with room
left for the pages' own work. A value larger than the whole bound is returned but not kept.

Thread-safe: pages and workers share one cache. Two threads asking for the same key at once compute
it once; the second waits for the first. The cached values are shared: never modify one (copy a model
with models.copy_model first, as the library's verbs do).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections import OrderedDict
from typing import Any, Callable, ContextManager, Hashable

import torch
from torch import nn

DEFAULT_MB = 256
MODULE_OVERHEAD = 3 * 1024   # Python objects per nn.Module (tracemalloc: 0.21 MB for a resnet20's 65 modules)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each tensor counted once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


def nbytes(value: Any) -> int:
    """Roughly what `value` holds in memory: the storages of its tensors, each counted once (a model's
    parameters, buffers and the tensors it keeps as attributes, such as the masked weight a pruned layer
    computes) and its modules' Python objects, plus Python's size of everything else, through tuples,
    lists and dicts."""
    seen: set[int] = set()

    def tensor(t: torch.Tensor) -> int:
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            return 0
        seen.add(storage.data_ptr())
        return storage.nbytes()

    def walk(v: Any) -> int:
        if isinstance(v, torch.Tensor):
            return tensor(v)
        if isinstance(v, nn.Module):
            total = 0
            for m in v.modules():
                total += MODULE_OVERHEAD
                for t in [*m._parameters.values(), *m._buffers.values(), *vars(m).values()]:
                    if isinstance(t, torch.Tensor):
                        total += tensor(t)
            return total
        if isinstance(v, dict):
            return sys.getsizeof(v) + sum(walk(k) + walk(x) for k, x in v.items())
        if isinstance(v, (tuple, list)):
            return sys.getsizeof(v) + sum(walk(x) for x in v)
        return sys.getsizeof(v)

    return walk(value)


def cache_bytes(variable: str, default_mb: float) -> int:
    """The environment variable `variable` (megabytes) in bytes, `default_mb` when unset."""
    raw = os.environ.get(variable, "")
    try:
        mb = float(raw) if raw.strip() else default_mb
    except ValueError:
        raise ValueError(f"{variable}={raw!r} is not a number of megabytes") from None
    return int(max(0.0, mb) * 1024 * 1024)


def default_cache_bytes() -> int:
    """PLAYGROUND_MODEL_CACHE_MB in bytes (default 256 MB)."""
    return cache_bytes("PLAYGROUND_MODEL_CACHE_MB", DEFAULT_MB)


class ByteCache:
    """Values by key, at most `max_bytes` of them as weighed by `sizeof` (see the module docstring)."""

    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = nbytes):
        self.max_bytes = max_bytes
        self.sizeof = sizeof
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}
        self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], Any],
            waiting: Callable[[], ContextManager] = contextlib.nullcontext) -> Any:
        """The cached value for `key`, or `compute()`'s (kept if it fits). On a miss, `waiting()` is
        entered while this thread waits for another one computing the same key, or computes itself."""
        found, value = self._lookup(key)
        if found:
            return value
        with waiting():
            with self._lock:
                key_lock = self._computing.setdefault(key, threading.Lock())
            with key_lock:
                found, value = self._lookup(key)      # computed by another thread while this one waited
                if found:
                    return value
                try:
                    value = compute()
                    size = self.sizeof(value)
                    with self._lock:
                        self.misses += 1
                        self._insert(key, value, size)
                finally:
                    with self._lock:
                        self._computing.pop(key, None)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        """Keep `value` for `key` (if it fits and the key is not kept already)."""
        size = self.sizeof(value)
        with self._lock:
            self._insert(key, value, size)

    def _lookup(self, key: Hashable) -> tuple[bool, Any]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return False, None
            self._items.move_to_end(key)
            self.hits += 1
            return True, item[0]

    def _insert(self, key: Hashable, value: Any, size: int) -> None:
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = (value, size)
        self._total += size
        while self._total > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self._total -= evicted

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._total

    def keys(self) -> list[Hashable]:
        """Cached keys, least recently used first."""
        with self._lock:
            return list(self._items)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0


class ModelCache(ByteCache):
    """Models by key (a weights file's SHA-256), at most `max_bytes` of them (default
    PLAYGROUND_MODEL_CACHE_MB), weighed by `model_bytes`."""

    def __init__(self, max_bytes: int | None = None):
        super().__init__(default_cache_bytes() if max_bytes is None else max_bytes, model_bytes)
