import pandas as pd
import streamlit as st

from compression.export import packed_bytes, safetensors_bytes
from compression.files import ModelFileError, load_any_bytes
from compression.models import ARCHS as MODEL_ARCHS
from compression.metrics import latency_ms
from compression.store_errors import StoreError
from compression.train import evaluate
from compression.variant import file_stem, measure_variant, pareto_frontier, report_csv, report_json
from compression.workspace_zip import export_workspace, import_workspace
from ui import board, charts, onnx_files, state, workspace
from ui.format import accuracy, kib, plain

IMPORT_MAX_MB = 100          # a workspace export: the weights of every variant (a resnet20 packs to < 1 MB)


def intro() -> None:
    st.title("Compare & Download")
    st.markdown("Every variant you kept, measured the same way. The **Pareto frontier** joins the variants that no "
                "other variant beats on both size and accuracy: those are the ones worth shipping.")
    st.latex(r"\text{compression ratio} = \frac{\text{bytes of the dense fp32 model}}{\text{bytes of the packed file}}")


def latency_button(records) -> None:
    """Time the variants kept without a latency (the table's last two columns); the figures are kept."""
    missing = [r for r in records if r.metrics.latency_b1_ms is None]
    if missing and st.button(f"Measure CPU latency of {len(missing)} variant(s)", icon=":material/timer:"):
        with st.spinner("Timing forward passes at batch 1 and 256…"):
            for record in missing:
                v = workspace.variant(record.id)
                workspace.record_metrics(v, record.builtin, latency_b1_ms=latency_ms(v.model, 1, repeats=20),
                                         latency_b256_ms=latency_ms(v.model, 256, repeats=3))
        st.rerun()


def variants_table(rows: list[dict]) -> None:
    table = pd.DataFrame(rows)
    table["eval_accuracy"] = 100 * table["eval_accuracy"].astype(float)
    table["test_accuracy"] = 100 * table["test_accuracy"].astype(float)
    table["sparsity"] = 100 * table["sparsity"]
    for col in ("bytes_fp32", "bytes_gzip", "bytes_packed"):
        table[col] = table[col] / 1024
    st.dataframe(
        table, hide_index=True, placeholder="—",           # a figure not measured (test accuracy, latency)
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


def download_buttons(records, data) -> None:
    """Each variant's files, read from the store when clicked (ONNX: made when clicked, and checked in ONNX
    Runtime on request); Delete for the workspace's own."""
    st.subheader("Downloads")
    store, ws = workspace.store(), workspace.get()
    for record in records:
        with st.container(border=True):
            a, b = st.columns([2, 3])
            a.markdown(f"**{plain(record.name)}**  \n{plain(record.as_variant().recipe)}  \n"
                       f"{accuracy(record.metrics.eval_accuracy)} · packed {kib(record.metrics.bytes_packed)}"
                       + ("  \n*pretrained: shared by every workspace, read-only*" if record.builtin else ""))
            if not store.blobs.exists(record.weights_sha256):
                b.warning("Its weights file is missing from the server's data folder: delete this variant, or "
                          "import it again from a workspace export.")
            else:
                files(b, store, ws, record)
                onnx_files.section(b, record, data)
            if not record.builtin:
                delete_button(a, record)


def files(where, store, ws, record) -> None:
    """Packed and safetensors, each carrying the variant's name, recipe and listed accuracy (made from the
    stored model when clicked), and real int8 (if it has one)."""
    stem = file_stem(record.as_variant())
    made = [("Packed (.cmpk)", "cmpk", lambda: packed_bytes(record.as_variant(store.model(ws, record.id)))),
            ("Weights (.safetensors)", "safetensors",
             lambda: safetensors_bytes(record.as_variant(store.model(ws, record.id))))]
    if "int8" in record.artifacts:
        made.append(("Real int8 (.pt2)", "int8.pt2", lambda: store.artifact(ws, record.id, "int8")))
    for col, (label, kind, make) in zip(where.columns(3), made):
        col.download_button(label, make, f"{stem}.{kind}", "application/octet-stream", key=f"dl-{record.id}-{kind}",
                            on_click="ignore", width="stretch")


def delete_button(where, record) -> None:
    """Delete, in two steps: the first click asks, the second deletes for good."""
    if st.session_state.get("_delete") != record.id:
        if where.button("Delete", key=f"delete-{record.id}", icon=":material/delete:"):
            st.session_state["_delete"] = record.id
            st.rerun()
        return
    where.warning(f"Delete “{plain(record.name)}” from your workspace for good?")
    yes, no = where.columns(2)
    if yes.button("Delete for good", key=f"delete-yes-{record.id}", type="primary"):
        workspace.store().delete(workspace.get(), record.id)
        st.session_state.pop("_delete", None)
        st.session_state["_compare_message"] = ("success", f"Deleted “{plain(record.name)}”.")
        st.rerun()
    if no.button("Keep it", key=f"delete-no-{record.id}"):
        st.session_state.pop("_delete", None)
        st.rerun()


def add_upload(upload, arch: str | None, data) -> tuple[str, str]:
    """Load, check and evaluate an uploaded file and keep it: ("success" | "error", message)."""
    file_name = upload.name[:80]
    if file_name.lower().endswith(".onnx"):
        return onnx_files.evaluate_upload(upload.getvalue(), file_name, data)
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
        workspace.keep(v)
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
                "is executed: it is read as numbers, checked, evaluated and added to the table. An `.onnx` file "
                "(standard operators, weights inside) is checked and run in ONNX Runtime on the eval subset.")
    u1, u2 = st.columns([3, 1])
    arch = u2.selectbox("Architecture (if the file does not say)", ["from file"] + list(MODEL_ARCHS), key="upload_arch")
    upload = u1.file_uploader("Model file", type=["cmpk", "safetensors", "onnx"],
                           key="upload_file")
    if upload is not None and st.session_state.get("_uploaded") != upload.file_id:
        st.session_state["_uploaded"] = upload.file_id
        st.session_state["_upload_message"] = add_upload(upload, None if arch == "from file" else arch, data)
        st.rerun()
    message = st.session_state.get("_upload_message")
    if message:
        (st.success if message[0] == "success" else st.error)(message[1])


