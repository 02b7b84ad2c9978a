"""The "Auto" mode of the Prune and Quantize pages: the student sets a budget, the tool chooses each layer's
sparsity (compression/auto_prune.py) or bit width (compression/auto_quant.py) from each layer's measured
sensitivity, and the page shows the chosen allocation beside the uniform one at the same budget, with
both models' accuracy on the eval subset.

Measuring the sensitivity takes tens of seconds, so it is a job of the job engine (tasks "auto_prune" and
"auto_quant", ui/jobs.py). The job makes two variants, auto and uniform, which join the workspace like
any other (parent: the model in hand); the allocation travels in the auto variant's history
(compression.jobs.allocation_record), so this page draws it again after the job ends and after a reload.
"""
from __future__ import annotations

import streamlit as st
from torch import nn

from compression.auto_prune import DEFAULT_LEVELS, packed_size
from compression.prune import METHODS
from compression.quantize import quantize_weights
from compression.store_jobs import DONE

from . import cached, charts, jobs, state
from .format import accuracy, kib, plain

MODES = ["Manual", "Auto"]
CALIB = [64, 128, 256, 512, 1024]
CRITERIA = {"loss": "Calibration loss (measured on training images)", "sqnr": "Rounding noise (data-free, cruder)"}


def mode(page: str) -> str:
    """The Manual | Auto switch at the top of a page's controls (kept across page visits)."""
    key = f"mode_{page}"     # not "{page}_mode": the Quantize page has a "quantize_mode" (its grid)
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(f"_keep_{key}", MODES[0])
    choice = st.radio("Mode", MODES, key=key, horizontal=True,
                      help="Manual: one setting for every layer, redrawn as you move it. Auto: you set the budget, "
                           "the tool measures each layer's sensitivity and chooses a setting per layer.")
    st.session_state[f"_keep_{key}"] = choice
    return choice


# --- Prune ------------------------------------------------------------------------------------------------

def prune_mode(variant, data: state.DataInUse) -> None:
    """Auto mode of the Prune page: target sparsity in, per-layer sparsities out."""
    c1, c2 = st.columns([2, 1])
    percent = c1.slider("Target sparsity (%)", 10, int(100 * max(DEFAULT_LEVELS)), 70, key="auto_prune_target",
                        help="The share of the prunable weights set to zero, met exactly; each layer gets its own.")
    c1.caption("Allowed accuracy drop: not a setting. The tool meets the sparsity exactly and picks the allocation "
               "with the least loss on calibration images; the drop it costs is measured below.")
    method = c2.radio("Ranking inside a layer", [m for m in METHODS if m != "random"], key="auto_prune_method")
    keep = c2.checkbox("Keep first conv and classifier dense", key="auto_prune_keep")
    calib = c2.select_slider("Calibration images", CALIB, 256, key="auto_prune_calib",
                             help="Training images (never the eval subset) on which each layer's sensitivity is measured.")
    explain_prune(c1)
    if c1.button("Find per-layer sparsities", icon=":material/auto_awesome:", type="primary"):
        jobs.start("auto_prune", f"Auto prune to {percent}%", "auto_prune", {
            "data": data.spec(), "target_sparsity": percent / 100, "method": method, "keep_first_last": keep,
            "calib_images": calib}, inputs={"parent": variant.id})
    prune_progress()
    result("auto_prune")


def explain_prune(where) -> None:
    with where.expander("How does the tool choose?", expanded=False):
        st.markdown("Each layer is pruned **alone** to 0 %, 10 %, … 98 % and the loss on calibration images is "
                    "measured. Then the next weights to remove always come from the layer where removing them "
                    "costs the least loss per weight, until the target is met exactly. A few candidates (this one, "
                    "uniform, global magnitude and blends) are measured together and the best is kept, so it is "
                    "never worse than uniform on those images.")
        st.latex(r"\min_{s_1..s_L} \sum_l \Delta L_l(s_l) \quad\text{s.t.}\quad \sum_l s_l n_l = t \sum_l n_l")


@jobs.live
def prune_progress():
    jobs.status("auto_prune", what="The automatic allocation", done=made_message)


# --- Quantize ---------------------------------------------------------------------------------------------

@st.cache_resource(max_entries=16, show_spinner="Measuring packed sizes…")
def uniform_sizes(variant_id: str, _model: nn.Module) -> dict[int, int]:
    """Exact packed bytes of the model with every layer at 2, 4 and 8 bits: the budget's range and default."""
    return {b: packed_size(quantize_weights(_model, b)) for b in (2, 4, 8)}


