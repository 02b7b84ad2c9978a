import threading
import time

from compression.worker import CANCELLED, DONE, FAILED, JobQueue


def test_jobs_run_in_order_one_at_a_time_and_report_their_place():
    q = JobQueue(workers=1)
    gate = threading.Event()
    order = []

    def blocking(job):
        gate.wait(5)
        order.append(job.title)

    first = q.submit("first", blocking, owner="a")
    second = q.submit("second", blocking, owner="b")
    third = q.submit("third", blocking, owner="a")
    deadline = time.time() + 5
    while first.status != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert [q.position(j) for j in (first, second, third)] == [0, 1, 2]
    gate.set()
    assert q.wait(third, 5)
    assert order == ["first", "second", "third"]
    assert all(j.status == DONE for j in (first, second, third))
    assert q.jobs("a") == [first, third]


def test_progress_and_stop_between_steps():
    q = JobQueue(workers=1)

    def counting(job):
        for i in range(1000):
            if job.should_stop():
                return i
            job.report(step=i)
            time.sleep(0.005)
        return 1000

    job = q.submit("count", counting)
    while len(job.snapshot()) < 3:
        time.sleep(0.01)
    q.cancel(job)
    q.wait(job, 5)
    assert job.status == CANCELLED and job.result < 1000
    assert job.latest()["step"] == job.result - 1


def test_cancelling_a_queued_job_means_it_never_runs():
    q = JobQueue(workers=1)
    gate = threading.Event()
    ran = []
    blocker = q.submit("blocker", lambda job: gate.wait(5))
    waiting = q.submit("waiting", lambda job: ran.append(1))
    q.cancel(waiting)
    gate.set()
    q.wait(blocker, 5)
    time.sleep(0.05)
    assert waiting.status == CANCELLED and not ran


def test_a_failing_job_keeps_the_message_not_the_traceback():
    q = JobQueue(workers=1)

    def broken(job):
        raise ValueError("the data folder is empty\nmore detail")

    job = q.submit("broken", broken)
    q.wait(job, 5)
    assert job.status == FAILED and job.error == "the data folder is empty"
    assert "Traceback" in job.detail
    ok = q.submit("after", lambda job: 42)      # the worker survives a failure
    q.wait(ok, 5)
    assert ok.result == 42


def test_shutdown_stops_running_jobs_between_steps():
    q = JobQueue(workers=1)
    steps = []

    def endless(job):
        while not job.should_stop():
            steps.append(1)
            time.sleep(0.01)

    job = q.submit("endless", endless)
    waiting = q.submit("waiting", lambda job: 1)
    while not steps:
        time.sleep(0.01)
    assert q.shutdown(timeout=5)
    assert job.status == CANCELLED and waiting.status == CANCELLED
