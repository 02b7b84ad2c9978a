"""Long jobs (training, fine-tuning, QAT, distillation, pipelines, int8 builds) on Dask distributed,
behind one small interface that is the same whether the cluster is this machine or a department's.

    engine = Engine(on_update=record)            # costs nothing: the cluster starts on the first job
    job_id = engine.submit(workspace, kind, title, "finetune", spec)   # spec: see compression/tasks.py
    view = engine.job(job_id)                    # status, place in line, worker, device, events, result
    engine.stop(job_id)                          # a waiting job never runs; a running one ends between steps

Where jobs run
- With no configuration: a dask LocalCluster of worker *processes* on this machine, started on the first
  submit and closed by close() or at exit. Sizing rule, with c cores: one core stays with the app (its
  pages), each worker gets two of the others:
      workers = max(1, (c − 1) // 2),   threads per worker = max(1, (c − 1) // workers)
  2 cores → 1 worker × 1 thread, 4 → 1 × 3, 8 → 3 × 2, 16 → 7 × 2. PLAYGROUND_WORKERS=n sets the
  number of workers (threads per worker as above).
- PLAYGROUND_SCHEDULER=tcp://host:8786: the cluster of a `dask scheduler` there and its `dask worker`s.

One job per worker at a time, with torch using all of the worker's threads: `dask worker --nthreads N`
is the cores one job gets, `--nworkers K` how many jobs that machine runs at once.

The waiting line is the engine's. Dask sends a one-off task to a worker the moment it is submitted and
keeps a line per worker (only large groups of like tasks wait at the scheduler): measured on a local
cluster of two workers, a job submitted behind a long one waited on that worker while four later jobs
ran on the other. So the engine hands Dask a job only when some worker has none, taking waiting jobs
first come, first served across workspaces. A job's place in line is therefore exact, and a waiting job
is cancelled without ever reaching Dask. Dask still picks the worker, runs the job in its process,
restarts a worker that dies (its nanny) and reports failures.

Fairness: at most `per_workspace` (default 1) jobs of one workspace are waiting or running; another
submit raises JobRefused, whose message tells the student what to do.

Progress and Stop: report(**fields) events are buffered in the worker and sent every FLUSH_S seconds
as one structured event (Worker.log_event) to a topic this engine subscribes to (Client.subscribe_topic):
they arrive in order, within about FLUSH_S + a network hop. Stop sets a distributed.Event that the worker
polls every FLUSH_S: the task sees stop() true between steps (a Future's cancel cannot interrupt a
running task), ends, and returns what it has (status "cancelled", result kept).

Failure: a worker that dies (SIGKILL, the nanny's memory limit) fails only the job it was running, with
WORKER_LOST. The local cluster sets distributed.scheduler.allowed-failures to 0, so Dask fails that job
at once (KilledWorker) instead of running it again on another worker; on a cluster whose scheduler
retries (its default is 3), the retry finds the job's "started" flag and fails at once with the same
message. The nanny starts a fresh worker process, and the next job runs there.

Devices: a worker trains on CUDA when its machine has it (train.pick_device). resources={"GPU": 1}
makes a job prefer a GPU worker (`dask worker --resources GPU=1`): while the cluster has one, the job
waits for it; when it has none, the job runs on any worker. The record says where it ran (worker
address, device name).

on_update(view) is called on an engine thread after every change of a job (progress, status, end),
at most once per job per round of the engine's loop: the place to persist job records.

Security: Dask moves tasks and results between its processes with pickle, so anyone who can reach the
scheduler's port can run code on the workers. Run a cluster on a private network (or with Dask's TLS);
the app itself never unpickles anything a user uploads (jobs carry packed weights, see portable.py).
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from typing import Callable

import dask
from distributed import Client, Event, KilledWorker, LocalCluster, get_client, get_worker

from .tasks import check_task, run as run_task

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FLUSH_S = 0.25            # worker: send buffered progress and look at the stop flag this often
TICK_S = 1.0              # engine: look for a free worker at least this often while jobs wait
CONNECT_TIMEOUT_S = 10
WORKER_LOST = ("the worker running this job stopped (killed or out of memory), so the job ended; other jobs "
               "carry on. Start it again, with a smaller model or batch size if it ran out of memory.")
log = logging.getLogger(__name__)
_seq = itertools.count()


class JobRefused(Exception):
    """A submit the engine does not take (e.g. the workspace already has a job); the message says why."""


class WorkerLost(RuntimeError):
    """The job's worker died while running it."""


