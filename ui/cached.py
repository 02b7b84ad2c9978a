"""Results the pages ask for again and again, cached by what they depend on.

Models are keyed by variant id (a variant's model never changes) and passed as `_model` so Streamlit
does not try to hash them. Cached models are shared: copy before modifying (the library always does).
Charts too (`figure`): a class in a lesson moves to the same positions, and each position's charts are
built once for the server, not once per student.

What is computed here runs in `compute_slot()`: at most PLAYGROUND_COMPUTE_SLOTS computations at once for
the whole server (default 1), the others wait their turn. Each script run is a thread, and each thread
that calls into torch brings its own team of worker threads: ten students moving a slider at once on two
cores would run ten teams that wait on each other. In line, each runs at the machine's full speed.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Callable, Hashable

import plotly.graph_objects as go
import streamlit as st
from cachetools import LRUCache
from torch import nn

from compression.prune import FIRST_AND_LAST, importance_scores, prune
from compression.structured import prune_filters
from compression.data import ImageSet
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


@st.cache_resource(max_entries=8, show_spinner="Computing ∂L/∂w on a few batches…")
def gradient_scores(variant_id: str, exempt: tuple[str, ...], _model: nn.Module, _data: ImageSet):
    with compute_slot():
        return importance_scores(_model, "gradient", exempt, _data)


@st.cache_resource(max_entries=48, show_spinner=COMPUTING)
def unstructured(variant_id: str, method: str, scope: str, exempt: tuple[str, ...], amount: float,
                 _model: nn.Module, _eval: ImageSet, _calib: ImageSet) -> tuple[nn.Module, float]:
    scores = gradient_scores(variant_id, exempt, _model, _calib) if method == "gradient" else None
    with compute_slot():
        pruned = prune(_model, amount, method, scope, exempt=exempt, scores=scores)
        return pruned, evaluate(pruned, _eval).accuracy


@st.cache_resource(max_entries=24, show_spinner=COMPUTING)
def structured(variant_id: str, criterion: str, ratio: float, _model: nn.Module, _eval: ImageSet,
               _calib: ImageSet) -> tuple[nn.Module, float]:
    with compute_slot():
        pruned = prune_filters(_model, ratio, criterion, calib=_calib)
        return pruned, evaluate(pruned, _eval).accuracy


def pruned(variant_id: str, technique: str, settings: dict, model: nn.Module, eval_set: ImageSet,
           calib: ImageSet) -> tuple[nn.Module, float]:
    """The model the Prune page makes from these settings (its "pruned" or "filter-pruned" variant's
    settings), with its eval accuracy: what the page shows and what a fine-tune job starts from."""
    if technique == "filter-pruned":
        return structured(variant_id, settings["criterion"], settings["ratio"], model, eval_set, calib)
    exempt = FIRST_AND_LAST if settings["exempt"] == "first+last" else ()
    return unstructured(variant_id, settings["method"], settings["scope"], exempt, settings["amount"], model,
                        eval_set, calib)


@st.cache_resource(max_entries=16, show_spinner=False)
def accuracy(variant_id: str, _model: nn.Module, _eval: ImageSet) -> float:
    with compute_slot():
        return evaluate(_model, _eval).accuracy


@st.cache_resource(max_entries=24, show_spinner=COMPUTING)
def shared(variant_id: str, k: int, _model: nn.Module, _eval: ImageSet) -> tuple[nn.Module, float]:
    from compression.share import cluster_weights

    with compute_slot():
        model = cluster_weights(_model, k)
        return model, evaluate(model, _eval).accuracy


@st.cache_resource(max_entries=24, show_spinner=False)
def shared_breakdown(variant_id: str, k: int, _model: nn.Module) -> list[dict]:
    """Where the packed file of `shared(variant_id, k)` spends its bytes, per layer (packing it runs the
    Huffman coder over every index: too slow to repeat on every rerun)."""
    from compression.packed_sizes import packed_breakdown

    return packed_breakdown(_model)


@st.cache_resource(max_entries=32, show_spinner=COMPUTING)
def quantized(variant_id: str, bits, symmetric: bool, per_channel: bool, a_bits, method: str,
              _model: nn.Module, _eval: ImageSet, _calib: ImageSet) -> tuple[nn.Module, float]:
    """bits: 1..8 or "fp16"/"bf16"; a_bits: None (weights only) or 1..8 (activations calibrated)."""
    from compression.activations import quantize_model, to_reduced_float
    from compression.quantize import FLOAT_FORMATS

    with compute_slot():
        if bits in FLOAT_FORMATS:
            model = to_reduced_float(_model, bits, activations=a_bits is not None)
        else:
            model = quantize_model(_model, bits, a_bits, _calib if a_bits else None, symmetric=symmetric,
                                   per_channel=per_channel, a_method=method, batches=2)
        return model, evaluate(model, _eval).accuracy


@st.cache_resource(max_entries=32, show_spinner=False)
def quant_errors(variant_id: str, bits, symmetric: bool, per_channel: bool, a_bits, method: str,
                 _model: nn.Module, _quantized: nn.Module) -> dict[str, dict[str, float]]:
    """views.layer_quant_error of `quantized(...)` with the same settings, once per server."""
    from compression.views import layer_quant_error

    return layer_quant_error(_model, _quantized)


FIGURE_CACHE_MB = float(os.environ.get("PLAYGROUND_FIGURE_CACHE_MB") or 64)
_figures: LRUCache = LRUCache(maxsize=int(FIGURE_CACHE_MB * 2**20), getsizeof=lambda entry: entry[1])
_figures_lock = threading.Lock()


def figure(key: Hashable, build: Callable[[], go.Figure | None]) -> go.Figure | None:
    """The chart `build()` makes, built once per server for `key` and shared by every session: `key` must
    name everything the chart shows (variant id, every setting, the layer). Bounded by bytes: a figure
    weighs the length of its JSON (what Streamlit sends; the numbers it holds are about as large), at
    most PLAYGROUND_FIGURE_CACHE_MB in all (default 64), least recently used out first. Never modify
    the figure returned: other sessions draw it too."""
    with _figures_lock:
        entry = _figures.get(key)
    if entry is not None:
        return entry[0]
    fig = build()                        # None (nothing to draw) is kept too
    size = len(fig.to_json()) if fig is not None else 0
    with _figures_lock:
        if size <= _figures.maxsize:
            _figures[key] = (fig, size)
    return fig