def workspace_files() -> None:
    """The whole workspace as one .zip, and back: to take work home, or hand a lesson's variants out."""
    st.subheader("Your workspace as one file")
    st.markdown("The export holds every variant you kept (packed weights and a manifest; not the pretrained "
                "models, which every workspace has). Importing it adds its variants to this workspace; the file "
                "is checked completely first, and nothing is added if anything in it is wrong.")
    store, ws = workspace.store(), workspace.get()
    c1, c2 = st.columns([1, 2])
    c1.download_button("Export workspace (.zip)", lambda: export_workspace(store, ws), "workspace.zip",
                       "application/zip", icon=":material/archive:", on_click="ignore", key="export_workspace")
    upload = c2.file_uploader("Import a workspace (.zip)", type=["zip"], key="import_file",
                              max_upload_size=IMPORT_MAX_MB)
    if upload is not None and st.session_state.get("_imported") != upload.file_id:
        st.session_state["_imported"] = upload.file_id
        name = upload.name[:80]
        try:
            ids = import_workspace(store, ws, upload.getvalue(), name)
            st.session_state["_compare_message"] = ("success", f"Imported {len(ids)} variant(s) from {plain(name)}.")
        except StoreError as exc:
            st.session_state["_compare_message"] = ("error", plain(exc))
        st.rerun()


def compare_page() -> None:
    intro()
    message = st.session_state.pop("_compare_message", None)
    if message:
        (st.success if message[0] == "success" else st.error)(message[1])
    records = workspace.variants()
    data = state.data_in_use()
    rows = [r.row() for r in records]
    if not rows:
        st.info("No variants yet: train or upload a model.")
    else:
        latency_button(records)
        variants_table(rows)
        chart_and_reports(rows)
        download_buttons(records, data)
    board.submit_section()
    upload_form(data)
    workspace_files()


compare_page()
