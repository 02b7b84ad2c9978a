import pandas as pd
import streamlit as st

from compression.counts import layer_table
from compression.train import evaluate
from ui import state, workspace
from ui.format import accuracy, kib, plain


def intro() -> None:
    st.title("Model Compression Playground")
    st.markdown(
        "A trained network holds far more numbers than it needs. **Compression** removes or shrinks them — "
        "pruning sets unimportant weights to zero, quantization stores each weight in fewer bits, distillation "
        "teaches a smaller network to imitate a bigger one, and weight sharing lets many weights use one value. "
        "The prize is a model that is smaller to download, faster on a phone or laptop, and cheaper to run.\n\n"
        "Every technique here is real and runs on a real ResNet trained on CIFAR-10 (32×32 photos of ten kinds "
        "of things). Move a slider and watch what happens to the weights, the size and the accuracy; keep the "
        "variants you like and compare them all on **Compare & Download**.")


def model_in_hand(variant, data) -> None:
    """The headline numbers of the model in hand (the full test set's accuracy on request)."""
    m = variant.metrics
    st.header(f"The model in hand: {plain(variant.name)}")
    st.caption(f"How it was made: {plain(variant.recipe)}")
    c = st.columns(5)
    c[0].metric("Eval subset accuracy", accuracy(m.eval_accuracy), help="1,000 bundled test images, 100 per class")
    c[1].metric("Full test set accuracy", accuracy(m.test_accuracy), help="all 10,000 CIFAR-10 test images")
    c[2].metric("Parameters", f"{m.params:,}", help=f"{m.nonzero_params:,} of them nonzero")
    c[3].metric("Multiply-accumulates / image", f"{m.macs / 1e6:.1f} M",
                help=f"{m.nonzero_macs / 1e6:.1f} M with nonzero weights only")
    c[4].metric("Size", kib(m.bytes_fp32), help=f"fp32 file; packed: {kib(m.bytes_packed)}, gzip: {kib(m.bytes_gzip)}")
    if m.test_accuracy is None:
        if data.full:
            if st.button("Evaluate on the full test set (10,000 images)"):
                with st.spinner("Evaluating on 10,000 images…"):
                    workspace.record_metrics(variant, workspace.record(variant.id).builtin,
                                             test_accuracy=evaluate(variant.model, data.test).accuracy)
                st.rerun()
        else:
            st.caption("Full test set accuracy needs the full CIFAR-10: pick it under Data in the sidebar.")


def layer_rows(variant) -> None:
    """One row per Conv2d / Linear layer: shape, parameters, nonzeros, MACs."""
    st.subheader("Layers")
    rows = layer_table(variant.model)
    table = pd.DataFrame([{"layer": r.name, "type": r.kind, "shape": " × ".join(map(str, r.shape)),
                           "parameters": r.params, "nonzero": r.nonzero, "MACs": r.macs,
                           "sparsity (%)": round(100 * r.sparsity, 1)} for r in rows])
    st.dataframe(table, hide_index=True, height=min(800, 38 + 35 * len(table)),
                 column_config={"MACs": st.column_config.NumberColumn(format="localized"),
                                "parameters": st.column_config.NumberColumn(format="localized"),
                                "nonzero": st.column_config.NumberColumn(format="localized")})
    st.caption("Batch-norm layers, biases and the residual additions are not listed: they hold few parameters "
               "and almost no multiply-accumulates.")


def overview_page() -> None:
    intro()
    variant = workspace.require_current()
    model_in_hand(variant, state.data_in_use())
    layer_rows(variant)


overview_page()
