"""The Weight sharing page. A move of the clusters slider reruns only the panel below the introduction (a
fragment), never the app's navigation, the sidebar or the introduction."""
import streamlit as st

from compression.packed_sizes import packed_summary
from compression.share import K_CHOICES as CLUSTERS, codebooks
from compression.views import histogram, layer_names, layer_weight, weight_range
from ui import cached, charts, jobs, lesson, safety, state, workspace
from ui.format import accuracy, kib, ratio
from ui.keep import keep_button


def intro() -> None:
    st.title("Weight sharing")
    st.markdown(
        "Instead of storing every weight, let the weights of a layer **share** a few values. k-means groups each "
        "layer's weights into k clusters and replaces every weight by its cluster's centre; the file then keeps "
        "k numbers (the codebook) and, per weight, a log₂ k-bit index. Zeros from pruning stay zeros. "
        "Fine-tuning the centres afterwards recovers most of what rounding lost.")
    st.latex(r"\min_{c_1,\dots,c_k}\; \sum_{i=1}^{k} \sum_{w \in C_i} \left| w - c_i \right|^2"
             r"\qquad \text{bits per weight} \approx \log_2 k")


def headline(variant, shared, k: int, acc: float, before_acc: float) -> list[dict]:
    """Accuracy, bits per weight and packed size; returns the per-layer rows of the packed file."""
    breakdown = cached.shared_breakdown(variant.id, k, shared)
    summary = packed_summary(breakdown)
    total = summary["total_bytes"]
    m = st.columns(4)
    m[0].metric("Eval accuracy", accuracy(acc), f"{100 * (acc - before_acc):+.1f} pt")
    m[1].metric("Bits per nonzero weight", f"{summary['bits_per_nonzero']:.2f}",
                help="index + position + codebook, Huffman-coded, averaged over all conv/linear weights")
    m[2].metric("Packed size", kib(total), f"was {kib(variant.metrics.bytes_packed)}", delta_color="off",
                delta_arrow="off")
    m[3].metric("Compression ratio vs dense fp32", ratio(variant.metrics.reference_bytes / max(1, total)))
    return [r for r in breakdown if r["params"]]


def histogram_chart(model, shared, layer: str):
    lo_hi = weight_range(model, layer)
    centroids, _ = codebooks(shared)[layer]
    return charts.histogram_before_after(
        histogram(layer_weight(model, layer), value_range=lo_hi, drop_zeros=True),
        histogram(layer_weight(shared, layer), value_range=lo_hi, drop_zeros=True, bins=160),
        f"Weights of {layer}: {len(centroids)} shared values", after_name="after sharing (nonzero)",
        levels=centroids.tolist(), level_name="centroids")


def layers(variant, shared, k: int, weights: list[dict]) -> None:
    """One layer's weights before and after, with its centroids; bits per weight of every layer (each
    chart built once per server for the variant, k and the layer)."""
    names = layer_names(shared)
    left, right = st.columns([3, 2])
    with left:
        layer = st.selectbox("Layer", names, index=min(4, len(names) - 1), key="share_layer")
        st.plotly_chart(cached.figure((variant.id, "shared", k, "histogram", layer),
                                      lambda: histogram_chart(variant.model, shared, layer)), key="share_hist")
    with right:
        st.plotly_chart(cached.figure((variant.id, "shared", k, "bits"), lambda: charts.bars(
            [r["name"] for r in weights], [r["bits_per_nonzero"] for r in weights],
            "Bits per nonzero weight, per layer", "bits")), key="share_bits")


@jobs.live
def progress():
    jobs.training_status("share_ft", "Fine-tuning", "Centroid fine-tuning", "share_curve")


def keep_it(variant, shared, data, k: int) -> None:
    """Keep the shared model, or fine-tune its centroids in the background first."""
    k1, k2, k3 = st.columns([1, 1, 2])
    keep_button(k1, shared, "shared", {"clusters": k}, variant, f"{variant.name.split(' (')[0]} k={k}", data)
    epochs = k2.number_input("Centroid fine-tune epochs", 1, 20, 1, key="share_epochs")
    if k2.button("Fine-tune the centroids", icon=":material/tune:"):
        jobs.start("share_ft", f"Fine-tune centroids (k={k})", "centroids", {
            "data": data.spec(), "clusters": k, "epochs": int(epochs)}, inputs={"parent": variant.id})
    with k3:
        progress()


def share_page() -> None:
    intro()
    variant = workspace.require_current()
    lesson.restore("share", {"share_k": 16}, choices={"share_k": CLUSTERS})
    panel(variant, state.data_in_use())


@safety.fragment(where="The weight-sharing panel")
def panel(variant, data) -> None:
    """Everything the slider changes; a move reruns only this."""
    c1, c2 = st.columns([2, 1])
    k = c1.select_slider("Clusters per layer (k)", CLUSTERS, key="share_k",
                         help="Powers of two: k clusters need log₂ k bits per index.")
    lesson.link(c2, "share", ["share_k"])
    shared, acc = cached.shared(variant.id, k, variant.model, data.eval)
    before_acc = cached.accuracy(variant.id, variant.model, data.eval)
    weights = headline(variant, shared, k, acc, before_acc)
    layers(variant, shared, k, weights)
    keep_it(variant, shared, data, k)


share_page()
