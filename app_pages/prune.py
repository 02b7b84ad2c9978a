"""The Prune page. A move of its controls reruns only the manual panel (a fragment: controls, figures,
charts, curves, Keep it), never the app's navigation, the sidebar or the sensitivity section; the layer
picker reruns only the layer's histogram and mask (a fragment inside it)."""
import streamlit as st

from compression import structured as S
from compression.counts import count_macs, count_params
from compression.jobs import pruning_curve, sensitivity_curves, structured_curve
from compression.prune import FIRST_AND_LAST, count_nonzero, layer_sparsity, sparsity
from compression.schedule import agp_curve
from compression.views import histogram, layer_names, layer_weight, mask_matrix, weight_range
from ui import analyses, auto, cached, charts, jobs, lesson, safety, state, workspace
from ui.format import accuracy
from ui.keep import keep_button

METHODS = {"magnitude": "Magnitude |w|", "random": "Random", "gradient": "Gradient |w·∂L/∂w|",
           "structured": "Structured: whole filters"}
CRITERIA = {"l1": "L1 norm of the filter", "bn_scale": "BN scale |γ| (network slimming)",
            "activation": "Mean activation", "random": "Random"}


def controls() -> tuple[str, str | None, str, tuple[str, ...], int]:
    """The method, criterion (structured) or scope and exemptions (unstructured), and the percentage."""
    c1, c2, c3 = st.columns([1.1, 1.1, 2])
    method = c1.radio("Method", list(METHODS), format_func=METHODS.get, key="prune_method")
    criterion = None
    if method == "structured":
        criterion = c2.radio("Which filters go", list(CRITERIA), format_func=CRITERIA.get, key="prune_criterion")
        scope, exempt = "layer", ()
    else:
        scope = c2.radio("Scope", ["global", "layer"], key="prune_scope",
                         format_func={"global": "Global (one threshold)", "layer": "Per layer (same % each)"}.get)
        keep = c2.checkbox("Keep first conv and classifier dense", key="prune_keep")
        exempt = FIRST_AND_LAST if keep else ()
    percent = c3.slider("Pruning ratio (%)", 0, 99, key="prune_ratio",
                        help="Unstructured: the share of weights set to zero. Structured: the share of filters "
                             "(output channels) removed from each layer.")
    lesson.link(c3, "prune", ["prune_method", "prune_scope", "prune_ratio", "prune_criterion", "prune_keep"])
    explain(c3, method == "structured")
    return method, criterion, scope, exempt, percent


def explain(where, structured: bool) -> None:
    with where.expander("What is happening?", expanded=False):
        if structured:
            st.markdown("Filter pruning removes whole output channels. The network really gets smaller: fewer "
                        "channels means fewer multiply-accumulates, and a plain CPU runs it faster. Residual "
                        "connections add channels together, so layers joined by a shortcut lose the same channels.")
            st.latex(r"\text{MACs} = C_\text{out}\cdot C_\text{in}\cdot k^2\cdot H_\text{out} W_\text{out}"
                     r"\qquad s_c = \lVert W_c \rVert_1 \;\text{or}\; |\gamma_c|")
        else:
            st.markdown("Each weight gets a score; the lowest-scoring fraction is set to zero and held there by a "
                        "mask. Small weights change the output least, so magnitude pruning keeps accuracy far "
                        "longer than random pruning. The gradient score also asks how much the loss cares.")
            st.latex(r"s_\text{magnitude} = |w| \qquad s_\text{gradient} = \left|\, w \cdot "
                     r"\frac{\partial L}{\partial w} \right| \qquad \text{prune } w \text{ if } s < s_{(k)},"
                     r"\; k = \lfloor r \cdot N \rceil")


def allowed_ratio(model, ratio: float) -> float:
    """Structured pruning must leave every layer a channel: above the limit, say so and show the limit."""
    limit = S.largest_ratio(model)
    if ratio <= limit:
        return ratio
    st.info(f"Structured pruning can remove at most {100 * limit:.0f} % of the filters here: every layer "
            f"must keep at least one channel. Showing {int(100 * limit)} %.")
    return int(100 * limit) / 100


def headline(model, pruned, acc: float, before_acc: float, structured: bool, exempt) -> None:
    m = st.columns(4)
    m[0].metric("Eval accuracy", accuracy(acc), f"{100 * (acc - before_acc):+.1f} pt", delta_color="normal")
    if structured:
        p0, p1 = count_params(model)[0], count_params(pruned)[0]
        mac0, mac1 = count_macs(model)[0], count_macs(pruned)[0]
        m[1].metric("Parameters", f"{p1:,}", f"{100 * (p1 / p0 - 1):+.0f} %", delta_color="inverse")
        m[2].metric("MACs / image", f"{mac1 / 1e6:.1f} M", f"{100 * (mac1 / mac0 - 1):+.0f} %", delta_color="inverse")
        m[3].metric("Channels kept", f"{sum(S.channel_counts(pruned).values()):,}",
                    f"of {sum(S.channel_counts(model).values()):,}", delta_color="off", delta_arrow="off")
    else:
        m[1].metric("Sparsity (prunable layers)", f"{100 * sparsity(pruned, exempt):.1f} %")
        m[2].metric("Nonzero weights", f"{count_nonzero(pruned):,}")
        m[3].metric("Accuracy before", accuracy(before_acc))


