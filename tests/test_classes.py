"""Classes, challenges and submissions on the workspace store (compression/classes.py, board.py,
remeasure.py): on a real SQLite file, and on a real PostgreSQL server when PLAYGROUND_TEST_DB_URL is set."""
import json
from dataclasses import asdict

import pytest
import torch
from sqlalchemy import MetaData, create_engine, select

from compression import classes, remeasure
from compression.board import board, board_version
from compression.challenges import Challenge, Constraint, Objective
from compression.class_access import JOIN_ALPHABET
from compression.classes import (ClassAccessError, ClassError, SubmissionRefused, add_challenge, close_challenge,
                                 close_class, create_class, entries, hide_entry, join_class, joined_class,
                                 leave_class, list_challenges, open_class, remove_entry, safe_display_name, submit)
from compression.data import eval_subset, load_sample
from compression.metrics import Metrics
from compression.models import create_model
from compression.prune import prune
from compression.store import open_store
from compression.store_errors import StoreVersionError
from compression.store_schema import CLASSES, MEASUREMENTS, SCHEMA_VERSION, UPGRADES
from compression.train import evaluate
from compression.variant import Variant
from store_fixtures import db_url, home, one_torch_thread, opener, pg_url  # noqa: F401
from test_store_versions import TOKEN as V1_TOKEN
from test_store_versions import layout, make_version_1

T0 = 1_800_000_000.0
HOSTILE = "<img src=x onerror=alert(1)>"


def model(seed: int, amount: float = 0.0):
    """A resnet8 at width 0.5 with random weights and BN statistics, pruned by `amount`."""
    torch.manual_seed(seed)
    m = create_model("resnet8", width=0.5)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in m.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.copy_(torch.randn(layer.running_mean.shape, generator=g) * 0.1)
                layer.running_var.copy_(torch.rand(layer.running_var.shape, generator=g) + 0.5)
    return (prune(m, amount) if amount else m).eval()


def keep(store, ws, seed, technique="pruned", parent=None, amount=0.0, claimed=None, **settings):
    metrics = claimed or Metrics(eval_accuracy=0.5)
    return store.keep(ws, Variant(f"v{seed}", model(seed, amount), technique, {"amount": amount, **settings},
                                  parent, metrics))


@pytest.fixture
def store(opener):
    return opener()


@pytest.fixture
def start_id(store):
    return store.register_pretrained(Variant("tiny (pretrained)", model(0), "pretrained", {"arch": "tiny"}))


def smallest(start_id, *constraints, objective="bytes_packed", **kw):
    return Challenge("Smallest", constraints or (Constraint("min_accuracy", 0.0),), Objective(objective),
                     start=start_id, **kw)


def lesson(store, start_id, *challenges, **kw):
    info, token, code = create_class(store, "Lab", challenges or [smallest(start_id)], **kw)
    return info, token, code, [c.id for c in list_challenges(store, code)]


def real_correct(m) -> int:
    result = evaluate(m, eval_subset(load_sample(splits=("test",))))
    return sum(result.confusion[i][i] for i in range(10))


# --- creating and joining --------------------------------------------------------------------------------

