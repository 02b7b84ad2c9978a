"""Slider grids kept on disk: the accuracy of each slider position of a model, measured once.

A lesson moves a class through the positions of one slider on one shipped model: "now 70 %". Most of
a move's work is the evaluation (1,000 images through the network); the pruned or quantized copy itself
takes milliseconds. An accuracy depends on three things only:

    accuracy = f(the model's weights, the position's technique and settings, the eval images)

so it can be measured before the class comes and kept: the store names a model by the digest of its
content (compression/store.py), and an eval set has a fingerprint (ImageSet.fingerprint). A grid is one
small JSON file per (model id, eval set), under PLAYGROUND_HOME/grids, mapping a position (the settings
tuple the pages' cache uses, written as JSON) to its accuracy. A server that restarts finds it there.

Plain data in, plain data out: a grid file that is missing, truncated or not this format reads as empty.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def position_key(position: tuple) -> str:
    """A position (a tuple of settings: str, int, float, bool, None or nested tuples) as a JSON string."""
    return json.dumps(position, separators=(",", ":"))


class AccuracyGrid:
    """Accuracies of one model on one eval set, by position; every `put` rewrites the file atomically
    (a temporary file renamed over it), so a reader never sees half a file."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._values = self._read(path)

    @staticmethod
    def _read(path: Path) -> dict[str, float]:
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(values, dict):
            return {}
        return {k: float(v) for k, v in values.items() if isinstance(k, str) and isinstance(v, (int, float))}

    def get(self, position: tuple) -> float | None:
        with self._lock:
            return self._values.get(position_key(position))

    def __contains__(self, position: tuple) -> bool:
        return self.get(position) is not None

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def put(self, position: tuple, accuracy: float) -> None:
        with self._lock:
            self._values[position_key(position)] = float(accuracy)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".grid-")
            with os.fdopen(fd, "w") as f:
                json.dump(self._values, f)
            os.replace(tmp, self.path)


_grids: dict[Path, AccuracyGrid] = {}
_grids_lock = threading.Lock()


def _path(folder: str | os.PathLike, model_id: str, eval_fingerprint: str) -> Path:
    return Path(folder) / f"{_SAFE.sub('_', model_id)}-{_SAFE.sub('_', eval_fingerprint)}.json"


def open_grid(folder: str | os.PathLike, model_id: str, eval_fingerprint: str) -> AccuracyGrid:
    """The grid of `model_id` on the eval set with `eval_fingerprint` (made when missing), one object per
    file and process."""
    path = _path(folder, model_id, eval_fingerprint)
    with _grids_lock:
        if path not in _grids:
            _grids[path] = AccuracyGrid(path)
        return _grids[path]


def find_grid(folder: str | os.PathLike, model_id: str, eval_fingerprint: str) -> AccuracyGrid | None:
    """The grid if one was opened or written for this model and eval set, else None (a student's own
    variants have none: nothing is kept in memory for them)."""
    path = _path(folder, model_id, eval_fingerprint)
    with _grids_lock:
        known = _grids.get(path)
    if known is not None:
        return known
    return open_grid(folder, model_id, eval_fingerprint) if path.exists() else None


def lesson_order(values: list) -> list:
    """The order to measure a slider's values in: the round ones a teacher names first (multiples of 10,
    then of 5), then the rest; within each, from the middle of the range outwards."""
    def rank(v):
        step = 0 if v % 10 == 0 else 1 if v % 5 == 0 else 2
        return step, abs(v - 50)
    return sorted(values, key=rank)
