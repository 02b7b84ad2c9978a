"""What every variant is measured by, the same way for all of them.

- parameters, and nonzero parameters (per layer and in all), and multiply-accumulates (MACs) per image,
  dense and counting only nonzero weights (counts.py counts them);
- bytes: fp32 safetensors, gzip of it, and the packed format (compression/packed.py);
- compression ratio = fp32 bytes of the dense parent / packed bytes;
- accuracy on the eval subset and on the full test set;
- CPU latency at batch 1 and batch 256 (median of several timed runs, with freed memory kept in the
  process: see keep_freed_memory).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .counts import count_params, layer_table
from .data import ImageSet
from .files import state_dict_bytes
from .packed import pack_model
from .prune import strip
from .train import evaluate
from .weights import plain_model


def fp32_bytes(model: nn.Module) -> bytes:
    """The model as an fp32 safetensors file, masks baked in."""
    return state_dict_bytes(strip(model).float())   # strip() works on a copy


def gzip_size(data: bytes) -> int:
    return len(gzip.compress(data, compresslevel=9, mtime=0))


# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_memory_kept = False


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory in the process instead of handing it back to the OS. True when set
    (now or before); False where there is no glibc (macOS, Windows, musl): nothing changes there.

    By default glibc serves a block of 128 KiB or more with a fresh mmap and unmaps it when freed, raising
    that threshold only as it sees large blocks come and go. A forward pass at batch 256 allocates
    activations of up to 16 MiB, so in a fresh process every pass page-faults them in again — a cost that
    grows with activation size, not with MACs, and that fades unpredictably as the process ages. Latency
    is measured after calling this, so every model is timed in the same steady state
    (bench/latency_allocator.py shows the difference). Blocks above 32 MiB are still mapped.
    """
    global _memory_kept
    if _memory_kept:
        return True
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    _memory_kept = bool(mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _memory_kept


def _glibc(name: str):
    """glibc's function `name` through ctypes, or None where there is none (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> bool:
    """Hand the memory that glibc's malloc keeps after frees back to the OS (`malloc_trim(0)`: every
    arena, and the free pages inside the heaps, not just their tops). True when memory was returned;
    False when none was or where there is no glibc (macOS, Windows, musl): nothing happens there.

    A server calls it when it goes idle (ui/memory.py): glibc keeps each arena's high-water mark, so
    after a class the process would stay as large as at its peak."""
    malloc_trim = _glibc("malloc_trim")
    if malloc_trim is None:
        return False
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return bool(malloc_trim(0))


@torch.no_grad()
def latency_ms(model: nn.Module, batch_size: int, repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of one forward pass at `batch_size` on the CPU, in milliseconds."""
    keep_freed_memory()
    model = model.eval()
    x = torch.rand(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        model(x)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@dataclass
class Metrics:
    params: int = 0
    nonzero_params: int = 0
    sparsity: float = 0.0                 # fraction of zero weights in conv/linear layers
    macs: int = 0
    nonzero_macs: int = 0
    bytes_fp32: int = 0
    bytes_gzip: int = 0
    bytes_packed: int = 0
    reference_bytes: int = 0              # fp32 bytes of the dense model this one descends from
    compression_ratio: float = 1.0        # reference_bytes / packed bytes
    eval_accuracy: float | None = None    # on the fixed eval subset
    test_accuracy: float | None = None    # on the full 10,000-image test set
    latency_b1_ms: float | None = None
    latency_b256_ms: float | None = None
    layers: list[dict] = field(default_factory=list)

    def to_dict(self, with_layers: bool = False) -> dict:
        d = asdict(self)
        if not with_layers:
            d.pop("layers")
        return d


def measure(model: nn.Module, *, reference_bytes: int | None = None, eval_set: ImageSet | None = None,
            test_set: ImageSet | None = None, latency: bool = False, packed: bytes | None = None) -> Metrics:
    """Measure `model`. `reference_bytes` is the dense fp32 size the compression ratio is taken
    against (default: this model's own fp32 size). `packed` lets callers pass bytes they already have."""
    rows = layer_table(model)
    params, nonzero = count_params(model)
    weights = sum(r.params for r in rows)
    raw = fp32_bytes(model)
    packed = packed if packed is not None else pack_model(model)
    m = Metrics(
        params=params, nonzero_params=nonzero,
        sparsity=1 - sum(r.nonzero for r in rows) / max(1, weights),
        macs=sum(r.macs for r in rows), nonzero_macs=sum(r.nonzero_macs for r in rows),
        bytes_fp32=len(raw), bytes_gzip=gzip_size(raw), bytes_packed=len(packed),
        layers=[{**asdict(r), "sparsity": r.sparsity} for r in rows],
    )
    m.reference_bytes = reference_bytes or m.bytes_fp32
    m.compression_ratio = m.reference_bytes / max(1, m.bytes_packed)
    if eval_set is not None:
        m.eval_accuracy = evaluate(model, eval_set).accuracy
    if test_set is not None:
        m.test_accuracy = evaluate(model, test_set).accuracy
    if latency:
        m.latency_b1_ms = latency_ms(model, 1, repeats=20)
        m.latency_b256_ms = latency_ms(model, 256, repeats=5)
    return m


@torch.no_grad()
def compare_latency(models: dict[str, nn.Module], batch_size: int = 256, repeats: int = 7,
                    warmup: int = 2) -> dict[str, float]:
    """Median forward time (ms) of each model at `batch_size`, timed in turn within one loop so that
    a noisy machine slows them all alike. Compare ratios, not absolute numbers."""
    keep_freed_memory()
    x = torch.rand(batch_size, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    for m in models.values():
        m.eval()
    times = {name: [] for name in models}
    for i in range(warmup + repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def int8_speedup(fp32_model: nn.Module, int8_model, batch_size: int = 256, repeats: int = 7,
                 warmup: int = 2) -> dict:
    """Median CPU time of one forward pass of the float model (eager) and of its int8.Int8Model, timed
    alternately in the same run by compare_latency (so both see the same machine load):
    {"fp32_ms", "int8_ms", "speedup" = fp32_ms / int8_ms, …}. The first int8 call at this batch size
    compiles; it is timed on its own as first_int8_call_s."""
    fp32 = plain_model(fp32_model).eval()
    start = time.perf_counter()
    int8_model(torch.rand(batch_size, 3, 32, 32))     # compiles, the first time at this batch size
    first_call_s = time.perf_counter() - start
    times = compare_latency({"fp32": fp32, "int8": int8_model}, batch_size, repeats, warmup)
    return {"batch_size": batch_size, "threads": torch.get_num_threads(), "fp32_ms": times["fp32"],
            "int8_ms": times["int8"], "speedup": times["fp32"] / times["int8"], "first_int8_call_s": first_call_s}
