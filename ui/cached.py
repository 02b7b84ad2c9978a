"""Results the pages ask for again and again, cached for the server by what they depend on.

Slider results (a pruned, quantized or clustered model with its accuracy, and what is drawn from it) are
keyed by variant id (a variant's model never changes), every setting, and the fingerprints of the data
sets they used (ImageSet.fingerprint: full CIFAR-10 and the bundled sample never share an entry), in one
cache bounded by bytes (PLAYGROUND_SLIDER_CACHE_MB, see _bound). Cached models are shared: copy before
modifying (the library always does). Charts too (`figure`): a class in a lesson moves to the same
positions, and each position's charts are built once for the server, not once per student.

What is computed here runs in `compute_slot()`: at most PLAYGROUND_COMPUTE_SLOTS computations at once for
the whole server (default 1), the others wait their turn. Each script run is a thread, and each thread
that calls into torch brings its own team of worker threads: ten students moving a slider at once on two
cores would run ten teams that wait on each other. In line, each runs at the machine's full speed.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Hashable

import plotly.graph_objects as go
import streamlit as st
from torch import nn

from compression.grid import find_grid
from compression.model_cache import ByteCache, cache_bytes, nbytes
from compression.prune import FIRST_AND_LAST, importance_scores, prune
from compression.structured import prune_filters
from compression.data import ImageSet
from compression.quantize import FLOAT_FORMATS
from compression.store_schema import data_home
from compression.train import evaluate


COMPUTING = "Computing this setting (the server computes one at a time)…"   # shown while a move waits or runs
COMPUTE_SLOTS = int(os.environ.get("PLAYGROUND_COMPUTE_SLOTS") or 1)      # 0: no limit
_slots = threading.BoundedSemaphore(COMPUTE_SLOTS) if COMPUTE_SLOTS > 0 else None
_holding = threading.local()


@contextmanager
def compute_slot():
    """Hold one of the server's compute slots (see the module docstring); a thread that holds one already
    (a cached function calling another) goes on."""
    if _slots is None or getattr(_holding, "slot", False):
        yield
        return
    with _slots:
        _holding.slot = True
        try:
            yield
        finally:
            _holding.slot = False


def _bound() -> int:
    """PLAYGROUND_SLIDER_CACHE_MB in bytes. The default, 64 MB: a result weighs what nbytes counts, mostly
    its model: a pruned resnet20 keeps weights, masks and masked weights (3.3 MB), a quantized or clustered
    one 1.2 MB, a resnet8 a quarter of that. So 64 MB holds about 20 pruned or 50 quantized resnet20
    positions: more than a lesson visits on one page, while a move elsewhere costs one evaluation
    (a fraction of a second). With the figures' 64 MB, what a class leaves behind stays within 20 % of a
    warm server's 600–700 MB (issue 19's goal for memory 30 s after the sessions close); a server with
    memory to spare can raise it."""
    return cache_bytes("PLAYGROUND_SLIDER_CACHE_MB", 64)


_results = ByteCache(_bound(), nbytes)


def _cached(key: tuple, compute: Callable[[], Any], spinner: str | None = COMPUTING) -> Any:
    """`compute()`'s result for `key`, once per server and shared by every session: `key` names everything
    the result depends on (what is computed, the variant id, every setting, the fingerprints of the data
    sets used). Same-key requests at once compute once, the others wait; the page shows `spinner` meanwhile
    (not on a hit). At most PLAYGROUND_SLIDER_CACHE_MB of results (see _bound), least recently used out
    first."""
    return _results.get(key, compute, lambda: st.spinner(spinner) if spinner else nullcontext())


def gradient_scores(variant_id: str, exempt: tuple[str, ...], model: nn.Module, data: ImageSet):
    def compute():
        with compute_slot():
            return importance_scores(model, "gradient", exempt, data)
    return _cached(("gradient", variant_id, exempt, data.fingerprint()), compute,
                   "Computing ∂L/∂w on a few batches…")


def make(position: tuple, model: nn.Module, scores=None) -> nn.Module:
    """The model a slider position makes of `model` (a copy): ("unstructured", method, scope, exempt,
    amount) or ("quantized", bits, symmetric, per_channel, a_bits, method) with a_bits None (weights
    only). The pages' results below and the precomputed grids (ui/precompute.py) both come from here."""
    kind, *settings = position
    if kind == "unstructured":
        method, scope, exempt, amount = settings
        return prune(model, amount, method, scope, exempt=exempt, scores=scores)
    if kind == "quantized":
        from compression.activations import quantize_model, to_reduced_float

        bits, symmetric, per_channel, a_bits, method = settings
        if bits in FLOAT_FORMATS:
            return to_reduced_float(model, bits, activations=a_bits is not None)
        if a_bits:
            raise ValueError("make() quantizes weights only: activations need calibration images")
        return quantize_model(model, bits, None, None, symmetric=symmetric, per_channel=per_channel,
                              a_method=method, batches=2)
    raise ValueError(f"no slider position of kind {kind!r}")


def grid_folder() -> Path:
    return data_home() / "grids"


def _accuracy(variant_id: str, position: tuple, made: nn.Module, eval_set: ImageSet) -> float:
    """The eval accuracy of `made`, what `position` makes of the variant: from the variant's slider grid
    on disk when the position was measured before (ui/precompute.py fills the shipped models' grids when
    the server starts), else measured now."""
    grid = find_grid(grid_folder(), variant_id, eval_set.fingerprint())
    known = grid.get(position) if grid is not None else None
    return known if known is not None else evaluate(made, eval_set).accuracy


