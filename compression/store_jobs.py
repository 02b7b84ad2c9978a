"""Jobs as records in the workspace store: they belong to a workspace, not to a browser tab.

A job's row is written when it is queued and kept up to date while it runs, so a reloaded page (or a
new tab, or another device) finds it, its last progress event and its curve so far; a job that
finishes while no tab is open still records the variants it made (keep them with Store.keep first,
then finish with their ids). Its settings stay with it, so "Run again" can resubmit it.

Life of a job:   queued --start--> running --finish--> done
                    |                 |---fail----> failed
                    |---cancel--------+---cancel--> cancelled (finish may still record what it made)
                 queued or running, left by a server that died --mark_interrupted--> interrupted

Progress is throttle-friendly: each progress() call overwrites the last event and appends the curve
points gathered since the previous call (call it about once a second, not per batch). The curve is
bounded: past MAX_CURVE_POINTS it is thinned to every second point, always keeping the newest, so a
long run keeps an even sketch of its whole length.

Who may do what: the page's calls (create, get, list, cancel, resubmit) name the workspace; the
worker's calls (start, progress, finish, fail) name only the job id, which the server alone holds.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field

from sqlalchemy import Engine, select, update

from .store_errors import StoreError
from .store_schema import JOBS, Workspace, db_errors
from .job_view import CANCELLED, DONE, FAILED, QUEUED, RUNNING

INTERRUPTED = "interrupted"
ACTIVE = (QUEUED, RUNNING)
MAX_CURVE_POINTS = 1000
MAX_ERROR_CHARS = 4000


@dataclass
class JobRecord:
    id: str
    kind: str
    title: str
    settings: dict
    status: str
    progress: dict = field(default_factory=dict)       # the last event reported
    curve: list = field(default_factory=list)          # points to redraw a live curve
    error: str | None = None
    result: list[str] = field(default_factory=list)    # ids of the variants it made
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    server: str = ""
    worker: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


def thin(curve: list, limit: int = MAX_CURVE_POINTS) -> list:
    """Every second point, counted back from the newest, until at most `limit` remain."""
    while len(curve) > limit:
        curve = curve[::-1][::2][::-1]
    return curve


class JobStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._writer = engine.execution_options(write=True)

    # --- the page's calls ------------------------------------------------------------------------------

    def create(self, workspace: Workspace, kind: str, title: str, settings: dict, server: str = "") -> JobRecord:
        """Record a queued job for `workspace`; `settings` (JSON-able) are what "Run again" reuses."""
        job = JobRecord("j" + secrets.token_hex(8), kind, title, json.loads(json.dumps(settings, default=str)),
                        QUEUED, created=time.time(), server=server)
        with db_errors(self.engine), self._writer.begin() as conn:
            conn.execute(JOBS.insert().values(
                id=job.id, workspace_id=workspace.id, kind=kind, title=title, settings=json.dumps(job.settings),
                status=QUEUED, progress="{}", curve="[]", error=None, result="[]", created=job.created,
                server=server))
        return job

    def get(self, workspace: Workspace, job_id: str) -> JobRecord:
        with db_errors(self.engine), self.engine.connect() as conn:
            row = conn.execute(select(JOBS).where(JOBS.c.id == str(job_id),
                                                  JOBS.c.workspace_id == workspace.id)).first()
        if row is None:
            raise StoreError(f"There is no job {job_id!r} in this workspace.")
        return _record(row)

    def list(self, workspace: Workspace, limit: int = 100) -> list[JobRecord]:
        """The workspace's jobs, newest first."""
        query = (select(JOBS).where(JOBS.c.workspace_id == workspace.id)
                 .order_by(JOBS.c.created.desc(), JOBS.c.id).limit(limit))
        with db_errors(self.engine), self.engine.connect() as conn:
            return [_record(row) for row in conn.execute(query)]

    def cancel(self, workspace: Workspace, job_id: str) -> bool:
        """Mark a queued or running job cancelled; True if it was. The worker learns it from progress()."""
        return self._move(job_id, ACTIVE, CANCELLED, JOBS.c.workspace_id == workspace.id, finished=time.time())

    def resubmit(self, workspace: Workspace, job_id: str, server: str = "") -> JobRecord:
        """A new queued job with the same kind, title and settings ("Run again")."""
        old = self.get(workspace, job_id)
        return self.create(workspace, old.kind, old.title, old.settings, server)

    # --- the worker's calls ----------------------------------------------------------------------------

    def start(self, job_id: str, worker: str = "") -> bool:
        """queued → running; False if the job is no longer queued (cancelled meanwhile): skip it."""
        return self._move(job_id, (QUEUED,), RUNNING, started=time.time(), worker=worker)

    def progress(self, job_id: str, event: dict, points: list[dict] = ()) -> bool:
        """Overwrite the last event and append curve points; False once the job is no longer running
        (cancelled from a page, perhaps in another process): the worker should stop."""
        with db_errors(self.engine), self._writer.begin() as conn:
            row = conn.execute(select(JOBS.c.status, JOBS.c.curve).where(JOBS.c.id == job_id)
                               .with_for_update()).first()
            if row is None or row.status != RUNNING:
                return False
            curve = thin(json.loads(row.curve) + list(points))
            conn.execute(update(JOBS).where(JOBS.c.id == job_id).values(
                progress=json.dumps(event, default=str), curve=json.dumps(curve, default=str)))
        return True

    def finish(self, job_id: str, variant_ids: list[str] = ()) -> None:
        """Record the variants the job made (kept already); running → done. A cancelled job stays
        cancelled but keeps the ids of what it made before it stopped."""
        result = json.dumps(list(variant_ids))
        if not self._move(job_id, (RUNNING,), DONE, finished=time.time(), result=result):
            self._move(job_id, (CANCELLED,), CANCELLED, result=result)

    def fail(self, job_id: str, error: str) -> None:
        """queued or running → failed, with a message for the page (never a traceback)."""
        self._move(job_id, ACTIVE, FAILED, finished=time.time(), error=str(error)[:MAX_ERROR_CHARS])

    def mark_interrupted(self, server: str | None = None) -> int:
        """At server start: jobs left queued or running by a process that died become interrupted
        (a page offers "Run again"). `server` limits this to the jobs that server queued — for several
        app processes sharing one PostgreSQL database; None takes every active job (one server).
        Returns how many were marked."""
        where = [JOBS.c.status.in_(ACTIVE)] + ([JOBS.c.server == server] if server is not None else [])
        with db_errors(self.engine), self._writer.begin() as conn:
            return conn.execute(update(JOBS).where(*where).values(
                status=INTERRUPTED, finished=time.time(),
                error="The server stopped before this job finished. Run it again.")).rowcount

    def _move(self, job_id: str, from_statuses, status: str, *condition, **values) -> bool:
        with db_errors(self.engine), self._writer.begin() as conn:
            return conn.execute(update(JOBS).where(JOBS.c.id == str(job_id), JOBS.c.status.in_(from_statuses),
                                                   *condition).values(status=status, **values)).rowcount == 1


def _record(row) -> JobRecord:
    return JobRecord(row.id, row.kind, row.title, json.loads(row.settings), row.status, json.loads(row.progress),
                     json.loads(row.curve), row.error, json.loads(row.result), row.created, row.started,
                     row.finished, row.server, row.worker)
