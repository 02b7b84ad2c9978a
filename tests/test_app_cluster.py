"""The app on a department's cluster (issue 20): with PLAYGROUND_SCHEDULER set, the pages' jobs run on the
workers of a separately started `dask scheduler` + `dask worker` (CI's, named by PLAYGROUND_TEST_SCHEDULER,
or two processes started here on 127.0.0.1), and their variants join the workspace as on the local
cluster. Nothing else in the app knows which of the two it runs on."""

import pytest
from distributed import Client

from app_fixtures import goto, my_workspace, new_app, store, wait_for_job
from test_engine import scheduler  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def cluster(scheduler):
    """test_engine's cluster ($PLAYGROUND_TEST_SCHEDULER, or one started there) and its workers."""
    with Client(scheduler, timeout=60) as client:
        workers = set(client.scheduler_info()["workers"])
    return scheduler, workers


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
