"""The Quantize page. A move of its controls reruns only the manual panel (a fragment: controls, figures,
charts, the bits curve, Keep it), never the app's navigation, the sidebar or the page's introduction."""
from dataclasses import dataclass

import streamlit as st

from compression.activations import CALIBRATION_METHODS
from compression.jobs import bits_curve
from compression.quantize import FLOAT_FORMATS, quant_grid
from compression.views import (distinct_per_channel, distinct_values, histogram, layer_names, layer_weight,
                               weight_range)
from ui import analyses, auto, cached, charts, jobs, lesson, safety, state, workspace
from ui.format import accuracy, plain
from ui.keep import keep_button

BITS = [1, 2, 3, 4, 5, 6, 7, 8, "bf16", "fp16"]


@dataclass
class Choice:
    """What the controls say."""
    bits: int | str               # 1…8, or "bf16" / "fp16"
    mode: str                     # "symmetric" or "asymmetric"
    granularity: str              # "per-channel" or "per-tensor"
    a_bits: int | None            # activation bits (16 for a float format), None: weights only
    method: str                   # range calibration of the activations

    @property
    def is_float(self) -> bool:
        return self.bits in FLOAT_FORMATS

    @property
    def symmetric(self) -> bool:
        return self.mode == "symmetric"

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per-channel"

    def settings(self) -> tuple:
        """What the quantized model depends on (with the variant's id: the key of its cached results)."""
        return self.bits, self.symmetric, self.per_channel, self.a_bits, self.method


def intro() -> None:
    st.title("Quantize")
    st.markdown(
        "A trained weight is stored with 32 bits, but the network rarely needs that precision. **Quantization** "
        "rounds every weight onto a grid of 2ᵇ levels, so each one needs only b bits. The step s sets how fine the "
        "grid is; the zero point z lets the grid sit where the values are. Per channel, every filter gets its own "
        "grid, which fits layers whose filters have very different ranges. Activations (the numbers flowing "
        "between layers) can be rounded too, with ranges measured on a few calibration images.")
    st.latex(r"q = \operatorname{clamp}\!\left(\operatorname{round}\!\left(\frac{w}{s}\right) + z,\; q_\text{min},\;"
             r" q_\text{max}\right) \qquad \hat w = (q - z)\, s \qquad s = \frac{\max|w|}{2^{b-1}-1}"
             r"\;\text{(symmetric)}")


def controls() -> Choice:
    c1, c2, c3 = st.columns([2, 1, 1])
    bits = c1.select_slider("Weight bits", BITS, key="quantize_bits",
                            help="1–8 bits of uniform quantization, or the 16-bit floats bf16 / fp16.")
    is_float = bits in FLOAT_FORMATS
    mode = c2.radio("Grid", ["symmetric", "asymmetric"], key="quantize_mode", disabled=is_float,
                    help="Symmetric: z = 0, levels mirrored around 0. Asymmetric: the grid spans min..max.")
    gran = c2.radio("Scale per", ["per-channel", "per-tensor"], key="quantize_granularity", disabled=is_float)
    what = c3.radio("Quantize", ["weights", "weights + activations"], key="quantize_what")
    a_bits = None
    if what == "weights + activations":
        if is_float:
            a_bits = 16
            c3.caption(f"Activations rounded through {bits} too.")
        else:
            a_bits = c3.slider("Activation bits", 2, 8, key="quantize_abits")
            c3.selectbox("Range calibration", CALIBRATION_METHODS, key="quantize_calib",
                         help="minmax: all values seen; percentile: clip the rarest extremes; mse: the clipping "
                              "with the least rounding error.")
    lesson.link(c1, "quantize", ["quantize_bits", "quantize_mode", "quantize_granularity", "quantize_what",
                                 "quantize_abits", "quantize_calib"])
    return Choice(bits, mode, gran, a_bits, st.session_state.get("quantize_calib", "minmax"))


def histogram_chart(model, q_model, layer: str, choice: Choice):
    lo_hi = weight_range(model, layer)
    levels = None
    if not choice.is_float:
        levels = quant_grid(layer_weight(model, layer), choice.bits, choice.symmetric, choice.per_channel,
                            channel=0 if choice.per_channel else None).tolist()
    return charts.histogram_before_after(
        histogram(layer_weight(model, layer), value_range=lo_hi),
        histogram(layer_weight(q_model, layer), value_range=lo_hi, bins=200),
        f"Weights of {layer}" + (" (grid of filter 0)" if choice.per_channel and not choice.is_float else ""),
        after_name="quantized", levels=levels, level_name="grid levels")


def errors_chart(errors: dict):
    finite = {n: (e["sqnr_db"] if e["sqnr_db"] != float("inf") else 100.0) for n, e in errors.items()}
    return charts.bars(list(finite), list(finite.values()), "Quantization error per layer",
                       "SQNR (dB, higher is better)")


