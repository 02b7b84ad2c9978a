"""Compare & Download's ONNX section: a variant exported for ONNX Runtime (fp32, or int8 QDQ calibrated on
training images), run in ONNX Runtime on the eval subset against the PyTorch model(s) in a background job
(compression/jobs.py: onnx_export), with its accuracy, top-1 agreement and CPU latency shown beside the
download. The file runs with only `onnxruntime` and `numpy` installed. A page adds it with one call:
`onnx_download.section(book, data)`. An uploaded .onnx of a CIFAR ResNet is checked (onnx_check: protobuf
data, standard operators only; nothing in it runs as Python) and evaluated the same way."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from compression.files import ModelFileError
from compression.jobs import onnx_export
from compression.onnx_check import evaluate_onnx_upload
from compression.variant import file_stem

from . import safety, state
from .format import accuracy, kib, ms, plain
from .jobs import job_status, start_job

KIND = "onnx"
RUN_IT = """import numpy as np, onnxruntime as ort
session = ort.InferenceSession("{name}")
images = np.random.rand(8, 3, 32, 32).astype(np.float32)     # float images in [0, 1], shape (N, 3, 32, 32)
logits = session.run(None, {{"images": images}})[0]            # (N, 10)"""


def run_export(job, variant, eval_set, int8: bool, calib) -> tuple[bytes, dict]:
    """In the worker: export and verify; an int8 file is also kept with the variant's downloads."""
    job.report(phase="onnx_for", variant=variant.id, int8=int8)
    data, report = onnx_export(variant, eval_set, job.report, job.should_stop, int8=int8, calib=calib)
    if int8:
        variant.artifacts["onnx_int8"] = data
    return data, report


def report_table(report: dict) -> pd.DataFrame:
    """One row per runtime: accuracy, same top-1 as the ONNX file, batch-1 and batch-256 latency."""
    latency = report.get("latency_ms", {})
    rows = []
    for name in ("onnx", *(k for k in report if k not in ("onnx", "latency_ms", "images", "format"))):
        rows.append({"runtime": "ONNX Runtime" if name == "onnx" else name.replace("_", " "),
                     "accuracy": accuracy(report[name]["accuracy"]),
                     "same top-1 as ONNX": "—" if name == "onnx" else accuracy(report[name]["agreement"]),
                     "batch 1": ms(latency.get("batch 1", {}).get(name)),
                     "batch 256": ms(latency.get("batch 256", {}).get(name))})
    return pd.DataFrame(rows)


@safety.fragment(run_every=1.0)
def result(book) -> None:
    job, events = job_status(KIND, what="The ONNX export", done=lambda j: "Exported and checked in ONNX Runtime.")
    started = next((e for e in events if e.get("phase") == "onnx_for"), None)
    variant = book.get(started["variant"]) if started else None
    if job is None or variant is None or not isinstance(job.result, tuple):
        return
    data, report = job.result
    fmt = "int8" if started["int8"] else "fp32"
    st.dataframe(report_table(report), hide_index=True)
    st.caption(f"{plain(variant.name)}, ONNX {fmt}, {kib(len(data))}: measured on {report['images']:,} eval-subset "
               "images; latency is the median CPU time of one forward pass, the runtimes timed in turn.")
    name = f"{file_stem(variant)}.{'int8.' if started['int8'] else ''}onnx"
    st.download_button(f"Download ONNX {fmt} (.onnx)", data, name, "application/octet-stream", key="onnx_dl",
                       on_click="ignore", icon=":material/download:")
    st.code(RUN_IT.format(name=name), language="python")


def upload_message(data: bytes, name: str, eval_set) -> tuple[str, str]:
    """Check and evaluate an uploaded .onnx: ("success" | "error", what the page says)."""
    try:
        r = evaluate_onnx_upload(data, name, eval_set)
    except ModelFileError as exc:
        return "error", f"Could not use {plain(name)}: {plain(exc)}"
    return "success", (f"{plain(name)} in ONNX Runtime: {accuracy(r['accuracy'])} on {r['images']:,} eval-subset "
                       f"images, {kib(r['bytes'])}, batch 1 {ms(r['latency_b1_ms'])}, batch 256 "
                       f"{ms(r['latency_b256_ms'])}; operators {plain(', '.join(r['operators']))}.")


def upload(data: state.DataInUse) -> None:
    """An .onnx file to evaluate in ONNX Runtime (it does not join the variants: it is not a PyTorch model)."""
    file = st.file_uploader("Evaluate an .onnx file of a CIFAR ResNet", type=["onnx"], key="onnx_upload")
    if file is not None and st.session_state.get("_onnx_uploaded") != file.file_id:
        st.session_state["_onnx_uploaded"] = file.file_id
        with st.spinner("Checking the file and running it on the eval subset…"):
            st.session_state["_onnx_message"] = upload_message(file.getvalue(), file.name[:80], data.eval)
    message = st.session_state.get("_onnx_message")
    if message:
        (st.success if message[0] == "success" else st.error)(message[1])


def section(book, data: state.DataInUse) -> None:
    st.subheader("ONNX for ONNX Runtime")
    variants = list(book)
    if not variants:
        return
    c1, c2, c3 = st.columns([3, 1, 1])
    chosen = c1.selectbox("Variant", [v.id for v in variants], key="onnx_variant",
                          format_func=lambda i: plain(book.get(i).name))
    fmt = c2.radio("Numbers", ["fp32", "int8"], key="onnx_format", horizontal=True,
                   help="int8: ONNX Runtime's static quantization (QDQ), calibrated on 512 training images")
    if c3.button("Export and check", icon=":material/output:", key="onnx_go"):
        variant, int8, eval_set = book.get(chosen), fmt == "int8", data.eval
        calib = data.train if int8 else None
        start_job(KIND, f"ONNX {fmt}", lambda j: run_export(j, variant, eval_set, int8, calib),
                  "An ONNX export is still running: wait for it or stop it.")
    result(book)
    upload(data)
