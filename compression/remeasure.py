"""The server's own measurement of a submitted variant: never the numbers a page sends.

A submission names a variant in the student's workspace. The server loads that variant's stored
weights (the packed file, checked against its SHA-256) and counts, with compression.metrics:

    eval accuracy   correct / images on the bundled eval subset (data.eval_subset of the bundled
                    sample: the same 1,000 images on every laptop), the count read off the confusion
                    matrix, so the fraction is exact
    sizes, MACs     the stored file's length; compression.metrics' layer table (MACs, nonzeros)
    bits per weight layer_bits below (zeros included)
    int8 latency    only when a challenge asks: real int8 (compression/int8.py), batch 1, median of 20
                    runs on this server; compiling costs seconds, so it is measured once per weights file
    plain twin      for "beats training alone": the student trained alone on the same budget, found in
                    the same workspace (below), measured the same way

Measurements are cached in the store's `measurements` table by the weights file's SHA-256 (a variant id
is derived from it, so one id always means one file) and by what was measured (the eval set's
fingerprint, or "int8_b1"): a resubmission, the same file submitted by two students, or a server
restart measures nothing again. One measurement runs at a time in a process: they are CPU-bound, and
two on the same cores only slow each other down.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
import time
from fractions import Fraction

import numpy as np
import torch
from sqlalchemy import and_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from torch import nn

# The library's public names this module relies on (repoint here if the package's API moves).
from .data import ImageSet, eval_subset, load_sample
from .counts import count_params, layer_table
from .metrics import latency_ms
from .prune import prunable_layers
from .store import Store, StoredVariant
from .train import evaluate
from .weights import effective_weight

from .challenges import Measured
from .store_errors import StoreError
from .store_schema import BUILTIN, MEASUREMENTS, Workspace, db_errors

MAX_CODEBOOK = 256
MAX_GRID_LEVELS = 4096
CALIBRATION_IMAGES = 256
_measuring = threading.Lock()


@functools.lru_cache(maxsize=1)
def bundled_eval_set() -> ImageSet:
    """The eval subset of the bundled sample: the set every submission is measured on."""
    return eval_subset(load_sample(splits=("test",)))


@functools.lru_cache(maxsize=1)
def calibration_set() -> ImageSet:
    """The first CALIBRATION_IMAGES training images of the bundled sample (int8 calibration)."""
    train = load_sample(splits=("train",))
    return train.subset(slice(0, CALIBRATION_IMAGES), "int8 calibration")


@functools.lru_cache(maxsize=1)
def bundled_fingerprint() -> str:
    return fingerprint(bundled_eval_set())


def fingerprint(images: ImageSet) -> str:
    """16 hex digits of SHA-256 over the images and labels: which eval set a measurement used."""
    h = hashlib.sha256(images.images.contiguous().numpy().tobytes())
    h.update(images.labels.numpy().astype("<i8").tobytes())
    return h.hexdigest()[:16]


def grid_levels(values: np.ndarray) -> int | None:
    """If every value (float32) is exactly float32(m·s) for one step s and integers m spanning at most
    MAX_GRID_LEVELS: the number of levels m_max − m_min + 1; else None.

    With r the value of largest magnitude, every ratio v / r is then a fraction m / m_r; m_r is the least
    common multiple of their denominators (found with Fraction.limit_denominator, one ratio that m_r
    does not yet fit at a time), s = r / m_r, and the grid is checked bit for bit on every value (s and
    its float32 neighbours are tried)."""
    distinct = np.unique(values)
    r = float(distinct[np.argmax(np.abs(distinct))])
    if r == 0:
        return 1
    ratios = distinct.astype(np.float64) / r
    m_r = 1
    while True:
        scaled = ratios * m_r
        off = np.abs(scaled - np.rint(scaled)) > 1e-5 * m_r        # float32 rounding stays far below this
        if not off.any():
            break
        ratio = Fraction(float(ratios[np.argmax(off)])).limit_denominator(MAX_GRID_LEVELS)
        m_r = math.lcm(m_r, ratio.denominator)
        if m_r > MAX_GRID_LEVELS or abs(float(ratio) - float(ratios[np.argmax(off)])) > 1e-5:
            return None
    estimate = np.float32(r / m_r)
    for step in (estimate, *np.nextafter(estimate, [np.float32(np.inf), np.float32(-np.inf)])):
        m = np.rint(values.astype(np.float64) / np.float64(step))
        if np.array_equal((m.astype(np.float32) * np.float32(step)).view("<u4"), values.view("<u4")):
            levels = int(m.max() - m.min()) + 1
            return levels if levels <= MAX_GRID_LEVELS else None
    return None


def layer_bits(weight: torch.Tensor) -> int:
    """Bits per weight of one Conv2d/Linear weight: the index bits each of its n weights needs, zeros
    included (a pruned weight is one more value to index: "k-bit" uniform quantization gives k).

    The layer's values can be stored four ways; the cheapest counts, each way's cost being its index
    bits · n plus what it needs besides. A codebook counts only when it shares values (_shares: at most
    one nonzero entry per two nonzero weights), so the distinct floats of a small or pruned layer are
    not a "codebook" of themselves:
        raw        16 bits (every value exactly fp16 or bf16) or 32 bits per value
        codebook   ≤ 256 distinct values in the layer (what weight sharing with k clusters makes):
                   ⌈log2 d⌉ bits per value + 32 bits per codebook entry
        channel codebooks  ≤ 256 distinct values in each output channel (binary weights ±s_c):
                   ⌈log2 d_c⌉ bits for the largest d_c + 32 bits per entry + 16 bits per channel
        grid       each output channel c on a uniform grid of its own (grid_levels: what k-bit uniform
                   quantization makes): ⌈log2 L⌉ bits, L = the most levels a channel spans (symmetric
                   k-bit spans 2^k − 1 levels, asymmetric 2^k: both give k) + 48 bits per channel
                   (a float32 step and a 16-bit offset)
    At least 1 bit per weight."""
    w = weight.detach().float().reshape(weight.shape[0], -1)
    n, channels = w.numel(), w.shape[0]
    narrow = any(torch.equal(w.to(dtype).float(), w) for dtype in (torch.float16, torch.bfloat16))
    options = [((16 if narrow else 32) * n, 16 if narrow else 32)]
    rows = [row.numpy().astype("<f4") for row in w]
    nonzero = int((w != 0).sum())
    distinct = len(torch.unique(w))
    if distinct <= MAX_CODEBOOK and _shares(distinct, w.min() <= 0 <= w.max() and nonzero < n, nonzero):
        bits = _index_bits(distinct)
        options.append((bits * n + 32 * distinct, bits))
    per_channel = _each(rows, lambda row: len(np.unique(row)) if len(np.unique(row)) <= MAX_CODEBOOK else None)
    zeros_in = sum(bool((row == 0).any()) for row in rows)
    if per_channel and _shares(sum(per_channel), zeros_in, nonzero):
        bits = _index_bits(max(per_channel))
        options.append((bits * n + 32 * sum(per_channel) + 16 * channels, bits))
    levels = _each(rows, grid_levels)
    if levels:
        bits = _index_bits(max(levels))
        options.append((bits * n + 48 * channels, bits))
    return min(options)[1]


def _each(rows: list, count) -> list[int] | None:
    """count(row) for every row, or None as soon as one row gives None (a float layer stops at its first)."""
    out = []
    for row in rows:
        value = count(row)
        if value is None:
            return None
        out.append(value)
    return out


def _shares(entries: int, zero_entries: int, nonzero: int) -> bool:
    """A codebook shares values when its nonzero entries are at most half the nonzero weights (each
    stands for two or more): the distinct floats of a pruned layer are not a codebook."""
    return 2 * (entries - int(zero_entries)) <= nonzero


def _index_bits(count: int) -> int:
    return max(1, math.ceil(math.log2(count)))


def weight_bits(model: nn.Module) -> int:
    """Σ over Conv2d/Linear layers of layer_bits · weights (bits per weight = this / weights)."""
    return sum(layer_bits(effective_weight(layer)) * effective_weight(layer).numel()
               for layer in prunable_layers(model).values())


def measure_model(model: nn.Module, packed: bytes, eval_set: ImageSet) -> Measured:
    """Count everything a challenge reads except the int8 latency and the plain twin: the layer table
    and parameters of compression.metrics (what metrics.measure counts, without its fp32 and gzip
    sizes, which no challenge reads), the stored file's size, and the eval subset's correct answers."""
    layers = layer_table(model)
    weights = sum(layer.params for layer in layers)
    result = evaluate(model, eval_set)
    correct = sum(result.confusion[i][i] for i in range(len(result.confusion)))
    return Measured(eval_correct=int(correct), eval_images=len(eval_set), params=count_params(model)[0],
                    weights=weights, zero_weights=weights - sum(layer.nonzero for layer in layers),
                    macs=sum(layer.macs for layer in layers), nonzero_macs=sum(layer.nonzero_macs for layer in layers),
                    bytes_packed=len(packed), weight_bits=weight_bits(model),
                    arch=str(getattr(model, "arch", "")), width=float(getattr(model, "width", 1.0)))


def int8_latency(model: nn.Module, calib: ImageSet) -> float:
    """Median ms of one int8 forward pass at batch 1 (compiled on the untimed warm-up calls)."""
    from .int8 import to_int8          # torchao and Inductor: imported only when a challenge asks

    return latency_ms(to_int8(model, calib, batches=2, batch_size=CALIBRATION_IMAGES // 2), 1, repeats=20)


class Remeasurer:
    """Measures stored variants for a class board, caching in the store (module docstring)."""

    def __init__(self, store: Store):
        self.store = store
        self.eval_set = bundled_eval_set()
        self.eval_key = f"eval:{bundled_fingerprint()}"

    def measure(self, workspace: Workspace, record: StoredVariant, *, int8: bool = False,
                plain: bool = False) -> Measured:
        """`record` (a variant `workspace` sees), measured by the server."""
        measured = self._cached(workspace, record, self.eval_key, lambda model, packed: measure_model(
            model, packed, self.eval_set).to_dict())
        measured = Measured.from_dict(measured)
        if int8:
            latency = self._cached(workspace, record, "int8_b1",
                                   lambda model, packed: int8_latency(model, calibration_set()))
            measured = Measured.from_dict({**measured.to_dict(), "int8_latency_ms": latency})
        if plain:
            twin = self.plain_twin(workspace, record)
            if twin is not None:
                twin_measured = Measured.from_dict(self._cached(workspace, twin, self.eval_key, lambda m, p: (
                    measure_model(m, p, self.eval_set).to_dict())))
                measured = Measured.from_dict({**measured.to_dict(), "plain_correct": twin_measured.eval_correct,
                                               "plain_id": twin.id})
        return measured

    def measure_builtin(self, variant_id: str, *, int8: bool = False) -> Measured:
        """A pretrained model (a challenge's start), measured the same way."""
        builtin = Workspace(BUILTIN, 0.0, 0.0)
        return self.measure(builtin, self.store.variant(builtin, variant_id), int8=int8)

    def plain_twin(self, workspace: Workspace, record: StoredVariant) -> StoredVariant | None:
        """For a distilled variant: the student trained alone on the same budget in the same workspace —
        technique "trained" with settings kd = "none", the same parent and the same epochs, learning
        rate and training data (what jobs.distill_vs_plain keeps next to it); the one made closest in
        time when there are several. None for anything else."""
        if record.technique != "distilled":
            return None
        budget = {k: record.settings.get(k) for k in ("epochs", "lr", "data")}
        twins = [v for v in self.store.variants(workspace)
                 if v.technique == "trained" and v.settings.get("kd") == "none" and v.parent == record.parent
                 and {k: v.settings.get(k) for k in budget} == budget and not v.builtin]
        return min(twins, key=lambda v: abs(v.created - record.created), default=None)

    def _cached(self, workspace: Workspace, record: StoredVariant, what: str, compute):
        """The cached value of `what` for the record's weights file, computed (one at a time) if absent."""
        key = and_(MEASUREMENTS.c.weights_sha256 == record.weights_sha256, MEASUREMENTS.c.what == what)
        with _measuring:
            with db_errors(self.store.engine), self.store.engine.connect() as conn:
                row = conn.execute(select(MEASUREMENTS.c.value).where(key)).first()
            if row is not None:
                return json.loads(row.value)
            model = self.store.model(workspace, record.id)
            value = compute(model, self.store.weights(workspace, record.id))
            self._remember(record.weights_sha256, what, value)
            return value

    def _remember(self, weights_sha256: str, what: str, value) -> None:
        """Store a measurement; another server process may have stored it first (then keep theirs)."""
        dialect_insert = pg_insert if self.store.engine.dialect.name == "postgresql" else sqlite_insert
        insert = dialect_insert(MEASUREMENTS).values(
            weights_sha256=weights_sha256, what=what, value=json.dumps(value), measured=time.time())
        try:
            with db_errors(self.store.engine), self.store.engine.execution_options(write=True).begin() as conn:
                conn.execute(insert.on_conflict_do_nothing(index_elements=["weights_sha256", "what"]))
        except StoreError:
            pass                        # a cache: a busy database only means measuring again next time