def test_a_class_has_a_short_join_code_and_a_teacher_token_stored_only_as_a_hash(store, start_id, db_url):
    info, token, code = create_class(store, "  Monday   lab ", [smallest(start_id)])
    assert info.name == "Monday lab" and len(code) == 6 and set(code) <= set(JOIN_ALPHABET) and len(token) == 32
    assert join_class(store, f" {code[:3].lower()}-{code[3:]} ") == info == open_class(store, token)
    [c] = list_challenges(store, code)
    assert list_challenges(store, token) == [c] and c.challenge == smallest(start_id) and c.start_id == start_id
    assert c.start.eval_correct == real_correct(model(0))                  # the start, measured by the server
    engine = create_engine(db_url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as conn:
        dump = json.dumps([[list(map(str, r)) for r in conn.execute(t.select())] for t in tables.sorted_tables])
    engine.dispose()
    assert token not in dump


def test_a_join_code_is_unique_among_open_classes_and_freed_when_a_class_closes(store, start_id, monkeypatch):
    codes = iter(["AAAAAA", "AAAAAA", "BBBBBB", "AAAAAA"])
    monkeypatch.setattr(classes, "new_join_code", lambda: next(codes))
    first, token, _ = create_class(store, "one")
    assert (first.join_code, create_class(store, "two")[0].join_code) == ("AAAAAA", "BBBBBB")
    close_class(store, token)
    assert create_class(store, "three")[0].join_code == "AAAAAA"               # the closed class's code
    assert join_class(store, "AAAAAA").name == "three"
    assert open_class(store, token).closed is not None



def test_a_workspace_remembers_the_class_it_joined_until_it_leaves_or_the_class_closes(opener, start_id):
    store = opener()
    _, token, code, [cid] = lesson(store, start_id)
    ws, ws_token = store.create_workspace()
    other, _ = store.create_workspace()
    assert joined_class(store, ws) is None
    info = join_class(store, f" {code.lower()} ", ws)
    again = opener()                                    # another server process, or this one after a restart
    assert joined_class(again, again.open_workspace(ws_token)) == info and joined_class(again, other) is None
    assert submit(again, info.join_code, cid, ws, keep(store, ws, 1), "Ada").verdict.passed
    _, second_token, second, _ = lesson(store, start_id)
    assert join_class(store, second, ws) == joined_class(store, ws) != info      # the last class joined
    leave_class(store, ws)
    assert joined_class(store, ws) is None and len(entries(store, token, cid)) == 1    # the entry stays
    join_class(store, second, ws)
    close_class(store, second_token)
    assert joined_class(store, ws) is None                  # a closed class is no class to submit to

def test_a_lesson_starts_from_a_built_in_exercise_on_the_shipped_resnet20(tmp_path):
    """The real path, once (on SQLite): resnet20 registered from assets/ and measured by the server."""
    store = open_store(tmp_path / "home")
    _, _, code = create_class(store, "Lab", exercises=["smallest-85", "prune-70"])
    smallest85, prune70 = list_challenges(store, code)
    assert (smallest85.challenge.title, prune70.challenge.title) == (
        "Smallest model above 85 % — go", "Prune resnet20 to 70 % sparsity, losing at most 2 points")
    assert (smallest85.start.arch, smallest85.start.eval_correct, smallest85.start.eval_images) == ("resnet20", 898, 1000)
    assert smallest85.start_id == prune70.start_id and smallest85.start == prune70.start
    ws, _ = store.create_workspace()
    assert [v.name for v in store.variants(ws) if v.builtin] == ["resnet20 (pretrained)"]       # registered once
    assert board(store, code, smallest85.id).references[0]["label"] == "ResNet-20 (He et al. 2016)"
    store.close()


# --- submitting ------------------------------------------------------------------------------------------

def test_the_server_re_measures_and_ignores_the_numbers_a_record_claims(store, start_id):
    _, _, code, [cid] = lesson(store, start_id, smallest(start_id, Constraint("min_accuracy", 0.9)))
    ws, _ = store.create_workspace()
    claims = Metrics(eval_accuracy=0.99, bytes_packed=10, macs=1, sparsity=0.99)
    vid = keep(store, ws, 1, amount=0.5, claimed=claims)
    e = submit(store, code, cid, ws, vid, "Ada")
    assert e.measured.eval_correct == real_correct(store.model(ws, vid)) < 900
    assert e.measured.bytes_packed == len(store.weights(ws, vid)) > 10
    assert e.measured.zero_weights / e.measured.weights == pytest.approx(0.5, abs=0.01)
    assert not e.verdict.passed and e.verdict.checks[0].value == e.measured.eval_correct / 1000
    assert e.verdict.score == e.measured.bytes_packed


def test_resubmitting_replaces_the_entry_and_keeps_the_history(store, start_id):
    _, token, code, [cid] = lesson(store, start_id)
    ws, _ = store.create_workspace()
    first = submit(store, code, cid, ws, keep(store, ws, 1), "Ada", now=T0)
    second = submit(store, code, cid, ws, keep(store, ws, 2, amount=0.8), "Ada L.", now=T0 + 1)
    assert [r["id"] for r in board(store, code, cid).rows] == [second.id]
    history = entries(store, token, cid, history=True)
    assert [(e.id, e.superseded, e.name) for e in history] == [(second.id, False, "Ada L."), (first.id, True, "Ada")]
    assert [e.id for e in entries(store, token, cid)] == [second.id]


def test_the_rate_limit_counts_a_student_s_submissions_in_any_minute(store, start_id):
    _, _, code, [cid] = lesson(store, start_id, rate_limit=2)
    ws, _ = store.create_workspace()
    other, _ = store.create_workspace()
    vid = keep(store, ws, 1)
    submit(store, code, cid, ws, vid, "Ada", now=T0)
    submit(store, code, cid, ws, vid, "Ada", now=T0 + 10)
    with pytest.raises(SubmissionRefused, match=r"2 times in the last minute.*2 a minute.*Try again in 50 s"):
        submit(store, code, cid, ws, vid, "Ada", now=T0 + 10)
    submit(store, code, cid, other, keep(store, other, 2), "Bob", now=T0 + 10)        # others are not limited
    submit(store, code, cid, ws, vid, "Ada", now=T0 + 60)                             # the first left the window
    with pytest.raises(SubmissionRefused, match="Try again in 10 s"):
        submit(store, code, cid, ws, vid, "Ada", now=T0 + 60)


def test_the_deadline_and_closing_stop_submissions(store, start_id):
    _, token, code, [late, closed] = lesson(store, start_id, smallest(start_id, deadline=T0),
                                            smallest(start_id))
    ws, _ = store.create_workspace()
    vid = keep(store, ws, 1)
    assert submit(store, code, late, ws, vid, "Ada", now=T0).submitted == T0                 # on the deadline
    with pytest.raises(SubmissionRefused, match="deadline of 'Smallest' passed"):
        submit(store, code, late, ws, vid, "Ada", now=T0 + 0.001)
    close_challenge(store, token, closed)
    with pytest.raises(SubmissionRefused, match="closed"):
        submit(store, code, closed, ws, vid, "Ada", now=T0)
    assert not board(store, code, late, now=T0 + 1).open and board(store, code, late, now=T0).open


@pytest.mark.parametrize("name, message", [("", "Type a display name"), (" \t\u200b ", "Type a display name"),
                                           ("x" * 41, "at most 40 characters; this one has 41")])
def test_display_names_that_are_refused(store, start_id, name, message):
    _, _, code, [cid] = lesson(store, start_id)
    ws, _ = store.create_workspace()
    with pytest.raises(SubmissionRefused, match=message):
        submit(store, code, cid, ws, keep(store, ws, 1), name)


def test_a_hostile_display_name_is_stored_as_text_and_escaped_to_show(store, start_id):
    _, token, code, [cid] = lesson(store, start_id)
    ws, _ = store.create_workspace()
    other, _ = store.create_workspace()
    submit(store, code, cid, ws, keep(store, ws, 1), f"  {HOSTILE}\n")
    submit(store, code, cid, other, keep(store, other, 2), "Ro\u202ebert\x00 \u200bTables")
    rows = {r["name"]: r for r in board(store, code, cid).rows}
    assert set(rows) == {HOSTILE, "Robert Tables"}
    assert rows[HOSTILE]["name_html"] == "&lt;img src=x onerror=alert(1)&gt;" == safe_display_name(HOSTILE)
    assert [e.name for e in entries(store, token, cid)] == ["Robert Tables", HOSTILE]


def test_a_student_submits_only_their_own_variants(store, start_id):
    _, _, code, [cid] = lesson(store, start_id)
    ada, _ = store.create_workspace()
    bob, _ = store.create_workspace()
    adas = keep(store, ada, 1)
    with pytest.raises(SubmissionRefused, match="not in your workspace"):
        submit(store, code, cid, bob, adas, "Bob")
    with pytest.raises(SubmissionRefused, match="pretrained model"):
        submit(store, code, cid, bob, start_id, "Bob")


# --- who may do what ----------------------------------------------------------------------------------

def test_a_join_code_cannot_change_a_class_and_one_teacher_cannot_change_another_class(store, start_id):
    _, token, code, [cid] = lesson(store, start_id)
    _, other_token, other_code, [other_cid] = lesson(store, start_id)
    ws, ws_token = store.create_workspace()
    entry = submit(store, code, cid, ws, keep(store, ws, 1), "Ada")
    for call in (lambda: add_challenge(store, code, smallest(start_id)), lambda: close_challenge(store, code, cid),
                 lambda: close_class(store, code), lambda: entries(store, code, cid),
                 lambda: hide_entry(store, code, entry.id), lambda: remove_entry(store, code, entry.id),
                 lambda: open_class(store, code)):
        with pytest.raises(ClassAccessError, match="teacher's link"):
            call()
    with pytest.raises(ClassError, match="no such entry"):
        hide_entry(store, other_token, entry.id)
    with pytest.raises(ClassError, match="no such challenge"):
        board(store, other_code, cid)
    with pytest.raises(ClassError, match="no such challenge"):
        submit(store, other_code, cid, ws, keep(store, ws, 2), "Ada")
    with pytest.raises(ClassAccessError, match="neither a class's join code"):
        board(store, ws_token[:20], cid)
    with pytest.raises(ClassAccessError, match="No open class has the code"):
        join_class(store, "ZZZZZZ")
    shown = json.dumps(asdict(board(store, code, cid, workspace=ws)), default=str)
    assert ws.id not in shown and ws_token not in shown and token not in shown
    assert not hasattr(classes, "open_workspace")


def test_the_teacher_hides_shows_and_removes_entries(store, start_id):
    _, token, code, [cid] = lesson(store, start_id)
    ada, _ = store.create_workspace()
    bob, _ = store.create_workspace()
    a = submit(store, code, cid, ada, keep(store, ada, 1), HOSTILE, now=T0)
    b = submit(store, code, cid, bob, keep(store, bob, 2), "Bob", now=T0)
    before = board_version(store, code, cid)
    hide_entry(store, token, a.id)
    assert board_version(store, code, cid) != before
    assert [r["id"] for r in board(store, code, cid).rows] == [b.id]
    again = submit(store, code, cid, ada, keep(store, ada, 3), HOSTILE, now=T0 + 1)
    assert again.hidden and [r["id"] for r in board(store, code, cid).rows] == [b.id]     # still hidden
    hide_entry(store, token, again.id, hidden=False)
    assert {r["id"] for r in board(store, code, cid).rows} == {b.id, again.id}
    assert remove_entry(store, token, again.id) == 2                                        # entry + history
    assert [r["id"] for r in board(store, code, cid).rows] == [b.id]
    assert [e.id for e in entries(store, token, cid, history=True)] == [b.id]
    submit(store, code, cid, ada, keep(store, ada, 4), "Ada", now=T0 + 2)                 # may submit again


# --- the board ---------------------------------------------------------------------------------------------

def test_the_board_ranks_draws_the_frontier_and_shades_the_constraints(store, start_id):
    rules = (Constraint("min_sparsity", 0.5), Constraint("max_drop", 100.0), Constraint("max_macs", 1.0))
    _, _, code, [cid] = lesson(store, start_id, smallest(start_id, *rules))
    students = {}
    for seed, amount in ((1, 0.9), (2, 0.6), (3, 0.3)):
        ws, _ = store.create_workspace()
        students[amount] = (ws, submit(store, code, cid, ws, keep(store, ws, seed, amount=amount), f"s{seed}"))
    b = board(store, code, cid, workspace=students[0.6][0])
    assert [(r["name"], r["rank"], r["passed"]) for r in b.rows] == [("s1", 1, True), ("s2", 2, True),
                                                                    ("s3", None, False)]
    assert [r["mine"] for r in b.rows] == [False, True, False]
    assert b.rows[2]["checks"][0] == {"rule": "sparsity ≥ 50 %", "value": pytest.approx(0.3, abs=0.01),
                                      "limit": 0.5, "passed": False, "note": ""}
    sizes = [r["bytes_packed"] for r in b.rows]
    assert sizes == sorted(sizes) and [p["x"] for p in b.points] == sizes and b.x == "bytes_packed"
    expected = [r["id"] for i, r in enumerate(b.rows)
                if all(r["eval_accuracy"] > q["eval_accuracy"] for q in b.rows[:i])]
    assert b.frontier == expected and b.rows[0]["id"] in b.frontier
    start_accuracy = b.start["eval_accuracy"]
    assert b.regions == [{"metric": "sparsity", "min": 0.5, "strict": False, "rule": "sparsity ≥ 50 %"},
                         {"metric": "eval_accuracy", "min": pytest.approx(start_accuracy - 1.0), "strict": False,
                          "rule": "accuracy drop from the starting model ≤ 100 points"},
                         {"metric": "macs", "max": b.start["macs"], "strict": False,
                          "rule": "MACs, as a share of the starting model's ≤ 100 %"}]
    assert b.goal[-1] == "fewest packed bytes wins" and b.references == []       # width 0.5: no references


def test_each_point_carries_its_recipe_from_the_lineage(store, start_id):
    _, _, code, [cid] = lesson(store, start_id)
    ws, _ = store.create_workspace()
    pruned = keep(store, ws, 1, "pruned", start_id, amount=0.7, finetune_epochs=2)
    qat = store.keep(ws, Variant("q", model(2), "QAT", {"bits": 4, "a_bits": None}, pruned, Metrics()))
    submit(store, code, cid, ws, qat, "Ada")
    [row] = board(store, code, cid).rows
    assert row["recipe"] == "pretrained tiny → pruned 70 % + FT 2 ep → QAT 4-bit"
    assert row["steps"] == ["pretrained tiny", "pruned 70 % + FT 2 ep", "QAT 4-bit"]
    store.delete(ws, pruned)                                   # a parent the workspace no longer has
    assert submit(store, code, cid, ws, qat, "Ada").recipe == ["…", "QAT 4-bit"]


def test_distillation_must_beat_its_same_budget_twin_trained_alone(store, start_id):
    beat = Challenge("KD", (Constraint("beats_plain", 0.0),), Objective("kd_gain"), start=start_id)
    _, _, code, [cid] = lesson(store, start_id, beat)
    ws, _ = store.create_workspace()
    budget = {"epochs": 1, "lr": 0.1, "data": "sample train"}
    kd = store.keep(ws, Variant("kd", model(5), "distilled", {"teacher": "t", "T": 4, "alpha": 0.9, **budget},
                                start_id, Metrics(eval_accuracy=0.99)))
    e = submit(store, code, cid, ws, kd, "Ada")
    assert e.measured.plain_correct is None and not e.verdict.passed and "trained alone" in e.verdict.checks[0].note
    twin = store.keep(ws, Variant("plain", model(6), "trained", {"kd": "none", **budget}, start_id, Metrics()))
    store.keep(ws, Variant("other budget", model(7), "trained", {"kd": "none", **budget, "epochs": 2}, start_id,
                           Metrics()))
    e = submit(store, code, cid, ws, kd, "Ada")
    gain = (real_correct(model(5)) - real_correct(model(6))) / 10
    assert (e.measured.plain_id, e.measured.plain_correct) == (twin, real_correct(model(6)))
    assert e.verdict.score == pytest.approx(gain) and e.verdict.passed == (gain > 0)


def test_measurements_are_cached_by_weights_file_across_students_and_restarts(opener, start_id, monkeypatch):
    store = opener()
    _, _, code, [cid] = lesson(store, start_id)
    ada, _ = store.create_workspace()
    bob, _ = store.create_workspace()
    first = submit(store, code, cid, ada, keep(store, ada, 1), "Ada")

    def refuse(*args):
        raise AssertionError("measured again")
    monkeypatch.setattr(remeasure, "measure_model", refuse)
    same = submit(store, code, cid, bob, keep(store, bob, 1), "Bob")          # the same weights, kept by Bob
    again = submit(opener(), code, cid, ada, keep(store, ada, 1), "Ada")       # a new server process
    assert same.measured == first.measured == again.measured
    with store.engine.connect() as conn:
        assert len(conn.execute(select(MEASUREMENTS)).all()) == 2              # the start and one student file


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")
def test_int8_latency_is_measured_once_per_weights_file(tmp_path, monkeypatch):
    """On SQLite only: what is measured does not depend on the database (compiling takes tens of seconds)."""
    store = open_store(tmp_path / "home")
    start_id = store.register_pretrained(Variant("tiny (pretrained)", model(0), "pretrained", {"arch": "tiny"}))
    fast = Challenge("int8", (Constraint("max_int8_latency", 10_000.0),), Objective("int8_latency_ms"),
                     start=start_id)
    _, _, code, [cid] = lesson(store, start_id, fast)
    [c] = list_challenges(store, code)
    ws, _ = store.create_workspace()
    vid = keep(store, ws, 1)
    e = submit(store, code, cid, ws, vid, "Ada")
    assert 0 < e.measured.int8_latency_ms < 10_000 and e.verdict.passed and c.start.int8_latency_ms > 0
    monkeypatch.setattr(remeasure, "int8_latency", lambda *a: pytest.fail("compiled again"))
    assert submit(store, code, cid, ws, vid, "Ada").measured.int8_latency_ms == e.measured.int8_latency_ms
    store.close()


# --- schema versions ---------------------------------------------------------------------------------------

def make_version_2(url, home) -> str:
    """A version-2 store (version 1 + the jobs table) holding one workspace and one variant."""
    vid = make_version_1(url, home)
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in UPGRADES[1]:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("UPDATE schema_version SET version = 2")
    engine.dispose()
    return vid


def make_version_3(url, home) -> tuple[str, str]:
    """A version-3 store (version 2 + classes, challenges, submissions, measurements) holding one workspace,
    one variant and one class with a challenge; returns (variant id, the class's join code)."""
    vid = make_version_2(url, home)
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in UPGRADES[2]:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("UPDATE schema_version SET version = 3")
        conn.exec_driver_sql("INSERT INTO classes VALUES ('kold', 'Old lab', %s, 'ABCDEF', 3, 100.0, NULL)"
                             % ("'" + "0" * 64 + "'"))
    engine.dispose()
    return vid, "ABCDEF"


def test_a_version_2_store_is_upgraded_keeping_its_data(home, db_url, opener, tmp_path):
    home.mkdir(parents=True, exist_ok=True)
    vid = make_version_2(db_url, home)
    store = opener()
    ws = store.open_workspace(V1_TOKEN)
    assert [v.id for v in store.variants(ws)] == [vid]
    start = store.register_pretrained(Variant("tiny (pretrained)", model(0), "pretrained", {"arch": "tiny"}))
    _, _, code, [cid] = lesson(store, start)
    assert submit(store, code, cid, ws, vid, "old friend").variant_id == vid       # the old variant, submitted
    assert join_class(store, code, ws) == joined_class(store, ws)                  # version 4's table
    upgraded = layout(db_url)
    store.close()
    if db_url.startswith("sqlite"):
        fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    else:
        engine = create_engine(db_url)
        tables = MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
        engine.dispose()
        fresh = db_url
    open_store(home, fresh).close()
    assert layout(fresh) == upgraded and "classes" in upgraded


def test_a_version_3_store_is_upgraded_to_4_and_its_class_can_be_joined(home, db_url, opener):
    home.mkdir(parents=True, exist_ok=True)
    vid, code = make_version_3(db_url, home)
    store = opener()
    ws = store.open_workspace(V1_TOKEN)
    assert [v.id for v in store.variants(ws)] == [vid] and SCHEMA_VERSION == 4
    assert joined_class(store, ws) is None
    assert join_class(store, code, ws).name == "Old lab" == joined_class(store, ws).name
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM schema_version").scalar_one() == 4
    assert "class_members" in layout(db_url)


def test_a_database_newer_than_this_release_is_refused(store, home, db_url):
    with store.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}")
        assert conn.execute(select(CLASSES)).all() == []
    store.close()
    with pytest.raises(StoreVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        open_store(home, db_url)
