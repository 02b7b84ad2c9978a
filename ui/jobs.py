"""What every page shows about its background job: its place in the queue or a progress bar with a
Stop button, then the outcome. Pages draw their own curves from the events this returns."""
from __future__ import annotations

from typing import Callable

import streamlit as st

from compression.worker import CANCELLED, DONE, FAILED, QUEUED, Job

from . import charts, state
from .format import accuracy, plain


def job_status(kind: str, phase: str | None = None, done: Callable[[Job], str] | None = None,
               what: str = "The job", stopped: Callable[[Job], str] | None = None) -> tuple[Job | None, list[dict]]:
    """Show the session's `kind` job; returns (job, its progress events of `phase`, or all).

    `done(job)` and `stopped(job)` word the outcome (default when stopped: "<what> was stopped.")."""
    job = state.job(kind)
    if job is None:
        return None, []
    events = [e for e in job.snapshot() if phase is None or e.get("phase") == phase]
    if job.status == QUEUED:
        st.info(f"{job.title}: waiting for the worker, place {state.job_queue().position(job)} in the queue "
                f"(other students' runs go first).")
    elif job.active:
        last = next((e for e in reversed(events) if "total_steps" in e), {})
        step, total = last.get("step", 0), last.get("total_steps")
        st.progress(min(1.0, step / max(1, total or 1)),
                    text=last.get("message") or f"{job.title}: step {step} of {total or '…'}")
    if job.active and st.button("Stop", key=f"stop_{kind}", icon=":material/stop:"):
        state.job_queue().cancel(job)
    if job.status in (DONE, CANCELLED):
        state.collect_finished_jobs()
    if job.status == DONE and done is not None:
        st.success(done(job))
    elif job.status == CANCELLED:
        st.warning(stopped(job) if stopped is not None else f"{what} was stopped.")
    elif job.status == FAILED:
        st.error(f"{what} failed: {job.error}")
    return job, events


def training_job_status(kind: str, what: str, title: str, chart_key: str) -> None:
    """A job that trains and returns one variant (fine-tuning, QAT, centroids): its status, the
    outcome, and its training curve as it grows."""
    _, events = job_status(kind, "finetune", what=what, done=lambda job: (
        f"“{plain(job.result.name)}”: {accuracy(job.result.metrics.eval_accuracy)}. Joined the variants."))
    if events:
        st.plotly_chart(charts.training_curves(events, title), key=chart_key)


def start_job(kind: str, title: str, fn, busy: str) -> Job | None:
    """Submit the session's `kind` job, unless one is still going (then say `busy`)."""
    job = state.job(kind)
    if job is not None and job.active:
        st.warning(busy)
        return None
    return state.submit(kind, title, fn)
