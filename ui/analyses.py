"""Short background work that stays in the app's process: accuracy curves, per-layer sensitivity and the
CIFAR-10 download. They are slider-sized (seconds to a minute), read the models the pages already hold
and must never wait behind a training run, so they do not go to the job engine (ui/jobs.py) but to one
small thread of their own.

Each piece of work has a key (its variant id and settings) and runs once per server: every session
that asks for the same key gets the same task, and its result lands in results()[key]. A task's
function receives the task: it reports progress with `task.report(**fields)` and checks
`task.should_stop()` between steps. Nothing here draws; pages read tasks in their own code.

At exit every task is asked to stop and the thread is given a moment to finish its step: a thread
killed inside a torch kernel aborts the whole process ("terminate called without an active exception").
"""
from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
log = logging.getLogger("playground")


@dataclass(eq=False)
class Task:
    title: str
    fn: Callable[["Task"], Any]
    status: str = QUEUED
    result: Any = None
    error: str | None = None                 # one line for the page
    events: list[dict] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def report(self, **event) -> None:
        self.events.append({"t": time.time(), **event})          # list.append is atomic

    def latest(self) -> dict | None:
        return self.events[-1] if self.events else None

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)


class Pool:
    """One daemon thread taking tasks in order; tasks and results by key."""

    def __init__(self) -> None:
        self.tasks: dict[Hashable, Task] = {}
        self.results: dict[Hashable, Any] = {}
        self._queue: queue.Queue[tuple[Hashable, Task]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="playground-analyses", daemon=True)
        self._thread.start()

    def start(self, key: Hashable, title: str, fn: Callable[[Task], Any]) -> Task:
        """Run `fn` once for `key` (again only if its last run failed or was stopped)."""
        existing = self.tasks.get(key)
        if existing is not None and (existing.active or existing.status == DONE):
            return existing
        task = self.tasks[key] = Task(title, fn)
        self._queue.put((key, task))
        return task

    def running(self) -> bool:
        return any(t.status == RUNNING for t in list(self.tasks.values()))

    def shutdown(self, timeout: float = 30.0) -> None:
        for task in list(self.tasks.values()):
            task.stop()
        end = time.time() + timeout
        while self.running() and time.time() < end:
            time.sleep(0.05)

    def _work(self) -> None:
        while True:
            key, task = self._queue.get()
            if task.should_stop():
                task.status = CANCELLED
                continue
            task.status = RUNNING
            try:
                result = task.fn(task)
            except Exception as exc:  # the page shows one line; the traceback goes to the log
                log.exception("%s failed", task.title)
                task.error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                task.status = FAILED
                continue
            if task.should_stop():
                task.status = CANCELLED
            else:
                self.results[key] = task.result = result
                task.status = DONE


_pool: Pool | None = None
_pool_lock = threading.Lock()


def pool() -> Pool:
    """The server's pool, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = Pool()
            atexit.register(_pool.shutdown)
        return _pool


def start(key: Hashable, title: str, fn: Callable[[Task], Any]) -> Task:
    return pool().start(key, title, fn)


def task(key: Hashable) -> Task | None:
    return pool().tasks.get(key)


def results() -> dict:
    """Finished analyses (accuracy curves, sensitivity) by key: shared by every session."""
    return pool().results
