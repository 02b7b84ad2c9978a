"""The job engine's tasks: each long job of compression/jobs.py as a plain function of plain data, that
a worker process (on this machine or another) runs by name.

    run(name, spec, report, stop) -> {"variants": [variant payload, ...]}

- `spec` is plain data: the task's settings, the models it starts from as payloads
  (portable.variant_payload / model_payload: packed weights, never a pickled module), and the data it
  trains on *by name* (DataSpec below), never the images themselves;
- `report(**fields)` publishes a progress event, `stop()` says whether to end early (between steps);
- the result holds each variant made, as a payload whose id names it within the result ("made:0", …)
  and whose parent is one of those or the id (in the app) of a variant the job started from;
  portable.variants_from_result brings them back with ids of the app's process.

Data travels once per worker process: the first job that names a data set loads it and keeps it in
this module's cache (keyed by the resolved file or folder), later jobs on that worker reuse it. Every
job reports {"phase": "data", "cached": …} first, so a page (and the tests) can see which happened.

DataSpec: {"source": "sample"} (the bundled sample, assets/cifar10_sample.npz) or
{"source": "cifar10", "root": "/path/holding/cifar-10-batches-py"} (a path as the *worker* sees it:
the same folder on every machine, or a shared mount); optional "train_images": n (a class-balanced
subset of n training images) and "test": true (also measure on the full test split; cifar10 only).
Live accuracy is always measured on the fixed eval subset of the bundled sample.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from . import data as D
from .jobs import (Report, Stop, auto_prune_variants, auto_quantize_variants, centroid_finetune, distill_vs_plain,
                   finetune_variant, int8_variant, qat_variant, run_pipeline, train_model)
from .pipelines import deep_compression, spiral
from .portable import model_from_payload, variant_from_payload, variant_payload
from .train import TrainConfig
from .variant import Variant


@dataclass
class Data:
    train: D.ImageSet
    eval: D.ImageSet
    test: D.ImageSet | None = None


_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def _cached(key: tuple, load: Callable[[], object]) -> tuple[object, bool]:
    """(value, whether it was in this process's cache already)."""
    with _cache_lock:
        if key in _cache:
            return _cache[key], True
        _cache[key] = value = load()
        return value, False


def load_data(spec: dict) -> tuple[Data, bool]:
    """The data a DataSpec names, from this process's cache when a previous job loaded it."""
    source = spec.get("source", "sample")
    sample = str(D.SAMPLE_PATH.resolve())
    if source == "sample":
        (train, _), cached = _cached(("sample", sample), D.load_sample)
        test = None
    elif source == "cifar10":
        folder = str(D.batches_dir(spec.get("root")).resolve())
        (train, test), cached = _cached(("cifar10", folder),
                                        lambda: (D.load_cifar10(folder, "train"), D.load_cifar10(folder, "test")))
        test = test if spec.get("test") else None
    else:
        raise D.DataError(f"unknown data source {source!r}: name 'sample' (the bundled sample) or 'cifar10' "
                          f"(with 'root', a folder holding {D.FOLDER}/).")
    n = int(spec.get("train_images") or 0)
    if 0 < n < len(train):
        train = train.subset(D.stratified_indices(train.labels, max(1, n // len(D.CLASSES))),
                             f"{train.name} ({n} images)")
    eval_set, _ = _cached(("eval", sample), lambda: D.eval_subset(D.load_sample(splits=("test",))))
    return Data(train, eval_set, test), cached


# --- variants in and out ------------------------------------------------------------------------------------

INPUT = "input:"


def _input(payload: dict) -> Variant:
    """A variant the job starts from. Its id is marked: ids of variants made here come from this process's
    counter (v1, v2, …) and may equal an id of the app's, so a parent id must say which one it means."""
    variant = variant_from_payload(payload)
    variant.id = INPUT + variant.id
    return variant


def _outgoing(made: list[Variant]) -> list[dict]:
    """Payloads of the variants made, with ids that name them within the batch ("made:0", …) and parents
    that name either one of the batch or, by its id in the app, a variant the job started from."""
    names = {v.id: f"made:{i}" for i, v in enumerate(made)}
    payloads = []
    for v in made:
        parent = v.parent or ""
        payloads.append({**variant_payload(v), "id": names[v.id],
                         "parent": names.get(parent) or parent.removeprefix(INPUT) or None})
    return payloads


# --- the tasks: spec + data -> variants ------------------------------------------------------------------

def _train(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    """spec: arch, width, config (TrainConfig fields); optional name, checkpoint (a file path as the worker
    sees it: the run saves itself there at every epoch's end and resumes from it when it exists)."""
    return [train_model(spec["arch"], spec["width"], TrainConfig(**spec.get("config", {})), data.train, data.eval,
                        report, stop, test_set=data.test, name=spec.get("name"), checkpoint=spec.get("checkpoint"))]


def _finetune(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    """spec: parent (variant payload), model (model payload: the compressed copy to fine-tune),
    technique, settings, epochs; optional lr, name."""
    return [finetune_variant(_input(spec["parent"]), model_from_payload(spec["model"]),
                             spec["technique"], spec.get("settings", {}), spec["epochs"], data.train, data.eval,
                             report, stop, lr=spec.get("lr", 0.02), name=spec.get("name"), test_set=data.test)]


def _qat(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    return [qat_variant(_input(spec["parent"]), spec["bits"], spec["symmetric"], spec["per_channel"],
                        spec["epochs"], data.train, data.eval, report, stop, a_bits=spec.get("a_bits"),
                        lr=spec.get("lr", 0.01))]


def _int8(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    return [int8_variant(_input(spec["parent"]), data.train, data.eval, report, stop,
                         test_set=data.test)]


def _distill(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    """spec: teacher (variant payload), start (variant payload or None: a fresh student_arch ×
    student_width), config (TrainConfig fields), T, alpha."""
    start = _input(spec["start"]) if spec.get("start") else None
    return distill_vs_plain(spec["student_arch"], spec["student_width"], start, _input(spec["teacher"]),
                            TrainConfig(**spec.get("config", {})), spec["T"], spec["alpha"], data.train, data.eval,
                            report, stop)


def _centroids(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    return [centroid_finetune(_input(spec["parent"]), spec["clusters"], spec["epochs"], data.train,
                              data.eval, report, stop, lr=spec.get("lr", 0.005))]


def _deep_compression(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    steps = deep_compression(_input(spec["parent"]), data.train, data.eval, spec["sparsity"],
                             spec["clusters"], spec["finetune_epochs"], spec.get("centroid_epochs", 0.0),
                             test_set=data.test, stop=stop)
    return run_pipeline(steps, report)


def _spiral(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    steps = spiral(_input(spec["parent"]), data.train, data.eval, spec["rounds"],
                   spec["final_sparsity"], spec["epochs_per_round"], spec["T"], test_set=data.test, stop=stop)
    return run_pipeline(steps, report)


def _steps(report: Report) -> Report:
    """The auto modes' progress (done / total layers measured, then "measure") as the steps and messages a
    page's progress bar reads."""
    def publish(**event) -> None:
        if "done" in event:
            event.update(step=event["done"], total_steps=event["total"],
                         message=f"Measuring each layer's sensitivity: {event['done']} of {event['total']} layers")
        elif event.get("phase") == "measure":
            event["message"] = "Measuring the auto and the uniform model on the eval subset"
        report(**event)
    return publish


def _auto_prune(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    """spec: parent (variant payload), target_sparsity (0 … 0.98, met exactly); optional method, keep_first_last,
    calib_images (default 256), levels. Makes [auto, uniform at the same sparsity] (jobs.auto_prune_variants)."""
    from .auto_prune import AutoPruneConfig
    from .prune import FIRST_AND_LAST

    n = int(spec.get("calib_images", 256))
    extra = {"levels": tuple(spec["levels"])} if spec.get("levels") else {}
    config = AutoPruneConfig(target_sparsity=float(spec["target_sparsity"]), method=spec.get("method", "magnitude"),
                             exempt=FIRST_AND_LAST if spec.get("keep_first_last") else (), calib_images=n, **extra)
    try:
        made, _ = auto_prune_variants(_input(spec["parent"]), config, D.calibration_set(data.train, n), data.eval,
                                      _steps(report), stop)
    except InterruptedError:          # Stop while measuring: nothing made
        return []
    return made


def _auto_quant(spec: dict, data: Data, report: Report, stop: Stop) -> list[Variant]:
    """spec: parent (variant payload), budget_bytes (packed size, an upper bound); optional criterion ("loss" or
    "sqnr"), calib_images (default 256). Makes [auto, widest uniform that fits] (jobs.auto_quantize_variants)."""
    from .auto_quant import AutoQuantConfig

    n = int(spec.get("calib_images", 256))
    config = AutoQuantConfig(int(spec["budget_bytes"]), criterion=spec.get("criterion", "loss"), calib_images=n)
    try:
        made, _ = auto_quantize_variants(_input(spec["parent"]), config, D.calibration_set(data.train, n), data.eval,
                                         _steps(report), stop)
    except InterruptedError:
        return []
    return made


TASKS: dict[str, Callable[[dict, Data, Report, Stop], list[Variant]]] = {
    "train": _train, "finetune": _finetune, "qat": _qat, "int8": _int8, "distill": _distill,
    "centroids": _centroids, "deep_compression": _deep_compression, "spiral": _spiral,
    "auto_prune": _auto_prune, "auto_quant": _auto_quant,
}


class UnknownTask(ValueError):
    """A job names a task this registry does not have."""


def check_task(name: str) -> None:
    if name not in TASKS:
        raise UnknownTask(f"there is no task {name!r}; the tasks are {', '.join(TASKS)}.")


def run(name: str, spec: dict, report: Report, stop: Stop) -> dict:
    """Run task `name` on `spec` in this process: {"variants": [variant payload, ...]}."""
    check_task(name)
    data, cached = load_data(spec.get("data") or {})
    report(phase="data", cached=cached, train_images=len(data.train))
    return {"variants": _outgoing(TASKS[name](spec, data, report, stop))}
