import pandas as pd
import streamlit as st

from compression.export import downloads
from compression.files import ModelFileError, load_any_bytes
from compression.models import ARCHS as MODEL_ARCHS
from compression.metrics import latency_ms
from compression.train import evaluate
from compression.variant import file_stem, measure_variant, pareto_frontier, report_csv, report_json
from ui import charts, state
from ui.format import accuracy, kib, plain
from ui import onnx_download


def intro() -> None:
    st.title("Compare & Download")
    st.markdown("Every variant you kept, measured the same way. The **Pareto frontier** joins the variants that no "
                "other variant beats on both size and accuracy: those are the ones worth shipping.")
    st.latex(r"\text{compression ratio} = \frac{\text{bytes of the dense fp32 model}}{\text{bytes of the packed file}}")


def latency_button(book) -> None:
    """Time the variants kept without a latency (the table's last two columns)."""
    missing = [v for v in book if v.metrics.latency_b1_ms is None]
    if missing and st.button(f"Measure CPU latency of {len(missing)} variant(s)", icon=":material/timer:"):
        with st.spinner("Timing forward passes at batch 1 and 256…"):
            for v in missing:
                v.metrics.latency_b1_ms = latency_ms(v.model, 1, repeats=20)
                v.metrics.latency_b256_ms = latency_ms(v.model, 256, repeats=3)
        st.rerun()


def variants_table(rows: list[dict]) -> None:
    table = pd.DataFrame(rows)
    table["eval_accuracy"] = 100 * table["eval_accuracy"].astype(float)
    table["test_accuracy"] = 100 * table["test_accuracy"].astype(float)
    table["sparsity"] = 100 * table["sparsity"]
    for col in ("bytes_fp32", "bytes_gzip", "bytes_packed"):
        table[col] = table[col] / 1024
    st.dataframe(
        table, hide_index=True,
        column_order=["name", "recipe", "eval_accuracy", "test_accuracy", "params", "nonzero_params", "sparsity",
                      "macs", "nonzero_macs", "bytes_fp32", "bytes_gzip", "bytes_packed", "compression_ratio",
                      "latency_b1_ms", "latency_b256_ms"],
        column_config={
            "name": "variant", "recipe": "how it was made",
            "eval_accuracy": st.column_config.NumberColumn("eval acc (%)", format="%.1f"),
            "test_accuracy": st.column_config.NumberColumn("test acc (%)", format="%.2f",
                                                           help="full 10,000-image test set"),
            "params": st.column_config.NumberColumn("params", format="localized"),
            "nonzero_params": st.column_config.NumberColumn("nonzeros", format="localized"),
            "sparsity": st.column_config.NumberColumn("sparsity (%)", format="%.1f"),
            "macs": st.column_config.NumberColumn("MACs", format="compact"),
            "nonzero_macs": st.column_config.NumberColumn("nonzero MACs", format="compact"),
            "bytes_fp32": st.column_config.NumberColumn("fp32 (KiB)", format="%.1f"),
            "bytes_gzip": st.column_config.NumberColumn("gzip (KiB)", format="%.1f"),
            "bytes_packed": st.column_config.NumberColumn("packed (KiB)", format="%.1f"),
            "compression_ratio": st.column_config.NumberColumn("ratio", format="%.1f×"),
            "latency_b1_ms": st.column_config.NumberColumn("CPU ms (batch 1)", format="%.2f"),
            "latency_b256_ms": st.column_config.NumberColumn("CPU ms (batch 256)", format="%.0f"),
        })


def chart_and_reports(rows: list[dict]) -> None:
    st.plotly_chart(charts.pareto(rows, pareto_frontier(rows)), key="pareto")
    c1, c2 = st.columns(2)
    c1.download_button("Report (CSV)", report_csv(rows), "compression-report.csv", "text/csv",
                       icon=":material/description:", on_click="ignore")
    c2.download_button("Report (JSON)", report_json(rows), "compression-report.json", "application/json",
                       icon=":material/description:", on_click="ignore")


def download_buttons(book) -> None:
    st.subheader("Downloads")
    for v in book:
        with st.container(border=True):
            a, b = st.columns([2, 3])
            a.markdown(f"**{plain(v.name)}**  \n{plain(v.recipe)}  \n{accuracy(v.metrics.eval_accuracy)} · "
                       f"packed {kib(v.metrics.bytes_packed)}")
            cols = b.columns(5)
            for col, (label, kind, make) in zip(cols, downloads(v)):
                col.download_button(label, make, f"{file_stem(v)}.{kind}", "application/octet-stream",
                                    key=f"dl-{v.id}-{kind}", on_click="ignore", width="stretch")


def add_upload(upload, arch: str | None, data) -> tuple[str, str]:
    """Load, check and evaluate an uploaded file and keep it: ("success" | "error", message)."""
    file_name = upload.name[:80]
    try:
        model, meta = load_any_bytes(upload.getvalue(), file_name, arch)
        # Evaluated batch by batch: each progress update is a point where Streamlit stops the script when the
        # student leaves (a closed tab does not keep a core busy).
        bar = st.progress(0.0, text="Evaluating the uploaded model on the eval subset…")
        result = evaluate(model, data.eval, batch_size=100, progress=lambda done, total: bar.progress(
            done / total, text=f"Evaluating the uploaded model: {done:,} of {total:,} images"))
        v = measure_variant(model, "uploaded", {"file": file_name, "arch": meta.get("arch", arch)},
                            name=f"{file_name} (uploaded)")
        v.metrics.eval_accuracy = result.accuracy
        state.add_variant(v)
        return "success", f"Added “{plain(v.name)}”: eval accuracy {accuracy(v.metrics.eval_accuracy)}."
    except ModelFileError as exc:
        return "error", f"Could not use {plain(file_name)}: {plain(exc)}"
    except Exception as exc:  # never a stack trace on the page
        return "error", (f"Could not use {plain(file_name)}: it is not a model file this app can read "
                         f"({type(exc).__name__}).")


def upload_form(data) -> None:
    """Upload a model file: read as numbers (never executed), checked, evaluated and added."""
    st.subheader("Upload a model")
    st.markdown("A packed file (`.cmpk`) or safetensors weights of one of the CIFAR ResNets. Nothing in the file "
                "is executed: it is read as numbers, checked, evaluated and added to the table.")
    u1, u2 = st.columns([3, 1])
    arch = u2.selectbox("Architecture (if the file does not say)", ["from file"] + list(MODEL_ARCHS), key="upload_arch")
    upload = u1.file_uploader("Model file", type=["cmpk", "safetensors"], key="upload_file")
    if upload is not None and st.session_state.get("_uploaded") != upload.file_id:
        st.session_state["_uploaded"] = upload.file_id
        st.session_state["_upload_message"] = add_upload(upload, None if arch == "from file" else arch, data)
        st.rerun()
    message = st.session_state.get("_upload_message")
    if message:
        (st.success if message[0] == "success" else st.error)(message[1])


def compare_page() -> None:
    intro()
    book = state.book()
    data = state.data_in_use()
    rows = book.rows()
    if not rows:
        st.info("No variants yet: train or upload a model.")
    else:
        latency_button(book)
        variants_table(rows)
        chart_and_reports(rows)
        download_buttons(book)
        onnx_download.section(book, data)
    upload_form(data)


compare_page()