@dataclass(frozen=True)
class JobView:
    """A job as a page or a store sees it: a snapshot, safe to keep."""
    id: str
    workspace: str
    kind: str
    title: str
    task: str
    status: str
    position: int                  # 1 + jobs ahead of it in line while queued; 0 otherwise
    worker: str | None             # address of the worker running / that ran it
    device: str | None             # e.g. "NVIDIA H100" or "Intel Xeon …, 1 threads"
    pid: int | None                # the worker process
    events: tuple[dict, ...]       # progress events, oldest first
    error: str | None              # one line for the page, never a traceback
    detail: str | None             # the traceback, for logs
    result: dict | None            # {"variants": [payload, ...]}: see tasks.run
    submitted: float
    started: float | None
    finished: float | None
    stop_requested: bool

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    @property
    def latest(self) -> dict | None:
        return self.events[-1] if self.events else None


@dataclass(eq=False)
class _Job:
    id: str
    workspace: str
    kind: str
    title: str
    task: str
    spec: dict
    resources: dict
    seq: int = field(default_factory=lambda: next(_seq))
    status: str = QUEUED
    future: object = None          # the dask Future once handed to Dask
    worker: str | None = None
    device: str | None = None
    pid: int | None = None
    events: list = field(default_factory=list)
    error: str | None = None
    detail: str | None = None
    result: dict | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    stop_requested: bool = False

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    @property
    def key(self) -> str:
        return f"playground-job-{self.id}"


