"""The app on a department's cluster (issue 20): with PLAYGROUND_SCHEDULER set, the pages' jobs run on the
workers of a separately started `dask scheduler` + `dask worker` (CI's, named by PLAYGROUND_TEST_SCHEDULER,
or two processes started here on 127.0.0.1), and their variants join the workspace as on the local
cluster. Nothing else in the app knows which of the two it runs on."""
import os
import socket
import subprocess
import sys

import pytest
from distributed import Client

from app_fixtures import goto, my_workspace, new_app, store, wait_for_job
from test_engine import dask_worker, stop_process


@pytest.fixture(scope="module")
def cluster():
    """$PLAYGROUND_TEST_SCHEDULER, or a `dask scheduler` and one single-thread `dask worker` started here."""
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
        processes.append(dask_worker(address, "--nthreads", "1"))
    with Client(address, timeout=60) as client:
        client.wait_for_workers(1, timeout=120)
        workers = set(client.scheduler_info()["workers"])
    yield address, workers
    for process in reversed(processes):
        stop_process(process)


@pytest.fixture
def app_engine_on(monkeypatch):
    """The app's job engine made afresh under the environment the test sets (one engine per server
    process: ui/jobs.engine), and closed again afterwards."""
    from ui import jobs

    def fresh():
        jobs.engine().close()
        jobs.engine.clear()

    fresh()
    yield
    fresh()


def test_the_pages_jobs_run_on_the_cluster_of_PLAYGROUND_SCHEDULER(assets, monkeypatch, cluster, app_engine_on):
    from ui import jobs

    address, workers = cluster
    monkeypatch.setenv("PLAYGROUND_SCHEDULER", address)
    at = new_app(assets, monkeypatch)
    at.run()
    goto(at, "train")
    at.select_slider[0].set_value(0.25)           # width multiplier: a tiny resnet8
    at.number_input[0].set_value(1)
    at.form_submit_button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = wait_for_job(at, "train")
    assert job.status == "done", job.error
    assert jobs.engine().scheduler_address == address
    assert job.worker.split(" · ")[0] in workers, "it ran on a worker of that scheduler"
    assert job.settings["spec"]["checkpoint"] is None, "that cluster's workers cannot see this server's folders"
    (made,) = job.result
    assert store().variant(my_workspace(at), made).name == "resnet8 trained (1 ep)"