def inspect(variant, q_model, acc: float, before_acc: float, choice: Choice) -> None:
    """The headline numbers, one layer's histogram with its grid, and the error of every layer (each
    computed and drawn once per server for the variant and the settings)."""
    model = variant.model
    names = layer_names(model)
    errors = cached.quant_errors(variant.id, *choice.settings(), model, q_model)
    move = (variant.id, "quantized", choice.settings())
    left, right = st.columns([3, 2])
    with right:
        layer = st.selectbox("Layer to inspect", names, index=min(4, len(names) - 1), key="quantize_layer")
    bits, is_float = choice.bits, choice.is_float
    m = st.columns(4)
    m[0].metric("Eval accuracy", accuracy(acc), f"{100 * (acc - before_acc):+.1f} pt")
    m[1].metric("Distinct values per filter", f"{distinct_per_channel(q_model, layer):,}",
                help=f"at most 2^b = {2 ** bits if not is_float else 65536:,} in each output channel"
                     + ("" if choice.per_channel or is_float else " (one grid for the whole layer)"))
    m[2].metric("Distinct values in the layer", f"{distinct_values(q_model, layer):,}",
                f"were {distinct_values(model, layer):,}", delta_color="off", delta_arrow="off")
    sqnr = errors[layer]["sqnr_db"]
    m[3].metric("Signal-to-noise of the layer", "∞ dB" if sqnr == float("inf") else f"{sqnr:.1f} dB",
                help="10·log10(Σw² / Σ(w − ŵ)²): about 6 dB more for every extra bit")
    with left:
        st.plotly_chart(cached.figure((move, "histogram", layer),
                                      lambda: histogram_chart(model, q_model, layer, choice)), key="quantize_hist")
    with right:
        st.plotly_chart(cached.figure((move, "errors"), lambda: errors_chart(errors)), key="quantize_errors")


def accuracy_against_bits(variant, data, calib, choice: Choice, acc: float) -> None:
    """Computed once per (model, grid) in the background; marks where the slider is."""
    store = analyses.results()
    key = ("bits", variant.id, choice.symmetric, choice.per_channel, choice.a_bits is not None and not choice.is_float)
    if key in store:
        pts = store[key]
        here = (choice.bits, 100 * acc) if not choice.is_float else (None, None)
        st.plotly_chart(charts.curve_with_marker([b for b, _ in pts], [100 * a for _, a in pts], *here,
                                                 "Accuracy against bits", "bits per weight", "eval accuracy (%)",
                                                 name=f"{choice.mode}, {choice.granularity}"
                                                      + (", activations too" if key[-1] else ""),
                                                 x_is_percent=False), key="quantize_curve")
    else:
        model = variant.model
        analyses.start(key, "bits curve", lambda j: bits_curve(
            model, data.eval, choice.symmetric, choice.per_channel, key[-1], calib, j.report, j.should_stop))
        st.info("Computing the accuracy-against-bits curve in the background…")


@jobs.live
def jobs_progress():
    jobs.training_status("qat", "QAT", "Quantization-aware training", "qat_curve")
    jobs.status("int8", "int8", what="The int8 build", done=lambda made: (
        f"“{plain(made[0].name)}”: {accuracy(made[0].metrics.eval_accuracy)} · "
        f"{made[0].settings['speedup_b256']}× faster than fp32 at batch 256 · "
        f"{made[0].settings['int8_file_bytes'] / 1024:.0f} KiB .pt2. Joined the variants."))


def keep_it(variant, q_model, data, choice: Choice) -> None:
    """Keep the quantized model, train it with the rounding in the loop (QAT), or build real int8."""
    st.subheader("Keep it")
    k1, k2, k3 = st.columns(3)
    bits, a_bits, is_float = choice.bits, choice.a_bits, choice.is_float
    settings = {"bits": bits, "symmetric": choice.symmetric, "per_channel": choice.per_channel, "a_bits": a_bits,
                "calibration": choice.method}
    name = (f"{variant.name.split(' (')[0]} " + (f"{bits}" if is_float else f"w{bits}")
            + (f"a{a_bits}" if a_bits and not is_float else ""))
    keep_button(k1, q_model, "quantized", settings, variant, name, data)
    epochs = k2.number_input("QAT epochs", 1, 20, 1, key="quantize_qat_epochs", disabled=is_float)
    if k2.button(f"QAT {epochs} epoch(s)", icon=":material/tune:", disabled=is_float):
        jobs.start("qat", f"QAT w{bits}", "qat", {
            "data": data.spec(), "bits": bits, "symmetric": choice.symmetric, "per_channel": choice.per_channel,
            "epochs": int(epochs), "a_bits": a_bits}, inputs={"parent": variant.id})
    k3.caption("Real int8 runs integer kernels (oneDNN through torch.compile): a first compile takes a minute.")
    if k3.button("Export real int8", icon=":material/memory:"):
        jobs.start("int8", "Real int8", "int8", {"data": data.spec(test=True)}, inputs={"parent": variant.id})
    jobs_progress()


def quantize_page() -> None:
    intro()
    variant = workspace.require_current()
    lesson.restore("quantize", {"quantize_bits": 8, "quantize_mode": "symmetric",
                                "quantize_granularity": "per-channel", "quantize_what": "weights",
                                "quantize_abits": 8, "quantize_calib": "minmax"},
                   choices={"quantize_bits": BITS, "quantize_mode": ["symmetric", "asymmetric"],
                            "quantize_granularity": ["per-channel", "per-tensor"],
                            "quantize_what": ["weights", "weights + activations"],
                            "quantize_calib": list(CALIBRATION_METHODS)},
                   bounds={"quantize_abits": (2, 8)})
    data = state.data_in_use()
    if auto.mode("quantize") == "Auto":       # outside the fragment: the switch redraws the whole page
        return auto.quantize_mode(variant, data)
    manual(variant, data)


@safety.fragment(where="The quantization panel")
def manual(variant, data) -> None:
    """Everything the controls change; a move reruns only this."""
    calib = data.train.subset(slice(0, 256), "calibration batches")
    choice = controls()
    model = variant.model
    q_model, acc = cached.quantized(variant.id, *choice.settings(), model, data.eval, calib)
    before_acc = cached.accuracy(variant.id, model, data.eval)
    inspect(variant, q_model, acc, before_acc, choice)
    accuracy_against_bits(variant, data, calib, choice, acc)
    keep_it(variant, q_model, data, choice)


quantize_page()