def unstructured(variant_id: str, method: str, scope: str, exempt: tuple[str, ...], amount: float,
                 model: nn.Module, eval_set: ImageSet, calib: ImageSet) -> tuple[nn.Module, float]:
    def compute():
        if method == "gradient":        # the scores depend on the calibration images: never in a grid
            scores = gradient_scores(variant_id, exempt, model, calib)
            with compute_slot():
                pruned = prune(model, amount, method, scope, exempt=exempt, scores=scores)
                return pruned, evaluate(pruned, eval_set).accuracy
        position = ("unstructured", method, scope, exempt, amount)
        with compute_slot():
            pruned = make(position, model)
            return pruned, _accuracy(variant_id, position, pruned, eval_set)
    key = ("unstructured", variant_id, method, scope, exempt, amount, eval_set.fingerprint(),
           calib.fingerprint() if method == "gradient" else None)
    return _cached(key, compute)


def structured(variant_id: str, criterion: str, ratio: float, model: nn.Module, eval_set: ImageSet,
               calib: ImageSet) -> tuple[nn.Module, float]:
    def compute():
        with compute_slot():
            pruned = prune_filters(model, ratio, criterion, calib=calib)
            return pruned, evaluate(pruned, eval_set).accuracy
    return _cached(("structured", variant_id, criterion, ratio, eval_set.fingerprint(), calib.fingerprint()),
                   compute)


def pruned(variant_id: str, technique: str, settings: dict, model: nn.Module, eval_set: ImageSet,
           calib: ImageSet) -> tuple[nn.Module, float]:
    """The model the Prune page makes from these settings (its "pruned" or "filter-pruned" variant's
    settings), with its eval accuracy: what the page shows and what a fine-tune job starts from."""
    if technique == "filter-pruned":
        return structured(variant_id, settings["criterion"], settings["ratio"], model, eval_set, calib)
    exempt = FIRST_AND_LAST if settings["exempt"] == "first+last" else ()
    return unstructured(variant_id, settings["method"], settings["scope"], exempt, settings["amount"], model,
                        eval_set, calib)


def accuracy(variant_id: str, model: nn.Module, eval_set: ImageSet) -> float:
    def compute():
        with compute_slot():
            return evaluate(model, eval_set).accuracy
    return _cached(("accuracy", variant_id, eval_set.fingerprint()), compute, spinner=None)


def shared(variant_id: str, k: int, model: nn.Module, eval_set: ImageSet) -> tuple[nn.Module, float]:
    from compression.share import cluster_weights

    def compute():
        with compute_slot():
            clustered = cluster_weights(model, k)
            return clustered, evaluate(clustered, eval_set).accuracy
    return _cached(("shared", variant_id, k, eval_set.fingerprint()), compute)


def shared_breakdown(variant_id: str, k: int, model: nn.Module) -> list[dict]:
    """Where the packed file of `shared(variant_id, k)` spends its bytes, per layer (packing it runs the
    Huffman coder over every index: too slow to repeat on every rerun)."""
    from compression.packed_sizes import packed_breakdown

    return _cached(("breakdown", variant_id, k), lambda: packed_breakdown(model), spinner=None)


def quantized(variant_id: str, bits, symmetric: bool, per_channel: bool, a_bits, method: str,
              model: nn.Module, eval_set: ImageSet, calib: ImageSet) -> tuple[nn.Module, float]:
    """bits: 1..8 or "fp16"/"bf16"; a_bits: None (weights only) or 1..8 (activations calibrated)."""
    from compression.activations import quantize_model

    def compute():
        if a_bits and bits not in FLOAT_FORMATS:     # activations calibrated on `calib`: never in a grid
            with compute_slot():
                q_model = quantize_model(model, bits, a_bits, calib, symmetric=symmetric,
                                         per_channel=per_channel, a_method=method, batches=2)
                return q_model, evaluate(q_model, eval_set).accuracy
        position = ("quantized", bits, symmetric, per_channel, a_bits, method)
        with compute_slot():
            q_model = make(position, model)
            return q_model, _accuracy(variant_id, position, q_model, eval_set)
    key = ("quantized", variant_id, bits, symmetric, per_channel, a_bits, method, eval_set.fingerprint(),
           calib.fingerprint() if a_bits else None)
    return _cached(key, compute)


def quant_errors(variant_id: str, bits, symmetric: bool, per_channel: bool, a_bits, method: str,
                 model: nn.Module, q_model: nn.Module) -> dict[str, dict[str, float]]:
    """views.layer_quant_error of `quantized(...)` with the same settings, once per server (the weights'
    rounding does not depend on the calibration data)."""
    from compression.views import layer_quant_error

    return _cached(("quant_errors", variant_id, bits, symmetric, per_channel, a_bits, method),
                   lambda: layer_quant_error(model, q_model), spinner=None)


_figures = ByteCache(cache_bytes("PLAYGROUND_FIGURE_CACHE_MB", 64),
                     lambda fig: len(fig.to_json()) if fig is not None else 0)


def figure(key: Hashable, build: Callable[[], go.Figure | None]) -> go.Figure | None:
    """The chart `build()` makes, built once per server for `key` and shared by every session: `key` must
    name everything the chart shows (variant id, every setting, the layer). Bounded by bytes: a figure
    weighs the length of its JSON (what Streamlit sends; the numbers it holds are about as large), at
    most PLAYGROUND_FIGURE_CACHE_MB in all (default 64), least recently used out first. Never modify
    the figure returned: other sessions draw it too."""
    return _figures.get(key, build)             # None (nothing to draw) is kept too


def forget() -> int:
    """Drop every slider result and chart (when the last session has gone: ui/memory.py); returns the
    bytes they held. What is expensive to measure stays on disk in the slider grids."""
    held = _results.total_bytes + _figures.total_bytes
    _results.clear()
    _figures.clear()
    return held
