"""The Class board page, driven headlessly with AppTest: a teacher creates a class and a challenge, a student
joins by code and submits a variant of their own workspace from Compare & Download, the board shows it
(a hostile display name as text), and bad codes and links end in a message, never a traceback."""
import json
import math
import re

import pytest
import torch

from compression.metrics import Metrics
from compression.models import create_model
from compression.prune import prune
from compression.variant import Variant
from ui.board_chart import number_ticks, size_ticks
from app_fixtures import assets, goto, my_workspace, new_app, stop_background_work, store  # noqa: F401

pytest.importorskip("streamlit")
HOSTILE = "<img src=x onerror=alert(1)>"


def ran(at):
    """No exception, and no "could not finish" from the safety net (ui/safety.py) either."""
    assert not at.exception, [e.value for e in at.exception]
    assert not [e.value for e in at.error if "could not finish" in e.value]
    return at


def opened(at, page="board"):
    at.run()
    return ran(goto(ran(at), page))


def texts(at) -> str:
    return "\n".join(e.value for kind in ("markdown", "error", "success", "warning", "info", "caption")
                     for e in at.get(kind))


def click(at, label):
    next(b for b in at.button if b.label == label).click()
    ran(at.run())


def form_submit(at, label):
    next(b for b in at.get("form_submit_button") if b.label == label).click()
    ran(at.run())


def keep_own_variant(at, amount: float) -> str:
    """A variant of the student's own (a pruned resnet8 at width 0.25), kept in their workspace."""
    torch.manual_seed(1)
    model = prune(create_model("resnet8", width=0.25), amount).eval()
    return store().keep(my_workspace(at), Variant(f"pruned {amount}", model, "pruned", {"amount": amount},
                                                  None, Metrics(eval_accuracy=0.99)))


@pytest.fixture
def teacher(assets, monkeypatch):
    """A teacher who created a class with a custom challenge every entry can pass."""
    at = opened(new_app(assets, monkeypatch))
    next(t for t in at.text_input if t.label == "Class name").input("Monday lab")
    form_submit(at, "Create the class")
    role, token = at.session_state["_class"]
    assert role == "teacher" and at.query_params["teacher"] == token and "ws" in at.query_params
    at.text_input(key="custom_title").input("Smallest model")
    at.number_input(key="custom_min_accuracy").set_value(0.0)
    click(at, "Add this challenge")
    assert "Added “Smallest model”." in texts(at)
    return at


def test_a_student_joins_by_code_submits_and_the_board_shows_the_name_as_text(teacher, assets, monkeypatch):
    code = teacher.session_state["_class"][1]
    from compression.classes import open_class
    code = open_class(store(), code).join_code
    student = opened(new_app(assets, monkeypatch))
    next(t for t in student.text_input if t.label == "Join code").input(code.lower())
    form_submit(student, "Join")
    assert student.session_state["_class"] == ("join", code) and "ws" in student.query_params
    assert f"You joined with code `{code}`" in texts(student)
    vid = keep_own_variant(student, 0.5)
    ran(goto(student, "compare"))
    form = next(s for s in student.selectbox if s.label == "Challenge")
    form.select(next(o for o in form.options if o == "Smallest model"))
    next(s for s in student.selectbox if s.label == "Your variant").set_value(
        next(r for r in store().variants(my_workspace(student)) if r.id == vid))
    student.text_input(key="submit_name").input(HOSTILE)
    form_submit(student, "Submit")
    assert "Submitted: it meets every constraint." in texts(student)
    assert "0.99" not in texts(student)                                 # the claimed accuracy is not used
    ran(goto(teacher, "board"))
    teacher.selectbox(key="board_challenge").set_value(teacher.selectbox(key="board_challenge").options[-1])
    ran(teacher.run())
    table = teacher.table[0].value
    assert list(table["name"]) == [HOSTILE] and list(table.index) == ["1"]
    shown = texts(teacher)               # Markdown (the moderation list) gets it backslash-escaped, as text
    assert HOSTILE not in shown and "\\<img src=x onerror=alert\\(1\\)\\>" in shown
    [chart] = teacher.get("plotly_chart")             # plotly's labels get it HTML-escaped
    spec = json.loads(chart.proto.spec)
    assert HOSTILE not in chart.proto.spec and "#1 &lt;img src=x onerror=alert(1)&gt;" in spec["data"][-2]["text"]
    axis = spec["layout"]["xaxis"]                    # the size axis: a few round ticks with their unit
    assert 2 <= len(axis["tickvals"]) <= 8 and all(re.fullmatch(r"\d+ (B|KiB|MiB)", t) for t in axis["ticktext"])
    assert len({round(math.log2(b / a), 9) for a, b in zip(axis["tickvals"], axis["tickvals"][1:])}) == 1