def local_cluster_size(cores: int | None = None, workers: int | None = None) -> tuple[int, int]:
    """(workers, threads per worker) for a LocalCluster: the sizing rule in the module docstring."""
    spare = max(1, (cores or os.cpu_count() or 1) - 1)
    workers = workers or max(1, spare // 2)
    return workers, max(1, spare // workers)


class Engine:
    def __init__(self, scheduler: str | None = None, workers: int | None = None, per_workspace: int = 1,
                 on_update: Callable[[JobView], None] | None = None, keep_finished: int = 200):
        """scheduler: a Dask scheduler's address (default $PLAYGROUND_SCHEDULER; none: a local cluster);
        workers: the local cluster's worker count (default $PLAYGROUND_WORKERS, else the sizing rule)."""
        self.scheduler = scheduler or os.environ.get("PLAYGROUND_SCHEDULER") or None
        self.workers = workers or int(os.environ.get("PLAYGROUND_WORKERS") or 0) or None
        self.per_workspace = per_workspace
        self.on_update = on_update
        self.keep_finished = keep_finished
        self._topic = f"playground-events-{uuid.uuid4().hex}"
        self._jobs: dict[str, _Job] = {}
        self._lock = threading.RLock()
        self._inbox: queue.Queue = queue.Queue()
        self._loop: threading.Thread | None = None
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        self._closed = False

    # --- what pages call -------------------------------------------------------------------------------

    def submit(self, workspace: str, kind: str, title: str, task: str, spec: dict,
               resources: dict | None = None) -> str:
        """Queue task `task` (a name in compression.tasks.TASKS) on `spec`; returns the job's id."""
        check_task(task)
        with self._lock:
            if self._closed:
                raise JobRefused("the job engine has shut down; restart the app.")
            mine = [j for j in self._jobs.values() if j.workspace == workspace and j.active]
            if len(mine) >= self.per_workspace:
                raise JobRefused(f"“{mine[0].title}” is still {mine[0].status} in your workspace: wait for it "
                                 f"to finish or stop it, then start this one.")
            job = _Job(uuid.uuid4().hex[:16], workspace, kind, title, task, spec, dict(resources or {}))
            self._jobs[job.id] = job
            if self._loop is None:
                self._loop = threading.Thread(target=self._run_loop, name="job-engine", daemon=True)
                self._loop.start()
        self._inbox.put(job.id)
        return job.id

    def job(self, job_id: str) -> JobView:
        with self._lock:
            return self._view(self._jobs[job_id])

    def jobs(self, workspace: str | None = None) -> list[JobView]:
        """Jobs in the order they were submitted (of one workspace, or all)."""
        with self._lock:
            return [self._view(j) for j in sorted(self._jobs.values(), key=lambda j: j.seq)
                    if workspace is None or j.workspace == workspace]

    def stop(self, job_id: str) -> None:
        """A waiting job is cancelled and never runs; a running one ends between two steps."""
        with self._lock:
            job = self._jobs[job_id]
            if not job.active or job.stop_requested:
                return
            job.stop_requested = True
            future, running = job.future, job.status == RUNNING
            if future is None:
                job.status, job.finished = CANCELLED, time.time()
        if future is not None:
            Event(_flag("stop", job_id), client=self._client).set()
            if not running:
                future.cancel()
        self._inbox.put(job_id)

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Block until the job has ended (for scripts and tests); returns its view either way."""
        end = None if timeout is None else time.monotonic() + timeout
        while self.job(job_id).active and (end is None or time.monotonic() < end):
            time.sleep(0.05)
        return self.job(job_id)

    @property
    def scheduler_address(self) -> str | None:
        """Where the cluster is, once started (None before the first job)."""
        return self._client.scheduler.address if self._client is not None else None

    def close(self) -> None:
        """Stop every job, then the cluster (when it is ours). Called at exit too."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            active = [j for j in self._jobs.values() if j.active]
            for job in active:
                job.stop_requested, job.status, job.finished = True, CANCELLED, time.time()
                job.error = "the app shut down while the job was waiting or running"
        for job in active:
            if job.future is not None:
                self._quietly(lambda: Event(_flag("stop", job.id), client=self._client).set())
            self._notify(job.id)
        if self._loop is not None:
            self._inbox.put(None)
            self._loop.join(timeout=10)
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    # --- the engine's loop: start the cluster, hand jobs to Dask, tell on_update ------------------------

    def _run_loop(self) -> None:
        while True:
            try:
                changed = {self._inbox.get(timeout=TICK_S)}
            except queue.Empty:
                changed = set()
            while not self._inbox.empty():
                changed.add(self._inbox.get_nowait())
            if None in changed:
                return
            try:
                self._dispatch()
            except Exception:                        # a scheduler briefly out of reach: try again next tick
                log.exception("could not hand jobs to Dask")
            for job_id in changed:
                self._notify(job_id)

    def _connect(self) -> None:
        if self._client is not None:
            return
        if self.scheduler:
            client = Client(self.scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        else:
            workers, threads = local_cluster_size(workers=self.workers)
            with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
                self._cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                                             dashboard_address=":0")
            client = Client(self._cluster, set_as_default=False)
        client.subscribe_topic(self._topic, self._on_message)
        self._client = client
        atexit.register(_close_at_exit, weakref.ref(self))

    def _dispatch(self) -> None:
        """Hand waiting jobs to Dask, oldest first, while some worker has no job."""
        with self._lock:
            queued = sorted((j for j in self._jobs.values() if j.status == QUEUED), key=lambda j: j.seq)
        waiting = [j for j in queued if j.future is None]
        if not waiting:
            return
        try:
            self._connect()
        except Exception as exc:
            where = self.scheduler or "a local cluster"
            for job in waiting:
                self._end(job, FAILED, error=f"could not start the job engine on {where} ({exc}). Check that "
                                            f"the Dask scheduler runs there, or unset PLAYGROUND_SCHEDULER.")
            return
        workers = self._client.scheduler_info(n_workers=-1)["workers"]
        busy = self._client.processing()
        in_dask = {k for keys in busy.values() for k in keys}
        free = [workers[a].get("resources") or {} for a in workers if not busy.get(a)]
        offered = {r for w in workers.values() for r, n in (w.get("resources") or {}).items() if n > 0}
        for job in [j for j in queued if j.future is not None and j.key not in in_dask and j.status == QUEUED]:
            _take_worker(free, _usable(job.resources, offered))      # handed over, not yet placed by Dask
        for job in waiting:
            need = _usable(job.resources, offered)
            if _take_worker(free, need) is not None:
                self._hand_over(job, need)

    def _hand_over(self, job: _Job, resources: dict) -> None:
        future = self._client.submit(_run_job, job.id, job.task, job.spec, self._topic, key=job.key, pure=False,
                                     resources=resources or None)
        with self._lock:
            stopped = not job.active             # stopped while Dask took it
            if not stopped:
                job.future = future
        if stopped:
            future.cancel()
        else:
            future.add_done_callback(lambda f: self._on_done(job.id, f))

    def _on_message(self, event: tuple) -> None:
        """A worker's message (on the Dask client's thread): the job started, or progress events."""
        _, message = event
        with self._lock:
            job = self._jobs.get(message.get("job"))
            if job is None or not job.active:
                return
            if "info" in message:
                info = message["info"]
                job.status, job.started = RUNNING, time.time()
                job.worker, job.device, job.pid = info["worker"], info["device"], info["pid"]
            job.events.extend(message.get("events", ()))
        self._inbox.put(job.id)

    def _on_done(self, job_id: str, future) -> None:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or not job.active:
            return
        if future.status == "finished":
            out = future.result()
            self._end(job, CANCELLED if out["stopped"] else DONE, result=out["output"])
        elif future.status == "error":
            exc = future.exception()
            self._end(job, FAILED, error=job_error(exc), detail=_traceback(future))
        else:
            self._end(job, CANCELLED if job.stop_requested else FAILED,
                      error=None if job.stop_requested else "the cluster dropped the job (its scheduler restarted?)")

    def _end(self, job: _Job, status: str, error: str | None = None, detail: str | None = None,
             result: dict | None = None) -> None:
        with self._lock:
            job.status, job.error, job.detail, job.result, job.finished = status, error, detail, result, time.time()
            handed_over, job.future = job.future is not None, None
            self._forget_old()
        if handed_over:
            for name in ("stop", "started"):
                self._quietly(lambda: Event(_flag(name, job.id), client=self._client).clear())
        self._inbox.put(job.id)

    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if not j.active), key=lambda j: j.seq)
        for job in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]

    def _notify(self, job_id: str) -> None:
        if self.on_update is None:
            return
        with self._lock:
            job = self._jobs.get(job_id)
            view = self._view(job) if job is not None else None
        if view is not None:
            self._quietly(lambda: self.on_update(view))

    def _view(self, job: _Job) -> JobView:
        position = 0
        if job.status == QUEUED:
            ahead = [j for j in self._jobs.values() if j.status == QUEUED and j.seq < job.seq]
            position = len(ahead) + 1
        return JobView(job.id, job.workspace, job.kind, job.title, job.task, job.status, position, job.worker,
                       job.device, job.pid, tuple(job.events), job.error, job.detail, job.result, job.submitted,
                       job.started, job.finished, job.stop_requested)

    @staticmethod
    def _quietly(fn: Callable[[], object]) -> None:
        try:
            fn()
        except Exception:
            log.exception("job engine: ignored")


