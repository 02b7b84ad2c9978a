"""What the app tests share: stand-in pretrained models, a fresh AppTest of app.py, page switches, and the
app's workspace store as the test reads it back (AppTest runs the app in the test's own process, so
ui.workspace.store() is the very store the app writes to)."""
import json
import sys
import time
from pathlib import Path

import pytest
import torch

from compression.files import save_model
from compression.models import create_model

ROOT = Path(__file__).resolve().parent.parent
STAND_IN_WIDTH = 0.5


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Small stand-in pretrained models, so app tests do not depend on the shipped weights' accuracy: the
    shipped architectures at half width (a quarter of the multiply-accumulates, so every evaluation, curve
    and job of an app test costs a quarter; the pages take the width from the file)."""
    folder = tmp_path_factory.mktemp("assets")
    torch.manual_seed(0)
    for arch in ("resnet20", "resnet8"):
        model = create_model(arch, width=STAND_IN_WIDTH)
        with torch.no_grad():               # confident, varied answers (as a trained model gives)
            for block in (m for m in model.modules() if hasattr(m, "bn2")):
                block.bn2.weight.fill_(1.0)
            model.fc.weight.mul_(40)
        save_model(model, folder / f"{arch}.safetensors")
        (folder / f"{arch}.json").write_text(json.dumps({"arch": arch, "epochs": 0, "test_accuracy": 0.1}))
    return folder


def new_app(assets, monkeypatch, **query):
    """A fresh browser tab on app.py (not run yet); `query`: the parameters of the link it opens."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PLAYGROUND_ASSETS", str(assets))
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)   # a hang guard for a busy machine
    at.query_params.update(query)
    return at


@pytest.fixture(scope="module", autouse=True)
def stop_background_work():
    """Analyses the pages started (accuracy curves) would otherwise go on computing in this process, and
    the job engine's cluster would stay up, slowing every test after this file."""
    yield
    if "ui.jobs" not in sys.modules:                  # no app ran in this module
        return
    from ui import analyses, jobs
    analyses.pool().shutdown()
    jobs.engine().close()                             # and its local cluster, if a job started one
    jobs.engine.clear()


@pytest.fixture
def app(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def goto(at, page):
    at.switch_page(f"app_pages/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def store():
    """The app's workspace store (one per server process: AppTest runs the app in this process)."""
    from ui import workspace
    return workspace.store()


def my_workspace(at):
    return at.session_state["_workspace"][1]


def kept(at) -> list:
    """The records of every variant the session's workspace sees, pretrained first, as the store has them."""
    return store().variants(my_workspace(at))


def model_in_hand(at):
    return store().model(my_workspace(at), at.session_state["current"])


def pretrained(at, arch: str):
    return next(r for r in kept(at) if r.builtin and r.settings["arch"] == arch)


def finished_job(workspace, kind, timeout_s=1800):
    """The workspace's newest `kind` job once it has ended, read from the store as a reloaded page would
    (no tab needs to be open meanwhile)."""
    deadline = time.time() + timeout_s
    while True:
        record = next(r for r in store().jobs.list(workspace) if r.kind == kind)
        if not record.active or time.time() > deadline:
            return record
        time.sleep(1)


def wait_for_job(at, kind, timeout_s=1800):
    return finished_job(my_workspace(at), kind, timeout_s)


def fragment_run(at, widget):
    """Rerun only the fragment that draws `widget` (an AppTest widget, its new value set or clicked), as the
    browser asks when a widget inside a fragment changed; AppTest's own run() always reruns the whole app.
    Afterwards `at` holds what that run drew: the fragment's elements, or the whole app where the fragment
    asked for a full rerun."""
    import dataclasses

    from streamlit.runtime.scriptrunner_utils.script_requests import ScriptRequests
    from streamlit.testing.v1 import app_test

    fragment_id = at._session_state._state._new_widget_state.widget_metadata[widget.id].fragment_id
    assert fragment_id, f"{widget.label!r} is not drawn by a fragment"

    class FragmentRunner(app_test.LocalScriptRunner):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._requests = ScriptRequests()     # without the full run a new runner asks for first

        def request_rerun(self, rerun_data):
            return super().request_rerun(dataclasses.replace(rerun_data, fragment_id=fragment_id))

    plain_runner = app_test.LocalScriptRunner
    app_test.LocalScriptRunner = FragmentRunner
    try:
        at.run()
    finally:
        app_test.LocalScriptRunner = plain_runner
    assert not at.exception, [e.value for e in at.exception]
    return at
