"""Long jobs — training, fine-tuning, QAT, distillation, centroid fine-tuning, pipelines, real int8 — as
the pages start, watch, stop and run them again.

They run on the job engine (compression/engine.py): Dask distributed, a local cluster of worker
processes started with the first job (closed at exit), or the cluster of PLAYGROUND_SCHEDULER. One
engine per server process. Each job is a task of compression/tasks.py named with a plain spec; the
variants it starts from travel as compression.portable payloads. Every job has a record in the workspace
store, written by ui/job_records.py as it runs, so it belongs to the workspace: a reloaded page (or
another tab, or another device) finds it with its live curve, and its variants join the workspace even
when no tab is open. After a server restart a job that was running shows as interrupted, with "Run
again" (the same task on the same settings; a training run of the local cluster saves a checkpoint at
every epoch's end and carries on from it, the other jobs start from the beginning).

A job's settings in its record are {"task", "spec", "inputs"}: `spec` is plain JSON (data, epochs, …),
`inputs` names the variants it starts from by id ({"parent": id, "teacher": id, "start": id or None})
and, for a fine-tune of a model the Prune page made, {"model": "pruned"}: that model is made again from
the parent and the spec's technique and settings (ui/cached.py), so "Run again" needs nothing but ids.

Pages poll only while the workspace has a job waiting or running (`live`).
"""
from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path

import streamlit as st
import torch

from compression.engine import Engine, local_cluster_size
from compression.portable import model_payload, variant_payload
from compression.store_jobs import CANCELLED, DONE, FAILED, INTERRUPTED, QUEUED, RUNNING, JobRecord
from compression.store import StoredVariant

from . import analyses, cached, charts, safety, state, workspace
from .format import accuracy, plain
from .job_records import JobRecorder

POLL_S = 1.0                                  # how often a page redraws a job that waits or runs
PREFER_GPU = {"train", "finetune", "qat", "distill", "centroids", "deep_compression", "spiral"}


@st.cache_resource(show_spinner=False)
def recorder() -> JobRecorder:
    return JobRecorder()


@st.cache_resource(show_spinner=False)
def engine() -> Engine:
    """The server's job engine. Costs nothing until the first job starts the cluster."""
    return Engine(on_update=recorder())


# --- the workspace's jobs ----------------------------------------------------------------------------------

def records(limit: int = 20) -> list[JobRecord]:
    """The workspace's newest jobs, newest first."""
    return workspace.store().jobs.list(workspace.get(), limit=limit)


def busy(record: JobRecord) -> bool:
    """Waiting or running: by its record, or — once stopped — until the engine has ended it and kept
    what it made."""
    if record.active:
        return True
    view = recorder().engine_job(record.id)
    return view is not None and view.active


def active() -> JobRecord | None:
    """The workspace's job that waits or runs, if any (one at a time per workspace)."""
    return next((r for r in records() if busy(r)), None)


def latest(kind: str) -> JobRecord | None:
    return next((r for r in records() if r.kind == kind), None)


def results(record: JobRecord) -> list[StoredVariant]:
    """The variants a job made that the workspace still has."""
    ids = {r.id: r for r in workspace.variants()}
    return [ids[i] for i in record.result if i in ids]


# --- start, stop, run again ---------------------------------------------------------------------------------

def start(kind: str, title: str, task: str, spec: dict, inputs: dict | None = None,
          busy_message: str | None = None) -> JobRecord | None:
    """Record the job in the workspace and hand it to the engine, unless the workspace has one going."""
    going = active()
    if going is not None:
        st.warning(busy_message or f"“{plain(going.title)}” is still going in your workspace: wait for it to "
                                   f"finish or stop it, then start this one.")
        return None
    record = workspace.store().jobs.create(workspace.get(), kind, title,
                                           {"task": task, "spec": spec, "inputs": inputs or {}},
                                           server=workspace.server_name())
    launch(record)
    if safety.fragment_run():       # started from a page's fragment: the sidebar shows it as running too
        safety.rerun_app()
    return record


def launch(record: JobRecord) -> JobRecord:
    """Submit a queued record's job to the engine (its record fails, with the reason, if it cannot be)."""
    settings = record.settings
    try:
        spec = {**settings["spec"], **payloads(settings["inputs"], settings["spec"])}
        resources = {"GPU": 1} if settings["task"] in PREFER_GPU else None
        recorder().submit(engine(), workspace.store(), workspace.get(), record.id, record.kind, record.title,
                          settings["task"], spec, resources)
    except Exception as exc:
        workspace.store().jobs.fail(record.id, safety.reason(exc))
        raise
    return record


def checkpoint_file() -> str | None:
    """Where a training run saves itself at every epoch's end (PLAYGROUND_HOME/checkpoints), so that "Run
    again" after a server restart carries on from there; None on an external cluster, whose workers
    cannot see this server's folders."""
    if engine().scheduler is not None:
        return None
    folder = workspace.store().home / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{secrets.token_hex(8)}.ckpt")


def resumes(record: JobRecord) -> bool:
    """Will "Run again" carry on from a checkpoint the interrupted run left?"""
    checkpoint = record.settings.get("spec", {}).get("checkpoint")
    return bool(checkpoint) and Path(checkpoint).exists()


