"""The job engine on real Dask clusters: a LocalCluster of worker processes, and a `dask scheduler` with
`dask worker`s started as separate processes (or the ones CI started: $PLAYGROUND_TEST_SCHEDULER)."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from distributed import Client

from compression.data import eval_subset, load_sample
from compression.engine import (CANCELLED, DONE, FAILED, QUEUED, RUNNING, WORKER_LOST, Engine, JobRefused,
                                local_cluster_size)
from compression.metrics import measure
from compression.models import create_model
from compression.portable import model_payload, variant_payload, variants_from_result
from compression.prune import prune
from compression.tasks import UnknownTask
from compression.variant import measure_variant

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 300                     # a bound so that a broken engine fails the test instead of hanging it
WIDTH = 0.5                      # see test_portable.py: resnet8 at width 0.25 crashes oneDNN with 1 thread


@pytest.fixture(scope="module")
def parent():
    torch.manual_seed(0)
    return measure_variant(create_model("resnet8", WIDTH), "trained", {"arch": "resnet8"})


def finetune_spec(parent, amount=0.5, images=200):
    return {"data": {"source": "sample", "train_images": images}, "parent": variant_payload(parent),
            "model": model_payload(prune(parent.model, amount)), "technique": "pruned",
            "settings": {"amount": amount}, "epochs": 1, "name": f"pruned {amount:.0%} + FT"}


def train_spec(epochs=2, batch_size=32, images=320):
    return {"data": {"source": "sample", "train_images": images}, "arch": "resnet8", "width": WIDTH,
            "config": {"epochs": epochs, "batch_size": batch_size, "lr": 0.05}}


LONG = train_spec(epochs=200, batch_size=16)          # runs until stopped


def wait_until(predicate, what):
    end = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


def running(engine, job_id):
    wait_until(lambda: engine.job(job_id).status == RUNNING and any(e.get("phase") == "train"
                                                                    for e in engine.job(job_id).events),
               "the job to run")
    return engine.job(job_id)


class Recorder:
    """on_update: keeps every view it is given, as a store would."""

    def __init__(self):
        self.views = []

    def __call__(self, view):
        self.views.append(view)

    def of(self, job_id):
        return [v for v in self.views if v.id == job_id]


@pytest.fixture(scope="module")
def recorder():
    return Recorder()


@pytest.fixture(scope="module")
def engine(recorder):
    e = Engine(workers=1, on_update=recorder)
    yield e
    e.close()


def test_the_engine_costs_nothing_until_the_first_job_and_refuses_unknown_tasks():
    threads = threading.active_count()
    e = Engine()
    assert e.scheduler_address is None and threading.active_count() == threads
    with pytest.raises(UnknownTask, match="there is no task 'sing'"):
        e.submit("w", "x", "x", "sing", {})
    e.close()
    with pytest.raises(JobRefused, match="shut down"):
        e.submit("w", "x", "x", "train", train_spec())
    assert local_cluster_size(2) == (1, 1) and local_cluster_size(8) == (3, 2)
    assert local_cluster_size(16, workers=3) == (3, 5)


def test_two_workspaces_fine_tune_and_get_the_right_variants(engine, recorder, parent):
    ids = [engine.submit("ann", "prune_ft", "FT 50 %", "finetune", finetune_spec(parent, 0.5)),
           engine.submit("bob", "prune_ft", "FT 70 %", "finetune", finetune_spec(parent, 0.7))]
    views = [engine.wait(i, WAIT_S) for i in ids]
    assert [v.status for v in views] == [DONE, DONE]
    eval_set = eval_subset(load_sample(splits=("test",)))
    for view, amount in zip(views, (0.5, 0.7)):
        (variant,) = variants_from_result(view.result["variants"])
        again = measure(variant.model, reference_bytes=variant.metrics.reference_bytes, eval_set=eval_set)
        assert variant.parent == parent.id and variant.name == f"pruned {amount:.0%} + FT"
        assert variant.settings == {"amount": amount, "finetune_epochs": 1, "finetune_lr": 0.02}
        assert variant.metrics.sparsity == pytest.approx(amount, abs=1e-3)     # the masks held while it trained
        assert (again.eval_accuracy, again.bytes_packed, again.sparsity, again.compression_ratio) == \
               (variant.metrics.eval_accuracy, variant.metrics.bytes_packed, variant.metrics.sparsity,
                variant.metrics.compression_ratio)
        assert view.worker.startswith("tcp://") and view.device.endswith(", 1 thread") and view.pid != os.getpid()
    assert views[0].pid == views[1].pid and [v.events[0]["cached"] for v in views] == [False, True]  # data: once
    seen = recorder.of(ids[1])
    assert seen[0].status == QUEUED and RUNNING in [v.status for v in seen] and seen[-1] == engine.job(ids[1])


def test_progress_events_arrive_in_order(engine):
    job_id = engine.submit("cy", "train", "Train", "train", train_spec(epochs=2, batch_size=32, images=320))
    view = engine.wait(job_id, WAIT_S)
    assert view.status == DONE
    assert [e["phase"] for e in view.events] == ["data", "train", "train", "train", "measure"]
    train = [e for e in view.events if e["phase"] == "train"]
    assert [(e["kind"], e["step"], e["epoch"]) for e in train] == [("epoch", 10, 1.0), ("epoch", 20, 2.0),
                                                                    ("done", 20, 2.0)]
    assert [e["t"] for e in view.events] == sorted(e["t"] for e in view.events)


def test_stop_ends_a_running_job_between_steps_and_keeps_what_it_made(engine):
    job_id = engine.submit("dee", "train", "Train long", "train", LONG)
    running(engine, job_id)
    engine.stop(job_id)
    view = engine.wait(job_id, WAIT_S)
    last = [e for e in view.events if e["phase"] == "train"][-1]
    assert view.status == CANCELLED and view.error is None and last["kind"] == "done"
    assert last["step"] < last["total_steps"] == 200 * (320 // 16)
    (variant,) = variants_from_result(view.result["variants"])
    assert variant.settings["stopped_at_epoch"] == round(last["epoch"], 2) < 200


def test_waiting_jobs_go_first_come_first_served_and_a_cancelled_one_never_runs(engine):
    first = engine.submit("w1", "train", "long", "train", LONG)
    running(engine, first)
    later = [engine.submit(f"w{i}", "train", f"job {i}", "train", train_spec(epochs=1)) for i in (2, 3, 4)]
    assert [engine.job(i).position for i in later] == [1, 2, 3]
    with pytest.raises(JobRefused, match="“long” is still running in your workspace"):
        engine.submit("w1", "train", "another", "train", train_spec())
    engine.stop(later[1])
    assert engine.job(later[1]).status == CANCELLED and [engine.job(i).position for i in later] == [1, 0, 2]
    engine.stop(first)
    views = [engine.wait(i, WAIT_S) for i in later]
    assert [v.status for v in views] == [DONE, CANCELLED, DONE]
    assert views[1].started is None and views[1].events == () and views[1].worker is None
    assert engine.job(first).status == CANCELLED and views[0].started < views[2].started


def test_a_killed_worker_fails_only_its_job_and_the_next_runs_on_a_fresh_worker(engine, parent):
    victim = running(engine, engine.submit("eve", "train", "doomed", "train", LONG))
    os.kill(victim.pid, signal.SIGKILL)
    assert engine.wait(victim.id, WAIT_S).status == FAILED and engine.job(victim.id).error == WORKER_LOST
    after = engine.wait(engine.submit("eve", "prune_ft", "next", "finetune", finetune_spec(parent)), WAIT_S)
    assert after.status == DONE and after.pid != victim.pid
    assert after.events[0]["cached"] is False               # a fresh process loads the data again


@pytest.fixture
def gpu_worker():
    """A local engine, and a way to add a worker that offers the resource GPU=1 to its cluster."""
    e = Engine(workers=1)
    started = []

    def start():
        started.append(dask_worker(e.scheduler_address, "--nthreads", "1", "--resources", "GPU=1"))
        with Client(e.scheduler_address) as client:
            client.wait_for_workers(2, timeout=120)
            return next(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["resources"])

    yield e, start
    e.close()
    for process in started:
        stop_process(process)


def test_long_training_prefers_a_gpu_worker_and_runs_anywhere_without_one(gpu_worker):
    e, start_gpu_worker = gpu_worker
    anywhere = e.wait(e.submit("fay", "train", "no GPU here", "train", train_spec(epochs=1), {"GPU": 1}), WAIT_S)
    assert anywhere.status == DONE
    gpu = start_gpu_worker()
    on_gpu = e.wait(e.submit("fay", "train", "GPU", "train", train_spec(epochs=1), {"GPU": 1}), WAIT_S)
    assert on_gpu.status == DONE and on_gpu.worker == gpu != anywhere.worker


# --- a cluster started the way a department would ---------------------------------------------------------

def dask_worker(scheduler, *options):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--no-dashboard",
                             *options], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_process(process):
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def scheduler():
    """$PLAYGROUND_TEST_SCHEDULER, or a `dask scheduler` and a `dask worker --nworkers 2` started here."""
    address = os.environ.get("PLAYGROUND_TEST_SCHEDULER")
    processes = []
    if not address:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        address = f"tcp://127.0.0.1:{port}"
        processes.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                           "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        processes.append(dask_worker(address, "--nworkers", "2", "--nthreads", "1"))
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
    yield address
    for process in reversed(processes):
        stop_process(process)


def test_jobs_run_on_a_separately_started_cluster_through_PLAYGROUND_SCHEDULER(scheduler, parent, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_SCHEDULER", scheduler)
    e = Engine()
    try:
        ids = [e.submit("ann", "prune_ft", "FT", "finetune", finetune_spec(parent)),
               e.submit("bob", "train", "long", "train", LONG)]
        views = [e.wait(ids[0], WAIT_S), running(e, ids[1])]
        assert views[0].status == DONE and views[0].worker != views[1].worker and e.scheduler_address == scheduler
        (variant,) = variants_from_result(views[0].result["variants"])
        assert variant.parent == parent.id and variant.metrics.sparsity == pytest.approx(0.5, abs=1e-3)
        os.kill(views[1].pid, signal.SIGKILL)            # this scheduler retries; the retry fails at once
        assert e.wait(ids[1], WAIT_S).status == FAILED and e.job(ids[1]).error == WORKER_LOST
        assert e.wait(e.submit("bob", "prune_ft", "again", "finetune", finetune_spec(parent)), WAIT_S).status == DONE
    finally:
        e.close()
