"""What every page shows about its background job: its place in the queue or a progress bar with a
Stop button, then the outcome. Pages draw their own curves from the events this returns."""
from __future__ import annotations

from typing import Callable

import streamlit as st

from compression.worker import CANCELLED, DONE, FAILED, QUEUED, Job

from . import state


def job_status(kind: str, phase: str | None = None, done: Callable[[Job], str] | None = None,
               what: str = "The job") -> tuple[Job | None, list[dict]]:
    """Show the session's `kind` job; returns (job, its progress events of `phase`, or all)."""
    job = state.job(kind)
    if job is None:
        return None, []
    events = [e for e in job.snapshot() if phase is None or e.get("phase") == phase]
    if job.status == QUEUED:
        st.info(f"{job.title}: waiting for the worker, place {state.job_queue().position(job)} in the queue.")
    elif job.active:
        last = next((e for e in reversed(events) if "total_steps" in e), {})
        st.progress(min(1.0, last.get("step", 0) / max(1, last.get("total_steps", 1))),
                    text=last.get("message") or job.title)
    if job.active and st.button("Stop", key=f"stop_{kind}", icon=":material/stop:"):
        state.job_queue().cancel(job)
    if job.status in (DONE, CANCELLED):
        state.collect_finished_jobs()
    if job.status == DONE and done is not None:
        st.success(done(job))
    elif job.status == CANCELLED:
        st.warning(f"{what} was stopped.")
    elif job.status == FAILED:
        st.error(f"{what} failed: {job.error}")
    return job, events