def _usable(resources: dict, offered: set) -> dict:
    """The resources a job asks for that some worker of the cluster has: prefer, never wait forever."""
    return {r: n for r, n in resources.items() if r in offered}


def _take_worker(free: list[dict], need: dict) -> dict | None:
    """Remove and return a free worker's resources that cover `need` (the least-equipped one first, so
    that a job that needs nothing does not take the GPU worker while another is free)."""
    fits = [w for w in free if all(w.get(r, 0) >= n for r, n in need.items())]
    if not fits:
        return None
    worker = min(fits, key=len)
    free.remove(worker)
    return worker


def _close_at_exit(ref: weakref.ref) -> None:
    engine = ref()
    if engine is not None:
        engine.close()


def _flag(name: str, job_id: str) -> str:
    return f"playground-{name}-{job_id}"


def _traceback(future) -> str | None:
    import traceback

    tb = future.traceback()
    return "".join(traceback.format_tb(tb)) if tb is not None else None


def job_error(exc: BaseException) -> str:
    """One line a student can act on."""
    if isinstance(exc, (KilledWorker, WorkerLost)):
        return WORKER_LOST
    if isinstance(exc, MemoryError):
        return "Ran out of memory. Try a smaller batch size or a smaller model."
    if isinstance(exc, FloatingPointError):
        return f"Training diverged: {exc}."
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- in the worker process ----------------------------------------------------------------------------------

def _run_job(job_id: str, task: str, spec: dict, topic: str) -> dict:
    """What a Dask worker runs for a job: say where it runs, then the task, with progress and stop wired
    to the engine. Returns {"stopped": bool, "output": tasks.run's result or None}."""
    import torch

    from .train import hardware_name, pick_device

    worker, client = get_worker(), get_client()
    started = Event(_flag("started", job_id), client=client)
    if started.is_set():                     # a Dask retry after the worker died running it
        raise WorkerLost(WORKER_LOST)
    started.set()
    threads = worker.state.nthreads
    torch.set_num_threads(threads)
    channel = _Channel(worker, topic, job_id, Event(_flag("stop", job_id), client=client))
    worker.log_event(topic, {"job": job_id, "info": {"worker": worker.address, "pid": os.getpid(),
                                                     "device": hardware_name(pick_device()), "threads": threads}})
    try:
        output = None if channel.stop() else run_task(task, spec, channel.report, channel.stop)
    finally:
        channel.close()
    return {"stopped": channel.stop(), "output": output}


class _Channel:
    """A job's progress and stop flag on the worker side: report() buffers events; a thread sends them
    every FLUSH_S (one log_event each time, in order) and reads the stop flag as often, so that stop()
    costs nothing between training steps."""

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
