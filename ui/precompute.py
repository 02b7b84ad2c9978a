"""Measure the shipped models' slider grids in the background when the server starts (issue 19).

For each shipped model, on the bundled eval subset (what every page shows until a student picks full
CIFAR-10): the accuracy at each pruning ratio of the lesson's default settings (magnitude, one global
threshold, no layer exempt: 0–99 %) and at each weight bit width of the Quantize page's defaults
(symmetric, per channel). The results go to disk (compression/grid.py), so a restarted server finds
them; a move to a measured position only prunes or quantizes a copy (milliseconds) and draws.

It runs on one daemon thread, a position at a time, each in the server's compute slot (ui/cached.py): a
student's move waits for at most one position's evaluation, and the thread lets waiting moves go first.
PLAYGROUND_PRECOMPUTE=off switches it off (the test suite does: each test's fresh data folder would
start it again).
"""
from __future__ import annotations

import os
import threading
import time

from compression.data import ImageSet
from compression.grid import lesson_order, open_grid
from compression.train import evaluate
from compression.variant import Variant

from . import cached

PAUSE_S = 0.05      # between positions: a move waiting for the compute slot gets it first


def positions() -> list[tuple]:
    """The positions measured, in the order a lesson is likely to visit them."""
    prune = [("unstructured", "magnitude", "global", (), p / 100) for p in lesson_order(list(range(100)))]
    quant = [("quantized", bits, True, True, None, "minmax") for bits in (8, 4, 2, 6, 3, 5, 7, 1)]
    return prune + quant


def enabled() -> bool:
    return os.environ.get("PLAYGROUND_PRECOMPUTE", "on").lower() not in ("off", "0", "false", "no")


_started: set[str] = set()
_lock = threading.Lock()


def start(models: dict[str, Variant], eval_set: ImageSet) -> None:
    """Measure every position of each {store id: variant} not on disk yet, once per process."""
    if not enabled():
        return
    with _lock:
        todo = {vid: v for vid, v in models.items() if vid not in _started}
        _started.update(todo)
    if todo:
        threading.Thread(target=fill, args=(todo, eval_set), name="playground-precompute", daemon=True).start()


def fill(models: dict[str, Variant], eval_set: ImageSet, which: list[tuple] | None = None,
         pause_s: float = PAUSE_S) -> int:
    """Measure what is missing of `which` (default: positions()); returns how many were measured."""
    measured = 0
    for variant_id, variant in models.items():
        grid = open_grid(cached.grid_folder(), variant_id, eval_set.fingerprint())
        for position in which or positions():
            if position in grid:
                continue
            with cached.compute_slot():
                accuracy = evaluate(cached.make(position, variant.model), eval_set).accuracy
            grid.put(position, accuracy)
            measured += 1
            time.sleep(pause_s)
    return measured
