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

The waiting line is the engine's. Dask sends a task that has no dependencies and belongs to a small
group to a worker the moment it is submitted, and that worker keeps it in its own line (the scheduler
holds tasks back only for groups larger than twice the cluster's threads: Scheduler.is_rootish,
decide_worker_non_rootish). A job could then wait behind a long one on its worker while a later job
starts on another. So the engine hands Dask a job only when some worker has none, taking waiting jobs
first come, first served across workspaces: a job's place in line is exact, and a waiting job is
cancelled without ever reaching Dask. Dask still picks the worker, runs the job in its process,
restarts a worker that dies (its nanny) and reports failures.

Fairness: at most `per_workspace` (default 1) jobs of one workspace are waiting or running; another
submit raises JobRefused, whose message tells the student what to do.

Progress and Stop (compression/runner.py): report(**fields) events are buffered in the worker and sent
every runner.FLUSH_S (0.25 s) as one structured event (Worker.log_event) to a topic this engine
subscribes to (Client.subscribe_topic): they arrive in order, within about FLUSH_S and a network hop.
Stop sets a distributed.Event that the worker reads as often: the task sees stop() true between steps
(a Future's cancel cannot interrupt a running task), ends, and returns what it has (status
"cancelled", result kept).

Failure: a worker that dies (SIGKILL, the nanny's memory limit) fails only the job it was running, with
WORKER_LOST. The local cluster sets distributed.scheduler.allowed-failures to 0, so Dask fails that job
at once (KilledWorker) instead of running it again on another worker; on a cluster whose scheduler
retries (its default is 3), the retry finds the job's "started" flag and fails at once with the same
message (runner.run_job). The nanny starts a fresh worker process, and the next job runs there.

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
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from dataclasses import replace
from typing import Callable

import dask
from distributed import Client, Event, KilledWorker, LocalCluster

from .job_view import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobRefused, JobView  # noqa: F401 (re-exported)
from .runner import WORKER_LOST, WorkerLost, flag, run_job
from .tasks import check_task

TICK_S = 1.0              # look for a free worker at least this often while jobs wait
CONNECT_TIMEOUT_S = 10
log = logging.getLogger(__name__)
_seq = itertools.count()


class _Job:
    """The engine's side of a job: its latest view (replaced, never changed), what it runs, its Future."""

    def __init__(self, view: JobView, spec: dict, resources: dict):
        self.view, self.spec, self.resources = view, spec, resources
        self.seq = next(_seq)
        self.future = None                          # the dask Future, once handed to Dask

    def update(self, **changes) -> None:
        self.view = replace(self.view, **changes)

    @property
    def key(self) -> str:
        return f"playground-job-{self.view.id}"


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
        self._lock = threading.RLock()              # never held while calling Dask (its thread takes it too)
        self._inbox: queue.Queue = queue.Queue()
        self._loop: threading.Thread | None = None
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        self._closed = False

    # --- what pages call -------------------------------------------------------------------------------

    def submit(self, workspace: str, kind: str, title: str, task: str, spec: dict,
               resources: dict | None = None) -> str:
        """Put task `task` (a name in compression.tasks.TASKS) on `spec` in line; returns the job's id.
        resources={"GPU": 1}: prefer a worker that offers it (see the module docstring)."""
        check_task(task)
        with self._lock:
            if self._closed:
                raise JobRefused("the job engine has shut down; restart the app.")
            mine = [j.view for j in self._jobs.values() if j.view.workspace == workspace and j.view.active]
            if len(mine) >= self.per_workspace:
                raise JobRefused(f"“{mine[0].title}” is still {mine[0].status} in your workspace: wait for it "
                                 f"to finish or stop it, then start this one.")
            job = _Job(JobView(uuid.uuid4().hex[:16], workspace, kind, title, task, time.time()), spec,
                       dict(resources or {}))
            self._jobs[job.view.id] = job
            if self._loop is None:
                self._loop = threading.Thread(target=self._run_loop, name="job-engine", daemon=True)
                self._loop.start()
        self._inbox.put((job.view.id, True))
        return job.view.id

    def job(self, job_id: str) -> JobView:
        """The job's latest view (KeyError once it is long finished: the engine keeps `keep_finished`)."""
        with self._lock:
            return self._view(self._jobs[job_id])

    def jobs(self, workspace: str | None = None) -> list[JobView]:
        """Jobs in the order they were submitted (of one workspace, or all)."""
        with self._lock:
            return [self._view(j) for j in sorted(self._jobs.values(), key=lambda j: j.seq)
                    if workspace is None or j.view.workspace == workspace]

    def stop(self, job_id: str) -> None:
        """A waiting job is cancelled and never runs; a running one ends between two steps."""
        with self._lock:
            job = self._jobs[job_id]
            if not job.view.active or job.view.stop_requested:
                return
            job.update(stop_requested=True)
            future, running = job.future, job.view.status == RUNNING
            if future is None:                      # still in the engine's line
                job.update(status=CANCELLED, finished=time.time())
        if future is not None:                      # a scheduler out of reach: logged, the job keeps running
            self._quietly(lambda: Event(flag("stop", job_id), client=self._client).set())
            if not running:
                self._quietly(future.cancel)
        self._inbox.put((job_id, False))

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
            active = [j for j in self._jobs.values() if j.view.active]
            for job in active:
                job.update(stop_requested=True, status=CANCELLED, finished=time.time(),
                           error="the app shut down while the job was waiting or running")
        for job in active:
            if job.future is not None:
                self._quietly(lambda: Event(flag("stop", job.view.id), client=self._client).set())
            self._notify(job.view.id)
        if self._loop is not None:
            self._inbox.put(None)
            self._loop.join(timeout=10)
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    # --- the engine's thread: start the cluster, hand jobs to Dask, tell on_update ----------------------

    def _run_loop(self) -> None:
        """Inbox items: (job id, whether a worker may have freed or a job joined the line); None: close."""
        last_dispatch = 0.0
        while True:
            try:
                items = [self._inbox.get(timeout=TICK_S)]
            except queue.Empty:
                items = []
            while not self._inbox.empty():
                items.append(self._inbox.get_nowait())
            if None in items:
                return
            if any(line_moved for _, line_moved in items) or time.monotonic() - last_dispatch >= TICK_S:
                last_dispatch = time.monotonic()
                try:
                    self._dispatch()
                except Exception:                   # a scheduler briefly out of reach: try again next tick
                    log.exception("could not hand jobs to Dask")
            for job_id in dict.fromkeys(job_id for job_id, _ in items):
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
            queued = sorted((j for j in self._jobs.values() if j.view.status == QUEUED), key=lambda j: j.seq)
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
        for job in queued:
            if job.future is not None and job.key not in in_dask:     # handed over, not yet placed by Dask
                _take_worker(free, _usable(job.resources, offered))
        for job in waiting:
            need = _usable(job.resources, offered)
            if _take_worker(free, need) is not None:
                self._hand_over(job, need)

    def _hand_over(self, job: _Job, resources: dict) -> None:
        future = self._client.submit(run_job, job.view.id, job.view.task, job.spec, self._topic, key=job.key,
                                     pure=False, resources=resources or None)
        with self._lock:
            stopped = not job.view.active           # stopped while Dask took it
            if not stopped:
                job.future = future
        if stopped:
            future.cancel()
        else:
            future.add_done_callback(lambda f: self._on_done(job, f))

    def _on_message(self, event: tuple) -> None:
        """A worker's message (on the Dask client's thread): the job started, or progress events."""
        _, message = event
        with self._lock:
            job = self._jobs.get(message.get("job"))
            if job is None or not job.view.active:
                return
            if "info" in message:
                info = message["info"]
                job.update(status=RUNNING, started=time.time(), worker=info["worker"], device=info["device"],
                           pid=info["pid"])
            if message.get("events"):
                job.update(events=job.view.events + tuple(message["events"]))
        self._inbox.put((job.view.id, False))

    def _on_done(self, job: _Job, future) -> None:
        if not job.view.active:
            return
        if future.status in ("finished", "error"):
            try:
                out = future.result()
            except Exception as exc:                # the task raised, or its worker died
                self._end(job, FAILED, error=job_error(exc), detail=_traceback(exc))
            else:
                self._end(job, CANCELLED if out["stopped"] else DONE, result=out["output"])
        elif job.view.stop_requested:
            self._end(job, CANCELLED)
        else:
            self._end(job, FAILED, error="the cluster dropped the job (did its scheduler restart?); start it again.")

    def _end(self, job: _Job, status: str, error: str | None = None, detail: str | None = None,
             result: dict | None = None) -> None:
        with self._lock:
            job.update(status=status, error=error, detail=detail, result=result, finished=time.time())
            handed_over, job.future = job.future is not None, None
            self._forget_old()
        if handed_over:
            for name in ("stop", "started"):
                self._quietly(lambda: Event(flag(name, job.view.id), client=self._client).clear())
        self._inbox.put((job.view.id, True))

    def _forget_old(self) -> None:
        finished = sorted((j for j in self._jobs.values() if not j.view.active), key=lambda j: j.seq)
        for job in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.view.id]

    def _notify(self, job_id: str) -> None:
        if self.on_update is None:
            return
        with self._lock:
            job = self._jobs.get(job_id)
            view = self._view(job) if job is not None else None
        if view is not None:
            self._quietly(lambda: self.on_update(view))

    def _view(self, job: _Job) -> JobView:
        if job.view.status != QUEUED:
            return job.view
        ahead = sum(1 for j in self._jobs.values() if j.view.status == QUEUED and j.seq < job.seq)
        return replace(job.view, position=ahead + 1)

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


def _traceback(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(exc))


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
