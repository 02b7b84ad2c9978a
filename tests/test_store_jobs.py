"""Jobs in the workspace store (compression/store_jobs.py): they outlive pages and servers."""
import pytest

from compression.store_errors import StoreError
from compression.store_jobs import INTERRUPTED, MAX_CURVE_POINTS, thin
from compression.job_view import CANCELLED, DONE, FAILED, QUEUED, RUNNING
from store_fixtures import db_url, home, one_torch_thread, opener, pg_url, tiny_variant  # noqa: F401


def test_a_job_runs_reports_and_finishes_with_its_variant_and_a_reloaded_page_sees_it_all(opener):
    store = opener()
    ws, token = store.create_workspace()
    job = store.jobs.create(ws, "finetune", "Fine-tune pruned 50 %", {"epochs": 2, "lr": 0.02}, server="s1")
    assert (job.status, job.server) == (QUEUED, "s1")
    assert store.jobs.start(job.id, worker="cpu thread 1")
    assert store.jobs.progress(job.id, {"epoch": 1, "accuracy": 0.4}, [{"step": 1, "loss": 2.3}])
    assert store.jobs.progress(job.id, {"epoch": 2, "accuracy": 0.5}, [{"step": 2, "loss": 2.1},
                                                                        {"step": 3, "loss": 1.9}])
    store.close()

    store = opener()                                       # the page reloads, or the server restarts
    ws = store.open_workspace(token)
    live = store.jobs.get(ws, job.id)
    assert (live.status, live.worker, live.progress) == (RUNNING, "cpu thread 1", {"epoch": 2, "accuracy": 0.5})
    assert [p["step"] for p in live.curve] == [1, 2, 3]
    vid = store.keep(ws, tiny_variant(0))                  # the worker keeps what it made, then finishes
    store.jobs.finish(job.id, [vid])
    done = store.jobs.get(ws, job.id)
    assert (done.status, done.result, done.error) == (DONE, [vid], None)
    assert done.started <= done.finished
    assert not store.jobs.progress(job.id, {"epoch": 3})  # a finished job takes no more progress


def test_jobs_belong_to_their_workspace(opener):
    store = opener()
    alice, _ = store.create_workspace()
    bob, _ = store.create_workspace()
    first = store.jobs.create(alice, "train", "Train resnet8", {"epochs": 1})
    second = store.jobs.create(alice, "qat", "QAT 4 bits", {"bits": 4})
    assert [j.id for j in store.jobs.list(alice)] == [second.id, first.id]      # newest first
    assert store.jobs.list(bob) == []
    with pytest.raises(StoreError, match="no job"):
        store.jobs.get(bob, first.id)
    assert not store.jobs.cancel(bob, first.id)                                 # not bob's to cancel
    assert store.jobs.get(alice, first.id).status == QUEUED


def test_cancel_reaches_the_worker_and_keeps_what_it_made(opener):
    store = opener()
    ws, _ = store.create_workspace()
    queued = store.jobs.create(ws, "train", "never started", {})
    assert store.jobs.cancel(ws, queued.id)
    assert not store.jobs.start(queued.id)                 # the worker skips a job cancelled while queued

    running = store.jobs.create(ws, "pipeline", "Deep Compression", {"steps": 3})
    store.jobs.start(running.id)
    assert store.jobs.cancel(ws, running.id)
    assert not store.jobs.progress(running.id, {"step": 2})    # the worker learns it should stop
    vid = store.keep(ws, tiny_variant(1))
    store.jobs.finish(running.id, [vid])                   # ...and records what it made before stopping
    record = store.jobs.get(ws, running.id)
    assert (record.status, record.result) == (CANCELLED, [vid])


def test_a_failed_job_keeps_its_message(opener):
    store = opener()
    ws, _ = store.create_workspace()
    job = store.jobs.create(ws, "train", "Train", {})
    store.jobs.start(job.id)
    store.jobs.fail(job.id, "The training diverged (loss is NaN). Lower the learning rate.")
    record = store.jobs.get(ws, job.id)
    assert record.status == FAILED and record.error.startswith("The training diverged")


def test_after_a_restart_jobs_left_running_are_interrupted_and_can_run_again(opener):
    store = opener()
    ws, token = store.create_workspace()
    running = store.jobs.create(ws, "train", "Train resnet20", {"epochs": 30, "checkpoint": "run.ckpt"}, "s1")
    store.jobs.start(running.id)
    waiting = store.jobs.create(ws, "qat", "QAT", {"bits": 2}, "s1")
    finished = store.jobs.create(ws, "int8", "int8", {}, "s1")
    store.jobs.start(finished.id)
    store.jobs.finish(finished.id, [])
    other_server = store.jobs.create(ws, "train", "on s2", {}, "s2")
    store.close()                                          # the server dies

    store = opener()                                       # a new server process starts
    assert store.jobs.mark_interrupted(server="s1") == 2
    ws = store.open_workspace(token)
    statuses = {j.id: j.status for j in store.jobs.list(ws)}
    assert statuses == {running.id: INTERRUPTED, waiting.id: INTERRUPTED, finished.id: DONE,
                        other_server.id: QUEUED}
    assert "Run it again" in store.jobs.get(ws, running.id).error
    again = store.jobs.resubmit(ws, running.id, server="s1b")
    assert (again.kind, again.title, again.settings, again.status) == (
        "train", "Train resnet20", {"epochs": 30, "checkpoint": "run.ckpt"}, QUEUED)
    assert again.id != running.id
    assert store.jobs.mark_interrupted() == 2              # one server: every active job
    assert store.jobs.get(ws, other_server.id).status == INTERRUPTED


def test_the_curve_stays_bounded_and_keeps_its_newest_point(opener):
    store = opener()
    ws, _ = store.create_workspace()
    job = store.jobs.create(ws, "train", "long", {})
    store.jobs.start(job.id)
    for step in range(0, 2500, 100):
        store.jobs.progress(job.id, {"step": step + 99}, [{"step": s} for s in range(step, step + 100)])
    curve = store.jobs.get(ws, job.id).curve
    assert len(curve) <= MAX_CURVE_POINTS
    assert curve[-1] == {"step": 2499}
    steps = [p["step"] for p in curve]
    assert steps == sorted(steps) and steps[0] < 100       # the whole run, thinned evenly


def test_thin_halves_from_the_newest_point():
    assert thin(list(range(10)), 5) == [1, 3, 5, 7, 9]
    assert thin(list(range(4)), 5) == [0, 1, 2, 3]
