"""ONNX on Compare & Download: each variant as an fp32 and an int8 (QDQ) .onnx file that ONNX Runtime runs
without PyTorch, the check of both files in ONNX Runtime against the model in PyTorch, and an uploaded
.onnx evaluated.

- The files are made when a download button is clicked (compression.jobs.onnx_file: a few seconds, int8
  calibrated on the first 4 × 128 training images of the data in use) and kept in a server-side cache
  bounded by bytes (PLAYGROUND_ONNX_CACHE_MB, default 64), keyed by variant id, format and calibration
  images: a variant's id names its weights, so every session shares them.
- The check ("Check ONNX") is a short analysis (ui/analyses.py) run once per server per variant:
  it makes both files (and caches them, so the download is the file that was checked) and measures each on
  the eval subset in ONNX Runtime against the PyTorch model (compression.jobs.check_onnx_files). A fragment
  polls while it runs, and only then.
"""
from __future__ import annotations

import streamlit as st

from compression.files import ModelFileError
from compression.model_cache import ByteCache, cache_bytes
from compression.jobs import ONNX_FORMATS, check_onnx_files, onnx_file
from compression.export import variant_metadata
from compression.variant import file_stem

from . import analyses, safety, workspace
from .format import accuracy, kib, plain

POLL_S = 1.0
EXTENSION = {"fp32": "onnx", "int8": "int8.onnx"}
_files = ByteCache(cache_bytes("PLAYGROUND_ONNX_CACHE_MB", 64), len)


def cache_key(variant_id: str, fmt: str, calib) -> tuple:
    return (variant_id, fmt, calib.name, len(calib))


def offered(variant_id: str, fmt: str, calib) -> bytes:
    """The .onnx file the download button sends: the cached one (the file the check measured), else made now."""
    def make() -> bytes:
        variant = workspace.variant(variant_id)
        return onnx_file(variant.model, fmt, calib, variant_metadata(variant))
    return _files.get(cache_key(variant_id, fmt, calib), make)


def check_key(variant_id: str, calib) -> tuple:
    return ("onnx", variant_id, calib.name, len(calib))


def section(where, record, data) -> None:
    """The two .onnx downloads of a variant and its check in ONNX Runtime."""
    calib, stem = data.train, file_stem(record.as_variant())
    cols = where.columns(3)
    for col, fmt in zip(cols, ONNX_FORMATS):
        col.download_button(f"ONNX {fmt} (.onnx)", lambda fmt=fmt: offered(record.id, fmt, calib),
                            f"{stem}.{EXTENSION[fmt]}", "application/octet-stream", key=f"dl-{record.id}-onnx-{fmt}",
                            on_click="ignore", width="stretch", help="Made when clicked (a few seconds); runs in ONNX "
                            "Runtime without PyTorch" + (", int8 QDQ" if fmt == "int8" else ""))
    task = analyses.task(check_key(record.id, calib))
    if task is None or not (task.active or task.status == analyses.DONE):
        if cols[2].button("Check ONNX", key=f"onnx-check-{record.id}", icon=":material/fact_check:",
                          width="stretch", help="Run both .onnx files in ONNX Runtime on the eval subset and compare "
                                                "them with the model in PyTorch (about half a minute)"):
            start_check(record.id, data)
            st.rerun()
        if task is not None and task.error:
            where.error(f"The ONNX check failed: {plain(task.error)}")
        return
    with where:
        check_status(record.id, data)


def start_check(variant_id: str, data) -> None:
    variant, calib = workspace.variant(variant_id), data.train
    analyses.start(check_key(variant_id, calib), f"ONNX check {variant_id}", lambda task: check_onnx_files(
        variant, data.eval, calib, task.report, task.should_stop,
        keep=lambda fmt, blob: _files.put(cache_key(variant_id, fmt, calib), blob)))


def check_status(variant_id: str, data) -> None:
    """The check's progress (polling while it runs), then its figures."""
    key = check_key(variant_id, data.train)
    polling = analyses.task(key).active

    def body():
        task = analyses.task(key)
        if task.active:
            last = task.latest() or {}
            st.progress(last.get("done", 0) / 2, text=f"ONNX Runtime check: {plain(last.get('message', 'waiting'))}…")
        elif task.status == analyses.DONE:
            st.markdown(check_text(task.result))
        if polling and not task.active:
            st.rerun()
    safety.fragment(body, run_every=POLL_S if polling else None, where="The ONNX check")()


def check_text(result: dict) -> str:
    """The check's figures in one line per file."""
    lines = []
    for fmt, r in result.items():
        times = r.get("latency_ms", {})
        speed = "".join(f" · batch {b}: {t['onnx']:.1f} ms (PyTorch {t['pytorch']:.1f} ms)"
                        for b, t in ((b, times.get(f"batch {b}")) for b in (1, 256)) if t)
        lines.append(f"**ONNX Runtime, {fmt}**: {accuracy(r['onnx'])} on the {r['images']:,} eval images "
                     f"(PyTorch fp32: {accuracy(r['pytorch'])}; same top-1 class as PyTorch on "
                     f"{100 * r['agreement']:.1f} % of them) · "
                     f"{kib(r['bytes'])}{speed}")
    return "  \n".join(lines)


def evaluate_upload(blob: bytes, name: str, data) -> tuple[str, str]:
    """An uploaded .onnx, checked (compression/onnx_check.py) and run in ONNX Runtime on the eval subset:
    ("success" | "error", message). It is not added to the variants: it holds no PyTorch model."""
    from compression.onnx_check import evaluate_onnx_upload

    try:
        with st.spinner("Checking the .onnx file and running it in ONNX Runtime…"):
            r = evaluate_onnx_upload(blob, name, data.eval)
    except ModelFileError as exc:
        return "error", f"Could not use {plain(name)}: {plain(exc)}"
    except Exception as exc:  # never a stack trace on the page
        return "error", f"Could not use {plain(name)}: it is not an ONNX model this app can run ({type(exc).__name__})."
    return "success", (f"{plain(name)} runs in ONNX Runtime: eval accuracy {accuracy(r['accuracy'])} on "
                       f"{r['images']:,} images · {kib(r['bytes'])} · opset {r['opset']}, "
                       f"{len(r['operators'])} operator types · CPU {r['latency_b1_ms']:.1f} ms at batch 1, "
                       f"{r['latency_b256_ms']:.0f} ms at batch 256. An .onnx file is evaluated, not added to "
                       f"your variants: it holds no PyTorch model to compress further.")
