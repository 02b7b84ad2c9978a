"""Workspaces in the app (issue 18), driven with AppTest: the ?ws= link, a lesson link opening the
visitor's own workspace, Delete, export and import, jobs that belong to the workspace (found again after
a reload, finishing with no tab open, carrying on from their checkpoint after a restart), and a clear
message for each fault of the store. The app's store is a real SQLite file in PLAYGROUND_HOME; jobs run
on a real Dask LocalCluster, started by the app."""
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from app_fixtures import finished_job, goto, kept, my_workspace, new_app, store, wait_for_job
from compression.store import TOKEN_BYTES, open_store
from compression.workspace_zip import export_workspace
from ui.format import plain

pytest.importorskip("streamlit")


def param(at, name):
    value = at.query_params[name]
    return value[0] if isinstance(value, list) else value


def chart_titles(at) -> list[str]:
    return [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]


def keep_pruned(at, ratio: int):
    """Keep the model in hand pruned at `ratio` % on the Prune page; returns its stored record."""
    goto(at, "prune")
    at.slider(key="prune_ratio").set_value(ratio).run()
    next(b for b in at.button if b.label == "Keep this variant").click().run()
    assert not at.exception, [e.value for e in at.exception]
    record = kept(at)[-1]
    assert f"pruned {ratio}%" in record.name
    return record


def listed(at) -> list[str]:
    """The variant names the Compare page's table shows."""
    goto(at, "compare")
    return list(at.dataframe[0].value["name"])


# --- the link -----------------------------------------------------------------------------------------------

def test_a_reload_opens_the_same_workspace_and_the_sidebar_shows_its_link(assets, monkeypatch):
    first = new_app(assets, monkeypatch)
    first.run()
    token = param(first, "ws")
    assert len(token) == 32 and len(token) * 6 >= 128, "an unguessable token of at least 128 bits"
    assert any(c.value.endswith(f"?ws={token}") for c in first.sidebar.code), "Your workspace link"
    mine = keep_pruned(first, 70)

    reload = new_app(assets, monkeypatch, ws=token)          # F5, a new tab or another device
    reload.run()
    assert my_workspace(reload).id == my_workspace(first).id
    assert mine.name in listed(reload)


def test_a_lesson_link_without_ws_opens_in_the_visitors_own_workspace(assets, monkeypatch):
    teacher = new_app(assets, monkeypatch)
    teacher.run()
    theirs = keep_pruned(teacher, 80)
    student = new_app(assets, monkeypatch, bits="3")         # the lesson link: page settings, no ws
    student.switch_page("app_pages/quantize.py").run()
    assert not student.exception
    assert student.select_slider(key="quantize_bits").value == 3
    assert param(student, "ws") != param(teacher, "ws")
    assert my_workspace(student).id != my_workspace(teacher).id
    assert theirs.id not in [r.id for r in kept(student)], "another workspace's variants stay invisible"
    lesson = next(c.value for c in student.code if "bits=3" in c.value)
    assert "ws=" not in lesson, "the lesson link to copy never carries a workspace"