def per_layer_chart(model, pruned, structured: bool):
    if structured:
        before_c, after_c = S.channel_counts(model), S.channel_counts(pruned)
        return charts.bars(list(before_c), [after_c.get(n, 0) for n in before_c], "Channels per layer",
                           "output channels", reference=list(before_c.values()))
    names, sp_after = layer_names(model), layer_sparsity(pruned)
    return charts.bars(names, [100 * sp_after[n] for n in names], "Sparsity per layer", "sparsity (%)",
                       y_range=[0, 100])


def histogram_chart(model, pruned, layer: str):
    lo_hi = weight_range(model, layer)
    h_before = histogram(layer_weight(model, layer), value_range=lo_hi)
    h_after = histogram(layer_weight(pruned, layer), value_range=lo_hi, drop_zeros=True)
    return charts.histogram_before_after(h_before, h_after, f"Weights of {layer}",
                                         after_name=f"after (nonzero; {h_after.zeros:,} zeros)")


def layers(model, pruned, structured: bool, criterion: str | None, fraction: float, calib, move: tuple) -> None:
    """Per-layer chart, then one layer's histogram and which of its weights or filters go (each chart
    built once per server for `move`, the variant and its settings)."""
    left, right = st.columns(2)
    with left:
        st.plotly_chart(cached.figure((move, "layers"), lambda: per_layer_chart(model, pruned, structured)),
                        key="prune_layers")
    one_layer(model, pruned, criterion, fraction, calib, move, right, st.container())


@safety.fragment(where="The layer view")
def one_layer(model, pruned, criterion: str | None, fraction: float, calib, move: tuple, top, below) -> None:
    """The layer picker reruns only this: the picked layer's histogram (in `top`) and mask or filter
    scores (in `below`)."""
    names = layer_names(model)
    with top:
        layer = st.selectbox("Layer to inspect", names, index=min(len(names) - 1, 4), key="prune_layer")
        st.plotly_chart(cached.figure((move, "histogram", layer), lambda: histogram_chart(model, pruned, layer)),
                        key="prune_hist")
    with below:
        which_go(model, pruned, layer, criterion, fraction, calib, move)


def scores_chart(model, layer: str, criterion: str, ratio: float, calib):
    scores = S.filter_scores(model, criterion, calib)
    if layer not in scores:
        return None
    removed = set(S.filters_to_remove(model, ratio, criterion, calib).get(layer, []))
    s = scores[layer].tolist()
    colors = [charts.AFTER if i in removed else charts.BEFORE for i in range(len(s))]
    return charts.bars(list(range(len(s))), s, f"Filter scores of {layer} (orange = removed)", "score",
                       x="filter", color=colors)


def which_go(model, pruned, layer: str, criterion: str | None, ratio: float, calib, move: tuple) -> None:
    """Structured: the layer's filter scores, removed ones in orange. Unstructured: the layer's mask."""
    if criterion is not None:
        fig = cached.figure((move, "scores", layer), lambda: scores_chart(model, layer, criterion, ratio, calib))
        if fig is not None:
            st.plotly_chart(fig, key="prune_scores")
    elif layer_weight(model, layer).dim() == 4:
        st.plotly_chart(cached.figure((move, "mask", layer), lambda: charts.heatmap(
            mask_matrix(pruned, layer), f"Mask of {layer}: blue = kept, white = pruned",
            "weight within the filter (input channel × 3 × 3)", "filter (output channel)")), key="prune_mask")


def agp_chart(fraction: float):
    schedule = agp_curve(fraction, 100)
    return charts.curve_with_marker(
        [t for t, _ in schedule], [100 * s for _, s in schedule], None, None,
        f"Gradual pruning (AGP) to {100 * fraction:.0f} %", "training progress (% of steps)", "sparsity (%)",
        name="AGP schedule", x_is_percent=True)


def curves(variant, data, calib, method: str, criterion: str | None, scope: str, exempt, fraction: float,
           acc: float) -> None:
    """Accuracy against the pruning ratio (computed once in the background) and the AGP schedule."""
    st.subheader("How far can we go?")
    store = analyses.results()
    model, structured = variant.model, criterion is not None
    key = (variant.id, method, criterion if structured else scope, exempt)
    c1, c2 = st.columns(2)
    with c1:
        if key in store:
            pts = store[key]
            st.plotly_chart(cached.figure((key, fraction, "curve"), lambda: charts.curve_with_marker(
                [100 * a for a, _ in pts], [100 * b for _, b in pts], 100 * fraction, 100 * acc,
                "Accuracy against pruning ratio (no fine-tuning)", "pruning ratio", "eval accuracy (%)",
                name=METHODS[method])), key="prune_curve")
        else:
            analyses.start(key, f"curve {method}", lambda j: (
                structured_curve(model, data.eval, criterion, j.report, j.should_stop, calib) if structured else
                pruning_curve(model, data.eval, method, scope, exempt, j.report, j.should_stop,
                              data=calib if method == "gradient" else None)))
            st.info("Computing the accuracy-against-ratio curve in the background…")
    with c2:
        st.plotly_chart(cached.figure(("agp", fraction), lambda: agp_chart(fraction)), key="prune_agp")
        st.latex(r"s_t = s_f + (s_i - s_f)\left(1 - \tfrac{t}{n}\right)^3")


