"""What a page or the store sees of a long job: its status, place in line, worker and progress, as an
immutable snapshot (compression/engine.py replaces it on every change)."""
from __future__ import annotations

from dataclasses import dataclass

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"


class JobRefused(Exception):
    """A submit the engine does not take (e.g. the workspace already has a job); the message says why."""


@dataclass(frozen=True)
class JobView:
    """A job as a page or a store sees it: a snapshot, safe to keep."""
    id: str
    workspace: str
    kind: str                      # the page's name for it, e.g. "prune_ft"
    title: str
    task: str                      # its name in compression.tasks.TASKS
    submitted: float
    status: str = QUEUED
    position: int = 0              # while queued: 1 + the jobs ahead of it in line; else 0
    worker: str | None = None      # the address of the worker that runs / ran it
    device: str | None = None      # e.g. "NVIDIA H100" or "AMD EPYC, 1 thread"
    pid: int | None = None         # the worker's process
    events: tuple[dict, ...] = ()  # progress events, oldest first
    error: str | None = None       # one line for the page, never a traceback
    detail: str | None = None      # the traceback, for logs
    result: dict | None = None     # {"variants": [payload, ...]}: see tasks.run
    started: float | None = None
    finished: float | None = None
    stop_requested: bool = False

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    @property
    def latest(self) -> dict | None:
        return self.events[-1] if self.events else None
