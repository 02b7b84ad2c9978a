"""Background jobs: long work (training, fine-tuning, distillation) runs here, never in a page.

A `JobQueue` owns a fixed number of worker threads (bounded: a 2-core laptop trains one model at a
time well, two badly). Jobs wait their turn in order; anyone can ask a job's place in the queue.
A job function receives its `Job`, reports progress with `job.report(...)` and checks
`job.should_stop()` between steps. Nothing here knows about Streamlit: pages only read `Job` fields.
"""
from __future__ import annotations

import atexit
import itertools
import queue
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
_ids = itertools.count(1)
_queues: "weakref.WeakSet[JobQueue]" = weakref.WeakSet()


@dataclass(eq=False)
class Job:
    title: str
    fn: Callable[["Job"], Any]
    owner: str = ""
    kind: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    status: str = QUEUED
    events: list[dict] = field(default_factory=list)     # progress reports, oldest first
    result: Any = None
    error: str | None = None                             # a message for the page, never a traceback
    detail: str | None = None                            # the traceback, for logs
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    collected: bool = False                              # the owner has taken the result
    threads: int | None = None                           # torch threads for this job (None: leave as is)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def report(self, **event) -> None:
        with self._lock:
            self.events.append({"t": time.time(), **event})

    def snapshot(self) -> list[dict]:
        with self._lock:
            return list(self.events)

    def latest(self) -> dict | None:
        with self._lock:
            return self.events[-1] if self.events else None

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)


class JobQueue:
    def __init__(self, workers: int = 1, keep_finished: int = 200):
        self._queue: queue.Queue[Job] = queue.Queue()
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self._keep = keep_finished
        self._threads = [threading.Thread(target=self._work, name=f"compression-worker-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()
        _queues.add(self)

    def submit(self, title: str, fn: Callable[[Job], Any], owner: str = "", kind: str = "",
               threads: int | None = None) -> Job:
        job = Job(title, fn, owner, kind, threads=threads)
        with self._lock:
            self._jobs.append(job)
            self._forget_old()
        self._queue.put(job)
        return job

    def position(self, job: Job) -> int:
        """0 while running or finished; n ≥ 1 when n − 1 jobs wait ahead of it (plus those running)."""
        if job.status != QUEUED:
            return 0
        with self._lock:
            waiting = [j for j in self._jobs if j.status == QUEUED]
        return waiting.index(job) + 1 if job in waiting else 0

    def running(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs if j.status == RUNNING]

    def jobs(self, owner: str | None = None) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs if owner is None or j.owner == owner]

    def cancel(self, job: Job) -> None:
        """Stop a running job between steps, or drop a queued one."""
        job.stop()
        if job.status == QUEUED:
            job.status, job.finished = CANCELLED, time.time()

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job ends (for tests and the CLI); returns whether it ended."""
        end = None if timeout is None else time.time() + timeout
        while job.active:
            if end is not None and time.time() > end:
                return False
            time.sleep(0.02)
        return True

    def shutdown(self, timeout: float = 30.0) -> bool:
        """Stop every job (running ones between steps) and wait for the running ones to end."""
        for job in self.jobs():
            if job.active:
                self.cancel(job)
        end = time.time() + timeout
        while self.running() and time.time() < end:
            time.sleep(0.05)
        return not self.running()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job.status != QUEUED:        # cancelled while waiting
                continue
            job.status, job.started = RUNNING, time.time()
            try:
                if job.threads:
                    import torch
                    torch.set_num_threads(job.threads)
                job.result = job.fn(job)
                job.status = CANCELLED if job.should_stop() else DONE
            except Exception as exc:  # the page shows the message; the traceback stays in the job
                job.error = friendly_error(exc)
                job.detail = traceback.format_exc()
                job.status = FAILED
            job.finished = time.time()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs if not j.active]
        for j in finished[:max(0, len(finished) - self._keep)]:
            self._jobs.remove(j)


def friendly_error(exc: BaseException) -> str:
    """One line a student can act on."""
    if isinstance(exc, MemoryError):
        return "Ran out of memory. Try a smaller batch size or a smaller model."
    if isinstance(exc, FloatingPointError):
        return f"Training diverged: {exc}."
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return message


@atexit.register
def shutdown_all(timeout: float = 30.0) -> None:
    """At exit, stop every queue's jobs first: a worker thread killed inside a torch kernel aborts the
    whole process ("terminate called without an active exception")."""
    for q in list(_queues):
        q.shutdown(timeout)
