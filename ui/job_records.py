"""The bridge from the job engine to the workspace store: what a job does is written to its workspace's
job record as it happens, so a job belongs to the workspace, not to the browser tab that started it.

JobRecorder is the engine's on_update (compression/engine.py). It runs on the engine's thread and never
calls st.*. For each change of a job it
- marks the record running once the job has a worker (store.jobs.start, with where it runs);
- writes progress at most every WRITE_EVERY_S: the last event (plus, for pipelines, the stages so far)
  and the curve points gathered since the last write (store.jobs.progress, which bounds the curve);
- when the job ends, deletes a training run's checkpoint (unless the app's shutdown stopped it: "Run
  again" carries on from it), keeps the variants it made in the job's workspace (store.keep, parents first, each
  child pointing at its parent's stored id) and finishes the record with their ids, or records the
  failure. So a job that ends while no tab is open still adds its variants.
Stop from anywhere: store.jobs.progress answers False once the record is no longer running (a page of
this or another app process cancelled it), and the recorder then stops the engine's job.

A job the engine cancels because the app is shutting down keeps its record "running": the next server
start marks it interrupted (store.jobs.mark_interrupted), and the page offers "Run again".
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from compression.engine import CANCELLED, FAILED, RUNNING, Engine, JobView
from compression.portable import variants_from_result
from compression.store import Store
from compression.store_schema import Workspace

WRITE_EVERY_S = 1.0
POINT_KEYS = ("phase", "kind", "step", "total_steps", "epoch", "loss", "train_acc", "test_acc")
log = logging.getLogger("playground")


def point(event: dict) -> dict:
    """What a chart needs of a progress event (a stage row of a pipeline is kept whole)."""
    if event.get("phase") == "stage":
        return dict(event)
    return {k: event[k] for k in POINT_KEYS if k in event}


def where(view: JobView) -> str:
    """Where a job runs, in words: the worker's address and its device."""
    return " · ".join(p for p in (view.worker, view.device) if p)


@dataclass
class Link:
    """An engine job and the store record it writes to."""
    store: Store
    workspace: Workspace
    record_id: str
    written: int = 0                  # progress events already written
    last_write: float = 0.0
    started: bool = False
    ended: bool = False
    stages: list = field(default_factory=list)
    checkpoint: str | None = None     # a training run's checkpoint file (ui/jobs.checkpoint_file)


class JobRecorder:
    def __init__(self) -> None:
        self.engine: Engine | None = None
        self._links: dict[str, Link] = {}            # engine job id -> link
        self._engine_ids: dict[str, str] = {}        # record id -> engine job id
        self._lock = threading.Lock()

    def submit(self, engine: Engine, store: Store, workspace: Workspace, record_id: str, kind: str, title: str,
               task: str, spec: dict, resources: dict | None = None) -> str:
        """Hand the job to the engine and link it to its record (under the lock, so that the engine's
        first update waits for the link)."""
        self.engine = engine
        with self._lock:
            job_id = engine.submit(workspace.id, kind, title, task, spec, resources=resources)
            self._links[job_id] = Link(store, workspace, record_id, checkpoint=spec.get("checkpoint"))
            self._engine_ids[record_id] = job_id
        return job_id

    def engine_job(self, record_id: str) -> JobView | None:
        """The engine's live view of a record's job, when this process runs it."""
        job_id = self._engine_ids.get(record_id)
        if job_id is None or self.engine is None:
            return None
        try:
            return self.engine.job(job_id)
        except KeyError:
            return None

    def stop(self, record_id: str) -> None:
        job_id = self._engine_ids.get(record_id)
        if job_id is not None and self.engine is not None:
            self.engine.stop(job_id)

    def __call__(self, view: JobView) -> None:
        with self._lock:
            link = self._links.get(view.id)
        if link is None or link.ended:
            return
        try:
            self._record(link, view)
        except Exception:                   # a busy or full database: try again with the next change
            log.exception("could not record job %s", link.record_id)

    def _record(self, link: Link, view: JobView) -> None:
        jobs = link.store.jobs
        if not link.started and (view.status == RUNNING or view.started is not None):
            link.started = True
            if not jobs.start(link.record_id, worker=where(view)) and view.active:
                self.engine.stop(view.id)             # cancelled while it waited
        new = view.events[link.written:]
        if new and link.started and (not view.active or time.monotonic() - link.last_write >= WRITE_EVERY_S):
            link.written, link.last_write = len(view.events), time.monotonic()
            link.stages += [e for e in new if e.get("phase") == "stage"]
            last = {**new[-1], "stages": link.stages} if link.stages else new[-1]
            if not jobs.progress(link.record_id, last, [point(e) for e in new]) and view.active:
                self.engine.stop(view.id)             # cancelled from a page, maybe of another process
        if not view.active:
            link.ended = True
            self._end(link, view)

    def _end(self, link: Link, view: JobView) -> None:
        jobs, record_id = link.store.jobs, link.record_id
        shutdown = view.status == CANCELLED and view.result is None and view.error
        if link.checkpoint and not shutdown:      # only a run the shutdown interrupted carries on later
            Path(link.checkpoint).unlink(missing_ok=True)
        if view.status == FAILED:
            jobs.fail(record_id, view.error or "the job failed")
        elif view.result is None:
            if view.status == CANCELLED and view.error:
                return                                # the app shut down: interrupted at the next start
            jobs.cancel(link.workspace, record_id)
        else:
            try:
                ids = keep_all(link.store, link.workspace, view.result["variants"])
            except Exception as exc:
                log.exception("could not keep the variants of job %s", record_id)
                jobs.fail(record_id, f"it finished, but its variants could not be kept: {exc}")
                return
            jobs.finish(record_id, ids)


def keep_all(store: Store, workspace: Workspace, payloads: list[dict]) -> list[str]:
    """Keep the variants a job made, in order; a child made from another of the batch names its
    parent's stored id (ids are content-derived, so the parent must be kept first)."""
    stored: dict[str, str] = {}
    for variant in variants_from_result(payloads):
        variant.parent = stored.get(variant.parent, variant.parent)
        stored[variant.id] = store.keep(workspace, variant)
    return list(stored.values())
