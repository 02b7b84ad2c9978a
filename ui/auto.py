"""The "Auto" mode of the Prune and Quantize pages: the student sets a budget and the tool chooses each
layer's sparsity (or bit width) from the layers' measured sensitivity, in a background job
(compression/jobs.py: auto_prune_variants, auto_quantize_variants). The page then shows the chosen
per-layer allocation as bars beside the uniform one, and both models' accuracies against the allowed
drop; both models join the variants, like any job's result. A page adds the block with one call:
`auto.prune_block(variant, data)` or `auto.quantize_block(variant, data)`."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from compression.auto_prune import AutoPruneConfig
from compression.auto_quant import AutoQuantConfig
from compression.jobs import auto_prune_variants, auto_quantize_variants

from . import charts, safety, state
from .format import accuracy, kib, plain
from .jobs import job_status, start_job

CALIB_IMAGES = 256      # training images the sensitivity is measured on (never the eval subset)


def calibration(data: state.DataInUse):
    """The last CALIB_IMAGES training images, as `python -m compression … --auto` takes them."""
    train = data.train
    return train.subset(slice(max(0, len(train) - CALIB_IMAGES), len(train)), "calibration")


def run_auto(job, make, *args) -> list:
    """Run jobs.auto_*_variants(*args, report, stop) in the worker: its per-layer progress becomes the
    progress bar's steps, the allocation's rows an "allocation" event the page draws; returns the variants."""
    def report(done=None, total=None, **fields):
        if done is not None:
            fields.update(step=done, total_steps=total, message=f"Sensitivity: layer {done} of {total}")
        job.report(**fields)

    variants, allocation = make(*args, report, job.should_stop)
    job.report(phase="allocation", rows=allocation.rows(), rule=allocation.rule)
    return variants


def allocation_chart(rows: list[dict], y: str, title: str, percent: bool) -> go.Figure:
    """Auto (orange) beside uniform (blue), one pair of bars per layer."""
    scale = 100 if percent else 1
    names = [r["layer"] for r in rows]
    fig = go.Figure()
    if any(r["uniform"] is not None for r in rows):
        fig.add_bar(x=names, y=[None if r["uniform"] is None else scale * r["uniform"] for r in rows],
                    name="uniform", marker_color=charts.BEFORE)
    fig.add_bar(x=names, y=[scale * r["auto"] for r in rows], name="auto", marker_color=charts.AFTER)
    fig.update_layout(barmode="group", xaxis_tickangle=-45)
    return charts.style(fig, title, "layer", y)


def outcome(kind: str, parent, drop: float, y: str, title: str, percent: bool) -> None:
    """The finished job: the accuracies against the allowed drop, then the allocation's bars."""
    job, events = job_status(kind, what="The automatic allocation",
                             done=lambda j: "The result joined the variants (see Compare & Download).")
    chosen = next((e for e in reversed(events) if e.get("phase") == "allocation"), None)
    if job is None or chosen is None or not isinstance(job.result, list):
        return
    before = parent.metrics.eval_accuracy or 0.0
    for col, v in zip(st.columns(len(job.result)), job.result):
        acc = v.metrics.eval_accuracy or 0.0
        col.metric(plain(v.name), accuracy(acc), f"{100 * (acc - before):+.1f} points", border=True)
        col.caption(f"packed {kib(v.metrics.bytes_packed)}; "
                    + ("within" if 100 * (before - acc) <= drop else "beyond") + f" the allowed {drop:g}-point drop")
    st.caption(f"Rule kept: {plain(chosen['rule'])} (of the candidates, the least loss on the calibration images).")
    st.plotly_chart(allocation_chart(chosen["rows"], y, title, percent), key=f"{kind}_bars")


@safety.fragment(run_every=1.0)
def prune_outcome(parent, drop: float) -> None:
    outcome("prune_auto", parent, drop, "sparsity (%)", "Per-layer sparsity: auto beside uniform", True)


@safety.fragment(run_every=1.0)
def quantize_outcome(parent, drop: float) -> None:
    outcome("quantize_auto", parent, drop, "bits", "Bit width per layer: auto beside uniform", False)


def allowed_drop(where, key: str) -> float:
    return where.number_input("Allowed accuracy drop (points)", 0.0, 90.0, 2.0, 0.5, key=key,
                              help="Shown against both results: the tool minimises the predicted loss; this says "
                                   "whether the result is good enough for you.")


def prune_block(variant, data: state.DataInUse) -> None:
    """Prune page: per-layer sparsities to an overall sparsity (met exactly) or a packed size."""
    with st.expander("Auto: let the tool choose each layer's sparsity", icon=":material/auto_awesome:"):
        c1, c2, c3 = st.columns(3)
        by = c1.radio("Budget", ["sparsity", "size"], key="auto_prune_by", format_func={
            "sparsity": "Overall sparsity", "size": "Packed size (KiB)"}.get)
        if by == "sparsity":
            target = c2.slider("Overall sparsity (%)", 10, 95, 70, key="auto_prune_target") / 100
            config = dict(target_sparsity=target)
        else:
            default = max(4.0, round(0.4 * (variant.metrics.bytes_packed or 300_000) / 1024))
            size = c2.number_input("Packed size (KiB)", 4.0, 4096.0, float(default), 10.0, key="auto_prune_kib")
            config = dict(target_bytes=round(size * 1024))
        drop = allowed_drop(c3, "auto_prune_drop")
        st.caption(f"Each layer is pruned alone at 13 sparsities on {CALIB_IMAGES} training images; the greedy "
                   "rule then removes next the weights that cost the least predicted loss per weight.")
        if st.button("Choose per-layer sparsities", icon=":material/auto_awesome:", key="auto_prune_go"):
            cfg, calib, eval_set = AutoPruneConfig(calib_images=CALIB_IMAGES, **config), calibration(data), data.eval
            start_job("prune_auto", "Auto pruning", lambda j: run_auto(j, auto_prune_variants, variant, cfg, calib,
                                                                       eval_set),
                      "The automatic allocation is still running: wait for it or stop it.")
        prune_outcome(variant, drop)


def quantize_block(variant, data: state.DataInUse) -> None:
    """Quantize page: a bit width from 2 to 8 per layer so that the packed file fits a size."""
    with st.expander("Auto: let the tool choose each layer's bit width", icon=":material/auto_awesome:"):
        c1, c2, c3 = st.columns(3)
        default = max(4.0, round((variant.metrics.bytes_fp32 or 1_100_000) / 8 / 1024))   # about 4 bits a weight
        size = c1.number_input("Packed size (KiB)", 1.0, 4096.0, float(default), 5.0, key="auto_quant_kib")
        criterion = c2.radio("Sensitivity", ["loss", "sqnr"], key="auto_quant_criterion", format_func={
            "loss": "Loss on training images", "sqnr": "Weight SQNR (no data)"}.get)
        drop = allowed_drop(c3, "auto_quant_drop")
        if st.button("Choose per-layer bit widths", icon=":material/auto_awesome:", key="auto_quant_go"):
            cfg = AutoQuantConfig(round(size * 1024), criterion=criterion, calib_images=CALIB_IMAGES)
            calib, eval_set = calibration(data), data.eval
            start_job("quantize_auto", "Auto mixed precision", lambda j: run_auto(
                j, auto_quantize_variants, variant, cfg, calib, eval_set),
                "The automatic allocation is still running: wait for it or stop it.")
        quantize_outcome(variant, drop)