def test_start_a_new_workspace_leaves_the_old_one_at_its_link(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    old_token, old = param(at, "ws"), keep_pruned(at, 60)
    at.sidebar.button(key="ws_new").click().run()
    assert not at.exception
    assert param(at, "ws") != old_token
    assert old.name not in listed(at)
    assert any(c.value.endswith(f"?ws={old_token}") for c in at.sidebar.code), "Your previous workspace"
    back = new_app(assets, monkeypatch, ws=old_token)
    back.run()
    assert old.name in listed(back)


@pytest.mark.parametrize("token,says", [
    ("not a token!", "damaged"),
    (secrets.token_urlsafe(TOKEN_BYTES), "No workspace on this server matches this link"),
])
def test_a_damaged_or_unknown_link_gets_a_message_and_a_way_out(assets, monkeypatch, token, says):
    at = new_app(assets, monkeypatch, ws=token)
    at.run()
    assert not at.exception
    assert says in at.error[0].value
    assert not at.sidebar.selectbox, "nothing else is drawn, nothing is created behind the student's back"
    at.button(key="ws_new_after_error").click().run()
    assert not at.exception and not at.error
    assert param(at, "ws") != token and at.sidebar.selectbox(key="model_in_hand_select")


# --- Delete, export and import ------------------------------------------------------------------------------

def test_delete_asks_first_and_only_the_workspaces_own_variants_have_it(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    mine = keep_pruned(at, 50)
    goto(at, "compare")
    deletable = [b.key for b in at.button if b.key and b.key.startswith("delete-")]
    assert deletable == [f"delete-{mine.id}"], "pretrained models are read-only"
    at.button(key=f"delete-{mine.id}").click().run()
    assert any("for good?" in w.value for w in at.warning)
    at.button(key=f"delete-no-{mine.id}").click().run()
    assert mine.id in [r.id for r in kept(at)]
    at.button(key=f"delete-{mine.id}").click().run()
    at.button(key=f"delete-yes-{mine.id}").click().run()
    assert not at.exception
    assert mine.id not in [r.id for r in kept(at)]
    assert any(s.value == f"Deleted “{plain(mine.name)}”." for s in at.success)
    assert len([r for r in kept(at) if r.builtin]) == 2


def test_a_workspace_export_imports_into_another_workspace_and_a_damaged_one_adds_nothing(assets, monkeypatch):
    teacher = new_app(assets, monkeypatch)
    teacher.run()
    lesson = keep_pruned(teacher, 90)
    data = export_workspace(store(), my_workspace(teacher))   # what "Export workspace (.zip)" sends

    student = new_app(assets, monkeypatch)
    student.run()
    goto(student, "compare")
    before = [r.id for r in kept(student)]
    student.file_uploader(key="import_file").set_value(("broken.zip", data[: len(data) // 2], "x")).run()
    assert not student.exception and "broken.zip" in student.error[0].value
    assert [r.id for r in kept(student)] == before
    student.file_uploader(key="import_file").set_value(("lesson.zip", data, "application/zip")).run()
    assert not student.exception
    assert student.success[0].value == "Imported 1 variant(s) from lesson.zip."
    assert [r.id for r in kept(student)] == before + [lesson.id], "same content and lineage, same id"


# --- jobs belong to the workspace ---------------------------------------------------------------------------

TINY_RUN = {"arch": "resnet8", "width": 0.25, "config": {"epochs": 2, "batch_size": 256, "lr": 0.2}}


def start_training(at) -> None:
    """Press Start on the Train page: resnet8 at width 0.25, 2 epochs at batch 256 on the sample."""
    goto(at, "train")
    at.select_slider[0].set_value(0.25)           # width multiplier
    at.select_slider[1].set_value(256)            # batch size
    at.number_input[0].set_value(2)
    at.form_submit_button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]


def test_a_training_run_is_found_after_a_reload_and_finishes_with_no_tab_open(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    token, workspace = param(at, "ws"), my_workspace(at)
    start_training(at)
    del at                                                     # the tab is closed
    deadline = time.time() + 300
    while not any(p.get("phase") == "train" for p in store().jobs.list(workspace)[0].curve) \
            and time.time() < deadline:                        # the first training points are stored
        time.sleep(0.5)
    reload = new_app(assets, monkeypatch, ws=token)
    goto(reload, "train")
    assert "Loss and accuracy" in chart_titles(reload), "the live curve, redrawn from the store"
    del reload

    job = finished_job(workspace, "train")                   # no tab open meanwhile
    assert job.status == "done", job.error
    (made,) = job.result
    assert store().variant(workspace, made).name == "resnet8 trained (2 ep)"
    assert not Path(job.settings["spec"]["checkpoint"]).exists(), "a finished run leaves no checkpoint"
    again = new_app(assets, monkeypatch, ws=token)
    goto(again, "train")
    finished = f"Finished: “{plain('resnet8 trained (2 ep)')}” joined the variants"     # names are shown as text
    assert any(s.value.startswith(finished) for s in again.success)


def test_after_a_restart_an_interrupted_training_run_carries_on_from_its_checkpoint(assets, monkeypatch, tmp_path):
    from compression.data import load_sample
    from compression.models import create_model
    from compression.train import TrainConfig, train
    from ui import workspace as W

    at = new_app(assets, monkeypatch)
    at.run()
    token, workspace = param(at, "ws"), my_workspace(at)
    checkpoint = tmp_path / "run.ckpt"                   # the run as far as its first epoch's end
    for _ in train(create_model("resnet8", 0.25), load_sample(splits=("train",)), TrainConfig(**TINY_RUN["config"]),
                   stop=checkpoint.exists, checkpoint=checkpoint):
        pass
    spec = {"data": {"source": "sample"}, **TINY_RUN, "checkpoint": str(checkpoint)}
    record = store().jobs.create(workspace, "train", "Train resnet8", {"task": "train", "spec": spec, "inputs": {}},
                                 server=W.server_name())
    assert store().jobs.start(record.id, worker="a worker of the server that died")

    W._open.clear()                                       # the server restarts: its store is opened afresh
    after = new_app(assets, monkeypatch, ws=token)
    goto(after, "train")
    assert any(w.value == "Training was interrupted: the server stopped before it finished." for w in after.warning)
    assert any("carries on from its checkpoint" in c.value for c in after.caption)
    next(b for b in after.button if b.label == "Run again").click().run()
    assert not after.exception
    job = wait_for_job(after, "train")
    assert job.status == "done" and job.id != record.id, job.error
    steps_per_epoch = 5000 // 256
    assert min(p["step"] for p in job.curve if "step" in p) >= steps_per_epoch, "it carried on, not over"
    assert not checkpoint.exists()


# --- faults of the store ------------------------------------------------------------------------------------

def test_a_database_of_a_newer_release_is_refused_with_a_message_and_left_untouched(assets, monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path))
    with open_store(tmp_path) as s, s.engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 99"))
    at = new_app(assets, monkeypatch)
    at.run()
    assert not at.exception
    assert "newer release" in at.error[0].value and not at.sidebar.selectbox
    assert sqlite3.connect(tmp_path / "playground.db").execute("SELECT version FROM schema_version").fetchone() == (99,)


LOCK = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
"""


def test_a_database_locked_by_another_process_is_a_message_and_works_once_released(assets, monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path))
    open_store(tmp_path).close()
    lock = subprocess.Popen([sys.executable, "-c", LOCK, str(tmp_path / "playground.db")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert lock.stdout.readline().strip() == "locked"
        at = new_app(assets, monkeypatch)
        at.run()
        assert not at.exception
        assert "locked" in at.error[0].value and "Try again" in at.error[0].value
    finally:
        lock.stdin.close()
        lock.wait(timeout=30)
    at.run()
    assert not at.exception and not at.error and at.sidebar.selectbox(key="model_in_hand_select")


def test_a_damaged_or_missing_weights_file_is_a_message(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    mine = keep_pruned(at, 40)
    blob = store().blobs.path(mine.weights_sha256)
    blob.write_bytes(b"not the weights any more")
    store().cache.clear()                                 # as after a restart: the model is read again
    at.run()                                              # the sidebar lists it now
    at.sidebar.selectbox(key="model_in_hand_select").select_index([r.id for r in kept(at)].index(mine.id)).run()
    goto(at, "overview")
    assert any("damaged" in e.value and "Delete this variant" in e.value for e in at.error)
    blob.unlink()
    goto(at, "compare")
    assert any("weights file is missing" in w.value for w in at.warning)
    assert at.button(key=f"delete-{mine.id}"), "the way out: delete it"


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB file system (tmpfs; needs root and mount rights, else the test skips)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and the right to mount a tmpfs (a real full disk)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_a_message_and_loses_nothing(assets, monkeypatch, small_disk):
    monkeypatch.setenv("PLAYGROUND_HOME", str(small_disk / "home"))
    at = new_app(assets, monkeypatch)
    at.run()
    first = keep_pruned(at, 30)
    filler = small_disk / "filler"
    try:
        with open(filler, "wb") as f:
            while f.write(b"\0" * 65536):
                f.flush()
    except OSError:                                        # no space left on device: the disk is full
        pass
    goto(at, "prune")
    at.slider(key="prune_ratio").set_value(95).run()
    next(b for b in at.button if b.label == "Keep this variant").click().run()
    assert not at.exception
    assert any("is full" in e.value for e in at.error)
    assert [r.id for r in kept(at) if not r.builtin] == [first.id]
    filler.unlink()
    assert keep_pruned(at, 95).name in listed(at)