def sensitivity(variant, data) -> None:
    store, skey = analyses.results(), ("sensitivity", variant.id)
    if skey in store:
        fig = charts.curve_with_marker([], [], None, None, "Sensitivity: prune one layer alone",
                                       "sparsity of that layer", "eval accuracy (%)",
                                       extra={n: ([100 * a for a, _ in pts], [100 * b for _, b in pts])
                                              for n, pts in store[skey].items()})
        st.plotly_chart(fig, key="prune_sensitivity")
        return
    task = analyses.task(skey)
    if task is not None and task.active:
        sensitivity_progress(skey)
    elif st.button("Compute per-layer sensitivity (about a minute)", icon=":material/monitoring:"):
        model = variant.model
        analyses.start(skey, "sensitivity", lambda t: sensitivity_curves(model, data.eval, t.report,
                                                                         t.should_stop))
        st.rerun()


@safety.fragment(run_every=jobs.POLL_S, where="The sensitivity")      # drawn only while it computes
def sensitivity_progress(skey) -> None:
    task = analyses.task(skey)
    if task is None or not task.active:
        st.rerun(scope="app")       # done: the page draws the curves; the browser drops this timer
    last = task.latest() or {}
    st.progress(last.get("done", 0) / max(1, last.get("total", 1)), text="Per-layer sensitivity…")


@jobs.live
def finetune_progress():
    jobs.training_status("prune_ft", "Fine-tuning", "Recovery during fine-tuning", "ft_curve")


def keep_it(variant, pruned, data, technique: str, settings: dict, percent: int) -> None:
    """Keep the pruned model as it is, or fine-tune it in the background first."""
    st.subheader("Keep it")
    k1, k2, k3 = st.columns([1, 1, 2])
    name = f"{variant.name.split(' (')[0]} {technique} {percent}%"
    keep_button(k1, pruned, technique, settings, variant, name, data)
    epochs = k2.number_input("Fine-tune epochs", 1, 50, 1, key="prune_ft_epochs")
    if k2.button(f"Fine-tune {epochs} epoch(s)", icon=":material/tune:"):
        jobs.start("prune_ft", f"Fine-tune {technique} {percent}%", "finetune", {
            "data": data.spec(), "technique": technique, "settings": settings, "epochs": int(epochs),
            "name": f"{name} + FT{epochs}"}, inputs={"parent": variant.id, "model": "pruned"})
    with k3:
        finetune_progress()


@safety.fragment(where="The pruning panel")
def manual(variant, data, top, bottom) -> None:
    """Everything the controls change: the controls (in `top`), figures, charts and curves, then Keep it
    (in `bottom`). A move reruns only this."""
    calib = data.train.subset(slice(0, 512), "calibration batches")
    with top:
        method, criterion, scope, exempt, percent = controls()
        model, structured = variant.model, criterion is not None
        before_acc = cached.accuracy(variant.id, model, data.eval)
        if structured:     # `ratio`: the fraction of each layer's filters removed
            ratio = allowed_ratio(model, percent / 100)
            fraction, technique, settings = ratio, "filter-pruned", {"criterion": criterion, "ratio": ratio}
        else:              # `amount`: the fraction of the prunable weights set to zero
            amount = percent / 100
            fraction, technique = amount, "pruned"
            settings = {"method": method, "scope": scope, "amount": amount,
                        "exempt": "first+last" if exempt else "none"}
        pruned, acc = cached.pruned(variant.id, technique, settings, model, data.eval, calib)
        headline(model, pruned, acc, before_acc, structured, exempt)
        move = (variant.id, technique, tuple(sorted(settings.items())))     # what every chart below depends on
        layers(model, pruned, structured, criterion, fraction, calib, move)
        curves(variant, data, calib, method, criterion, scope, exempt, fraction, acc)
    with bottom:
        keep_it(variant, pruned, data, technique, settings, percent)


def prune_page() -> None:
    st.title("Prune")
    variant = workspace.require_current()
    lesson.restore("prune", {"prune_method": "magnitude", "prune_scope": "global", "prune_ratio": 50,
                             "prune_criterion": "l1", "prune_keep": False},
                   choices={"prune_method": list(METHODS), "prune_scope": ["global", "layer"],
                            "prune_criterion": list(CRITERIA)}, bounds={"prune_ratio": (0, 99)})
    data = state.data_in_use()
    if auto.mode("prune") == "Auto":       # outside the fragment: the switch redraws the whole page
        return auto.prune_mode(variant, data)
    top, middle, bottom = st.container(), st.container(), st.container()
    manual(variant, data, top, bottom)
    with middle:                           # depends on the model in hand only: not rerun by a move
        sensitivity(variant, data)


prune_page()