def test_the_log_axis_ticks_are_few_round_and_labelled_with_their_unit():
    assert size_ticks(26, 1400) == ([32, 64, 128, 256, 512, 1024],
                                    ["32 KiB", "64 KiB", "128 KiB", "256 KiB", "512 KiB", "1 MiB"], (26, 1400))
    values, labels, _ = size_ticks(0.3, 5000)                            # a wide range: ×4 apart
    assert labels == ["1 KiB", "4 KiB", "16 KiB", "64 KiB", "256 KiB", "1 MiB", "4 MiB"]
    assert size_ticks(40, 60) == ([32, 64], ["32 KiB", "64 KiB"], (32, 64))     # widened to two ticks
    assert number_ticks(0.3, 30)[1] == ["0.5", "1", "2", "5", "10", "20"]
    assert number_ticks(0.002, 2e4)[1] == ["0.01", "0.1", "1", "10", "100", "1,000", "10,000"]


def test_bad_codes_and_links_get_a_message_not_a_traceback(assets, monkeypatch):
    at = opened(new_app(assets, monkeypatch))
    next(t for t in at.text_input if t.label == "Join code").input("K7QX")
    form_submit(at, "Join")
    assert "A join code is 6 letters and digits" in texts(at) and "_class" not in at.session_state
    bad = opened(new_app(assets, monkeypatch, teacher="x" * 500))
    assert "The teacher link is damaged" in texts(bad)
    click(bad, "Forget this link and start again")
    assert "teacher" not in bad.query_params and "Join code" in [t.label for t in bad.text_input]


def joined_by_code(at, code: str):
    next(t for t in at.text_input if t.label == "Join code").input(code)
    form_submit(at, "Join")
    return at


def reopened(assets, monkeypatch, at, page: str, only=None):
    """The URL `at` shows (or only its parameters `only`), opened again: a reload (F5) or a new tab, the
    session's state gone."""
    return opened(new_app(assets, monkeypatch, **{k: at.query_params[k] for k in at.query_params
                                                  if only is None or k in only}), page)


def test_a_student_s_class_survives_a_reload_and_a_new_tab_of_the_workspace_link(teacher, assets, monkeypatch):
    from compression.classes import open_class
    code = open_class(store(), teacher.session_state["_class"][1]).join_code
    student = joined_by_code(opened(new_app(assets, monkeypatch)), code)
    vid = keep_own_variant(student, 0.5)
    tab = reopened(assets, monkeypatch, student, "compare", only=["ws"])    # the workspace link alone
    next(s for s in tab.selectbox if s.label == "Challenge").select("Smallest model")
    next(s for s in tab.selectbox if s.label == "Your variant").set_value(
        next(r for r in store().variants(my_workspace(tab)) if r.id == vid))
    tab.text_input(key="submit_name").input("Ada")
    form_submit(tab, "Submit")
    assert "Submitted: it meets every constraint." in texts(tab)
    board = reopened(assets, monkeypatch, student, "board", only=["ws"])
    assert f"You joined with code `{code}`" in texts(board) and board.query_params["join"] == code
    click(board, "Leave this class")
    after = reopened(assets, monkeypatch, student, "compare", only=["ws"])
    assert "Join it on the Class board page" in texts(after) and "Submit" not in [
        b.label for b in after.get("form_submit_button")]


def test_presenter_mode_is_kept_in_the_url(teacher, assets, monkeypatch):
    assert "present" not in teacher.query_params
    teacher.toggle(key="board_present").set_value(True)
    ran(teacher.run())
    assert teacher.query_params["present"] == "1" and "Add a challenge" not in [e.label for e in teacher.expander]
    again = reopened(assets, monkeypatch, teacher, "board")          # a reload, or the URL on the projector
    assert again.toggle(key="board_present").value and "Add a challenge" not in [e.label for e in again.expander]
    assert any("stSidebar" in h.proto.body for h in again.get("html"))     # the presenter's style
    again.toggle(key="board_present").set_value(False)
    ran(again.run())
    assert "present" not in again.query_params and "teacher" in again.query_params
    assert "Add a challenge" in [e.label for e in again.expander]


def test_the_presenter_link_shows_the_board_without_joining_the_class_or_a_leave_button(teacher, assets, monkeypatch):
    from compression.classes import joined_class, open_class
    code = open_class(store(), teacher.session_state["_class"][1]).join_code
    projector = opened(new_app(assets, monkeypatch, join=code, present="1"))
    assert projector.toggle(key="board_present").value and projector.query_params["present"] == "1"
    assert "Smallest model" in texts(projector)
    assert "Leave this class" not in [b.label for b in projector.button], "a button on the projected screen"
    assert joined_class(store(), my_workspace(projector)) is None, "the projector's browser is no student"
