"""The sidebar on every page: the model in hand, the data in use, the workspace's jobs and its link."""
from __future__ import annotations

import time

import streamlit as st

from compression import data as D

from . import analyses, jobs, safety, state, workspace
from .format import accuracy, kib, plain


def render() -> None:
    jobs.set_page_threads()
    announce_finished_jobs()
    with st.sidebar:
        model_in_hand()
        st.divider()
        data_picker()
        running()
        st.divider()
        workspace.sidebar()


def announce_finished_jobs() -> None:
    """A toast, once per session, for each job that ended since the session began with variants made."""
    since = st.session_state.setdefault("_session_started", time.time())
    told = st.session_state.setdefault("_announced", set())
    for record in jobs.records(limit=5):
        if record.id not in told and record.result and (record.finished or 0) >= since:
            told.add(record.id)
            st.toast(f"“{plain(record.title)}” finished: {len(record.result)} variant(s) joined your workspace.")


def model_in_hand() -> None:
    records = workspace.variants()
    st.subheader("Model in hand")
    if not records:
        st.error("No model is available: the pretrained weights in assets/ are missing. "
                 "Train one on the Train page, or upload one on Compare & Download.")
        return
    ids = [r.id for r in records]
    current = workspace.current_id()
    labels = {r.id: f"{r.name} · {accuracy(r.metrics.eval_accuracy)}" for r in records}
    choice = st.selectbox("Model in hand", ids, index=ids.index(current), format_func=lambda i: labels[i],
                          label_visibility="collapsed", key="model_in_hand_select")
    if choice != current:
        workspace.set_current(choice)
    record = records[ids.index(choice)]
    m = record.metrics
    smaller = f"{m.compression_ratio:.1f}× smaller than dense fp32" if m.compression_ratio >= 1.05 else "not compressed yet"
    st.markdown(f"**{accuracy(m.eval_accuracy)}** eval accuracy  \n**{kib(m.bytes_packed)}** packed, {smaller}")
    st.caption(f"{plain(record.as_variant().recipe)} · sparsity {100 * m.sparsity:.1f} % · "
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


def download_key() -> tuple:
    """One download per server and folder, whichever session asks."""
    return ("download", str(D.resolve_root()))


def download_button() -> None:
    task = analyses.task(download_key())
    if task is not None and task.active:
        download_progress()
        return
    if task is not None and task.error:
        st.error(f"Download failed: {plain(task.error)}")
    if st.button("Download CIFAR-10", icon=":material/download:", width="stretch"):
        root = D.resolve_root()
        analyses.start(download_key(), "Download CIFAR-10", lambda t: D.download_cifar10(
            root, progress=lambda done, total: t.report(done=done, total=total)))
        st.rerun()


@safety.fragment(run_every=jobs.POLL_S)      # drawn only while the download runs
def download_progress() -> None:
    task = analyses.task(download_key())
    if task is None or not task.active:
        st.rerun()          # finished: redraw the whole page with the new data choice
    last = task.latest() or {}
    done, total = last.get("done", 0), last.get("total", 0) or 170_498_071
    st.progress(min(1.0, done / total), text=f"Downloading… {done / 1e6:.0f} of {total / 1e6:.0f} MB")


def running() -> None:
    """The workspace's job that waits or runs, whichever page started it."""
    record = jobs.active()
    if record is None:
        return
    st.divider()
    st.subheader("Running")
    if record.status == jobs.RUNNING:
        last = record.progress
        pct = last.get("step", 0) / max(1, last.get("total_steps", 1))
        st.progress(min(1.0, pct), text=f"{plain(record.title)}: {100 * pct:.0f} %")
    elif record.active:
        view = jobs.recorder().engine_job(record.id)
        place = f"place {view.position}" if view is not None and view.position else "waiting"
        st.caption(f"{plain(record.title)}: waiting, {place} in the line")
    else:
        st.caption(f"{plain(record.title)}: stopping…")
