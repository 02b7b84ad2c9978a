"""The sidebar on every page: the model in hand, the data in use, and background jobs."""
from __future__ import annotations

import streamlit as st

from compression import data as D
from compression.worker import RUNNING

from . import safety, state
from .format import accuracy, kib, plain


def render() -> None:
    state.set_page_threads()
    for v in state.collect_finished_jobs():
        st.toast(f"“{plain(v.name)}” joined the variants.")
    with st.sidebar:
        model_in_hand()
        st.divider()
        data_picker()
        jobs()


def model_in_hand() -> None:
    book = state.book()
    st.subheader("Model in hand")
    if not len(book):
        st.error("No model is available: the pretrained weights in assets/ are missing. "
                 "Train one on the Train page, or upload one on Compare & Download.")
        return
    ids = [v.id for v in book]
    current = state.current()
    labels = {v.id: f"{v.name} · {accuracy(v.metrics.eval_accuracy)}" for v in book}
    choice = st.selectbox("Model in hand", ids, index=ids.index(current.id), format_func=labels.get,
                          label_visibility="collapsed", key="model_in_hand_select")
    if choice != current.id:
        state.set_current(choice)
        current = state.current()
    m = current.metrics
    smaller = f"{m.compression_ratio:.1f}× smaller than dense fp32" if m.compression_ratio >= 1.05 else "not compressed yet"
    st.markdown(f"**{accuracy(m.eval_accuracy)}** eval accuracy  \n**{kib(m.bytes_packed)}** packed, {smaller}")
    st.caption(f"{plain(current.recipe)} · sparsity {100 * m.sparsity:.1f} % · "
               f"{m.nonzero_params:,} nonzero of {m.params:,} parameters")


def data_picker() -> None:
    st.subheader("Data")
    found = D.has_cifar10(D.resolve_root())
    folder_allowed, roots = state.folder_policy()
    options = [state.SAMPLE, state.FULL] + ([state.FOLDER] if folder_allowed else [])
    if state.data_choice() not in options:
        st.session_state.data_choice = state.SAMPLE
    st.radio("Data in use", options, key="data_choice", label_visibility="collapsed",
             help="Live accuracy always uses the same 1,000 bundled test images (the eval subset), so every "
                  "laptop in the class sees the same numbers. Training and the full test set use this choice.")
    choice = state.data_choice()
    if choice == state.FULL and not found:
        st.info(f"CIFAR-10 is not in {plain(D.resolve_root())} yet (163 MB download).")
        download_button()
    if choice == state.FOLDER:
        st.text_input("Folder holding cifar-10-batches-py/", key="data_folder", max_chars=500,
                      placeholder="/path/to/cifar10")
        if roots:
            st.caption("Folders this server opens: " + ", ".join(plain(r) for r in roots))
    st.session_state.pop("data_error", None)
    data = state.data_in_use()
    error = st.session_state.get("data_error")
    if error and choice != state.SAMPLE:
        st.error(f"{plain(error)}\n\nUsing the bundled sample meanwhile.")
    n_train = len(data.train) if data.full else 5000
    st.caption(f"In use: {plain(data.label)} — {n_train:,} training, {len(data.test):,} test images.")


def download_button() -> None:
    job = state.job("download")
    if job is not None and job.active:
        download_progress()
        return
    if job is not None and job.error:
        st.error(f"Download failed: {job.error}")
    if st.button("Download CIFAR-10", icon=":material/download:", width="stretch"):
        root = D.resolve_root()
        state.submit("download", "Download CIFAR-10",
                     lambda j: D.download_cifar10(root, progress=lambda d, t: j.report(done=d, total=t)),
                     queue=state.analysis_queue())
        st.rerun()


@safety.fragment(run_every=1.0)
def download_progress() -> None:
    job = state.job("download")
    if job is None or not job.active:
        st.rerun()          # finished: redraw the whole page with the new data choice
    last = job.latest() or {}
    done, total = last.get("done", 0), last.get("total", 0) or 170_498_071
    st.progress(min(1.0, done / total), text=f"Downloading… {done / 1e6:.0f} of {total / 1e6:.0f} MB")


def jobs() -> None:
    mine = [j for j in state.job_queue().jobs(state.owner()) if j.active]
    if not mine:
        return
    st.divider()
    st.subheader("Running")
    q = state.job_queue()
    for j in mine:
        if j.status == RUNNING:
            last = j.latest() or {}
            pct = last.get("step", 0) / max(1, last.get("total_steps", 1))
            st.progress(min(1.0, pct), text=f"{j.title}: {100 * pct:.0f} %")
        else:
            st.caption(f"{j.title}: waiting, place {q.position(j)} in the queue")