def payloads(inputs: dict, spec: dict) -> dict:
    """The variants a job starts from, as payloads for its worker (see the module docstring)."""
    out = {}
    for name in ("parent", "teacher", "start"):
        if name in inputs:
            out[name] = variant_payload(workspace.variant(inputs[name])) if inputs[name] else None
    if inputs.get("model") == "pruned":
        parent = workspace.variant(inputs["parent"])
        data = state.data_in_use()
        calib = data.train.subset(slice(0, 512), "calibration batches")
        pruned, _ = cached.pruned(parent.id, spec["technique"], spec["settings"], parent.model, data.eval, calib)
        out["model"] = model_payload(pruned)
    return out


def stop(record: JobRecord) -> None:
    """A waiting job never runs; a running one ends between two steps and keeps what it made."""
    workspace.store().jobs.cancel(workspace.get(), record.id)
    recorder().stop(record.id)


def run_again(record: JobRecord) -> JobRecord | None:
    going = active()
    if going is not None:
        st.warning(f"“{plain(going.title)}” is still going in your workspace: wait for it or stop it first.")
        return None
    return launch(workspace.store().jobs.resubmit(workspace.get(), record.id, server=workspace.server_name()))


# --- what a page shows --------------------------------------------------------------------------------------

def status(kind: str, phase: str | None = None, done=None, what: str = "The job",
           stopped=None) -> tuple[JobRecord | None, list[dict]]:
    """Show the workspace's newest `kind` job: its place in line, or its progress and where it runs, a
    Stop button, then the outcome. Returns (record, its curve points of `phase`, or all).

    `done(variants)` and `stopped(variants)` word the outcome from the variants the job made."""
    record = latest(kind)
    if record is None:
        return None, []
    points = [p for p in record.curve if phase is None or p.get("phase") == phase]
    if record.status == QUEUED:
        view = recorder().engine_job(record.id)
        place = f"place {view.position} in the line" if view is not None and view.position else "in the line"
        st.info(f"{plain(record.title)}: waiting for a worker, {place} (jobs started earlier go first; one "
                f"job per workspace at a time).")
    elif record.status == RUNNING:
        last = next((p for p in reversed([*points, record.progress]) if "total_steps" in p), {})
        step, total = last.get("step", 0), last.get("total_steps")
        st.progress(min(1.0, step / max(1, total or 1)),
                    text=plain(record.progress.get("message") or f"{record.title}: step {step} of {total or '…'}"))
        if record.worker:
            st.caption(f"Running on {plain(record.worker)}")
    if record.active and st.button("Stop", key=f"stop_{kind}", icon=":material/stop:"):
        stop(record)
        st.rerun()
    outcome(record, what, done, stopped)
    return record, points


def outcome(record: JobRecord, what: str, done=None, stopped=None) -> None:
    """How a finished job ended, in words; "Run again" for one the server's restart interrupted."""
    made = results(record)
    if record.status == DONE and done is not None and made:
        st.success(done(made))
    elif record.status == CANCELLED:
        st.warning(stopped(made) if stopped is not None else f"{what} was stopped.")
    elif record.status == FAILED:
        st.error(f"{what} failed: {plain(record.error)}")
    elif record.status == INTERRUPTED:
        st.warning(f"{what} was interrupted: the server stopped before it finished.")
        resume = resumes(record)
        if st.button("Run again", key=f"again_{record.kind}", icon=":material/replay:"):
            run_again(record)
            st.rerun()
        st.caption("It carries on from its checkpoint, saved at the end of its last finished epoch." if resume else
                   "It starts again from the beginning: it had no checkpoint to carry on from.")


def training_status(kind: str, what: str, title: str, chart_key: str) -> None:
    """A job that trains and makes one variant (fine-tuning, QAT, centroids): its status, outcome and
    training curve as it grows."""
    _, points = status(kind, "finetune", what=what, done=lambda made: (
        f"“{plain(made[0].name)}”: {accuracy(made[0].metrics.eval_accuracy)}. Joined the variants."))
    if points:
        st.plotly_chart(charts.training_curves(points, title), key=chart_key)


def live(fn):
    """Decorator: draw `fn` in a fragment that reruns every POLL_S while the workspace has a job waiting
    or running, and not at all otherwise. When the job ends the fragment asks for one full rerun: the page
    redraws with the new variants, and the browser drops every fragment's timer (it does so on each
    full run). The fragment may sit inside a page's own fragment, which reruns it without a full run:
    the session remembers that a timer was started since the last full run, so a live fragment redrawn
    after its job ended still asks for that full rerun and its timer never outlives the job."""
    timer = f"_live_timer_{fn.__module__}.{fn.__qualname__}"

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if not safety.fragment_run():
            st.session_state.pop(timer, None)       # a full run: the browser dropped every timer
        polling = active() is not None
        if polling:
            st.session_state[timer] = True

        @functools.wraps(fn)
        def body():
            fn(*args, **kwargs)
            if st.session_state.get(timer) and active() is None:
                st.session_state.pop(timer, None)
                st.rerun(scope="app")

        return safety.fragment(body, run_every=POLL_S if polling else None)()
    return call


def set_page_threads() -> None:
    """Torch threads for this script run: all cores, less those a job of the local cluster or an
    analysis keeps busy (two thread teams on the same cores wait on each other and both crawl)."""
    cores = os.cpu_count() or 1
    local = engine().scheduler is None and any(v.status == RUNNING for v in engine().jobs())
    workers, threads = local_cluster_size(workers=engine().workers)
    taken = (workers * threads if local else 0) + (1 if analyses.pool().running() else 0)
    torch.set_num_threads(max(1, cores - taken))