def quantize_mode(variant, data: state.DataInUse) -> None:
    """Auto mode of the Quantize page: a packed-size budget in, per-layer bit widths out."""
    sizes = uniform_sizes(variant.id, variant.model)
    key = "auto_quant_budget"
    if st.session_state.get(f"_{key}_for") != variant.id:       # a new model in hand: start at its 4-bit size
        st.session_state[key] = round(sizes[4] / 1024, 1)
        st.session_state[f"_{key}_for"] = variant.id
    c1, c2 = st.columns([2, 1])
    budget = c1.number_input("Budget: packed size (KiB)", 1.0, 100_000.0, step=5.0, format="%.1f", key=key,
                             help="The packed file (.cmpk) must fit in this; each layer gets 2 to 8 bits.")
    c1.caption(f"Every layer at 8 bits: {kib(sizes[8])} · at 4 bits: {kib(sizes[4])} · at 2 bits: {kib(sizes[2])}. "
               "Allowed accuracy drop: not a setting. The tool picks the widths with the least predicted loss "
               "that fit; the drop it costs is measured below.")
    criterion = c2.radio("Sensitivity measured by", list(CRITERIA), format_func=CRITERIA.get, key="auto_quant_criterion")
    calib = c2.select_slider("Calibration images", CALIB, 256, key="auto_quant_calib",
                             disabled=criterion != "loss")
    explain_quantize(c1)
    budget_bytes = int(budget * 1024)
    if budget_bytes < sizes[2]:
        c1.error(f"{budget:.1f} KiB is below what 2 bits in every layer take ({kib(sizes[2])}): allow more.")
    elif c1.button("Find per-layer bit widths", icon=":material/auto_awesome:", type="primary"):
        jobs.start("auto_quant", f"Auto quantize to {budget:.0f} KiB", "auto_quant", {
            "data": data.spec(), "budget_bytes": budget_bytes, "criterion": criterion, "calib_images": calib},
            inputs={"parent": variant.id})
    quantize_progress()
    result("auto_quant")


def explain_quantize(where) -> None:
    with where.expander("How does the tool choose?", expanded=False):
        st.markdown("Each layer is rounded **alone** to 8, 7, … 2 bits; its loss increase and its exact packed "
                    "bytes are measured. Then the layer that loses the least per byte saved is narrowed next, until "
                    "the file fits. The widest uniform width that fits is the comparison; if it is predicted "
                    "better, the tool returns it instead.")
        st.latex(r"\min_{b_1..b_L} \sum_l \Delta L_l(b_l) \quad\text{s.t.}\quad \text{packed bytes}(b) \le B")


@jobs.live
def quantize_progress():
    jobs.status("auto_quant", what="The automatic allocation", done=made_message)


# --- the result ---------------------------------------------------------------------------------------------

def made_message(made) -> str:
    return "Made " + " and ".join(f"“{plain(v.name)}” ({accuracy(v.metrics.eval_accuracy)})" for v in made) + \
        ". They joined the variants."


def latest_allocation(kind: str):
    """(auto variant's record, its allocation) of the workspace's newest finished `kind` job, or None."""
    record = jobs.latest(kind)
    if record is None or record.status != DONE:
        return None
    for made in jobs.results(record):
        for entry in made.history:
            if isinstance(entry, dict) and "allocation" in entry:
                return made, entry
    return None


def result(kind: str) -> None:
    """The allocation of the newest finished job: accuracies and per-layer bars, auto beside uniform."""
    found = latest_allocation(kind)
    if found is None:
        return
    made, alloc = found
    acc, rows = alloc["accuracy"], alloc["layers"]
    sparsity = alloc["allocation"] == "sparsity"
    st.subheader("What the tool chose")
    m = st.columns(4)
    m[0].metric("Auto: eval accuracy", accuracy(acc["auto"]),
                None if acc["uniform"] is None else f"{100 * (acc['auto'] - acc['uniform']):+.1f} pt vs uniform")
    m[1].metric("Uniform: eval accuracy", accuracy(acc["uniform"]),
                help="Every layer at the same setting, at the same budget")
    m[2].metric("Accuracy drop (auto)", f"{100 * (acc['parent'] - acc['auto']):.1f} pt",
                help=f"from {accuracy(acc['parent'])} before, on {alloc['images']:,} eval images")
    if sparsity:
        m[3].metric("Sparsity (auto)", f"{100 * alloc['sparsity']:.2f} %", help=plain(alloc["target"]))
        values = ([100 * r["auto"] for r in rows], [100 * r["uniform"] for r in rows])
        title, y, y_range = "Sparsity per layer: auto against uniform", "sparsity (%)", [0, 100]
    else:
        m[3].metric("Packed size (auto)", kib(alloc["packed_bytes"]), f"budget {kib(alloc['budget_bytes'])}",
                    delta_color="off", delta_arrow="off")
        uniform = None if alloc["uniform_bits"] is None else [r["uniform"] for r in rows]
        values = ([r["auto"] for r in rows], uniform)
        title, y, y_range = "Bits per layer: auto against uniform", "weight bits", [0, 8.5]
    names = [r["layer"] for r in rows]
    st.plotly_chart(cached.figure(("allocation", made.id), lambda: charts.allocation(names, *values, title, y, y_range)),
                    key=f"{kind}_allocation")
    detail = (f"mean {alloc['mean_bits']:.2f} bits per weight; uniform: {alloc['uniform_bits'] or '—'} bits"
              if not sparsity else plain(alloc["target"]))
    measured = ("from rounding noise (data-free)" if alloc.get("criterion") == "sqnr"
                else f"on {alloc['calib_images']} training images")
    st.caption(f"“{plain(made.name)}” — {detail}; rule: {plain(alloc['rule'])}; sensitivity measured {measured}. "
               "Both models are in your variants (Compare & Download).")

