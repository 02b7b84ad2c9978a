"""What a Dask worker runs for a job of compression/engine.py: it says where it runs, runs the task of
compression/tasks.py with the worker's threads, sends the task's progress to the engine and passes the
engine's Stop on to the task.

Progress: report(**fields) appends to a buffer; a thread sends the buffer every FLUSH_S seconds as one
structured event (Worker.log_event on the engine's topic), so a task reporting every step costs one
message per FLUSH_S, and events stay in order. Stop: the same thread reads the job's distributed.Event
every FLUSH_S, so the task's stop() between two training steps is a plain attribute read.

A job runs once: it sets its "started" flag (a distributed.Event) first, and a run that finds the flag
set is Dask running it again after its worker died — it fails at once with WORKER_LOST instead.
"""
from __future__ import annotations

import json
import os
import threading
import time

from distributed import Event, get_client, get_worker

from .tasks import run as run_task

FLUSH_S = 0.25
WORKER_LOST = ("the worker running this job stopped (killed or out of memory), so the job ended; other jobs "
               "carry on. Start it again, with a smaller model or batch size if it ran out of memory.")


class WorkerLost(RuntimeError):
    """The job's worker died while running it."""


def flag(name: str, job_id: str) -> str:
    """The name of a job's distributed.Event: "stop" (the engine asks it to end), "started"."""
    return f"playground-{name}-{job_id}"


def run_job(job_id: str, task: str, spec: dict, topic: str) -> dict:
    """Run on a Dask worker: {"stopped": whether Stop was asked, "output": tasks.run's result or None}."""
    import torch

    from .train import hardware_name, pick_device

    worker, client = get_worker(), get_client()
    started = Event(flag("started", job_id), client=client)
    if started.is_set():                     # a Dask retry after the worker died running it
        raise WorkerLost(WORKER_LOST)
    started.set()
    threads = worker.state.nthreads          # one job per worker: all its threads are the job's
    torch.set_num_threads(threads)
    channel = Channel(worker, topic, job_id, Event(flag("stop", job_id), client=client))
    worker.log_event(topic, {"job": job_id, "info": {"worker": worker.address, "pid": os.getpid(),
                                                     "device": hardware_name(pick_device()), "threads": threads}})
    try:
        output = None if channel.stop() else run_task(task, spec, channel.report, channel.stop)
    finally:
        channel.close()
    return {"stopped": channel.stop(), "output": output}


class Channel:
    """A job's progress and stop flag on the worker side (see the module docstring)."""

    def __init__(self, worker, topic: str, job_id: str, stop_flag: Event):
        self._worker, self._topic, self._job_id, self._flag = worker, topic, job_id, stop_flag
        self._buffer: list[dict] = []
        self._lock = threading.Lock()
        self._stopped = stop_flag.is_set()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"job-{job_id}-channel", daemon=True)
        self._thread.start()

    def report(self, **fields) -> None:
        event = json.loads(json.dumps({"t": time.time(), **fields}, default=_plain))
        with self._lock:
            self._buffer.append(event)

    def stop(self) -> bool:
        return self._stopped

    def close(self) -> None:
        self._closing.set()
        self._thread.join()
        self._flush()

    def _run(self) -> None:
        while not self._closing.wait(FLUSH_S):
            self._flush()
            try:
                self._stopped = self._stopped or self._flag.is_set()
            except Exception:                  # the scheduler out of reach for a moment: ask again next time
                pass

    def _flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
        if batch:
            self._worker.log_event(self._topic, {"job": self._job_id, "events": batch})


def _plain(value):
    """JSON for what a task may report besides plain numbers and strings (numpy scalars, tensors)."""
    return value.item() if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 else str(value)
