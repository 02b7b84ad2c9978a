"""Two students without a browser, through the bench's own code (bench/protocol_client.py, st_session.py):
each a Streamlit session over the websocket on a real server, opening the Prune page's lesson link and following one lesson move.
Every page loads, the move settles at the lesson's position (the metric reads it after a finished run, and
the server's own URL for the session, mirrored from its widget state, carries it), no errors. Timings are
the bench's business (docs/LOAD.md), not this test's."""
import asyncio
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
pytestmark = [pytest.mark.slow]

SESSIONS = 2


def test_two_protocol_students_follow_a_lesson_move_without_an_error():
    import protocol_client as P
    import st_session as S
    from app_server import TreeMonitor, start_server, stop_server

    target = P.L.LESSON[0]
    with tempfile.TemporaryDirectory(prefix="protocol-test-") as home:
        proc, base = start_server(Path(home), log=Path(home) / "server.log")
        monitor = TreeMonitor(proc.pid)
        try:
            row = asyncio.run(P.run_class(base, monitor, SESSIONS, "lesson", 1, load_timeout_s=240,
                                          move_timeout_s=180, idle_s=2, after_s=0, think_s=0))

            async def one_more() -> S.Session:
                student = S.Session(SESSIONS, base)
                await student.open(240)
                await student.move(target, 180)
                await student.close()
                return student
            student = asyncio.run(one_more())
        finally:
            monitor.stop()
            stop_server(proc)
    assert row["client"] == "protocol" and row["timeouts"] == 0, row
    assert row["page_errors"] == [], row["page_errors"]
    assert row["page_load_s"]["n"] == SESSIONS and row["move_settle_s"]["n"] == SESSIONS, row
    assert row["widget_types_not_sent"] == [], "every widget on the page sends its state, as the browser's"
    assert student.load_s is not None and len(student.moves_s) == 1, student.errors
    assert student.metric(S.METRIC) == f"{target}.0 %"
    assert f"ratio={target}" in student.query.split("&"), student.query     # the server's widget state
    assert student.errors == []


FRAGMENT_APP = '''
import streamlit as st


def prune():
    st.checkbox("Outside the fragment", key="outside")

    @st.fragment
    def part():
        ratio = st.slider("Pruning ratio (%)", 0, 99, 50, key="prune_ratio")
        st.metric("Sparsity (prunable layers)", f"{ratio:.1f} %")
    part()


st.navigation([st.Page(lambda: st.write("home"), title="Home", default=True),
               st.Page(prune, title="Prune", url_path="prune")]).run()
'''


def test_a_slider_in_a_fragment_is_moved_by_a_fragment_run():
    """The slider's delta carries its fragment's id; the move sends it, so the server reruns only the
    fragment, and what lies outside the fragment stays on the page (and in the widget state)."""
    import st_session as S
    from app_server import start_server, stop_server
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    with tempfile.TemporaryDirectory(prefix="protocol-fragment-") as home:
        (Path(home) / "app.py").write_text(FRAGMENT_APP)
        proc, base = start_server(Path(home), app_dir=Path(home))
        try:
            async def student() -> S.Session:
                s = S.Session(0, base)
                await s.open(60)
                await s.move(30, 60)
                await s.move(70, 60)          # the second move reruns the same page's fragment
                s.move_status, asked = s.last_status, s.started
                await s.rerun()               # a full rerun after fragment runs: still the Prune page
                s.full_rerun_settled = await s.until(70, asked, 60)
                await s.close()
                return s
            s = asyncio.run(student())
        finally:
            stop_server(proc)
    slider = s.widget(S.SLIDER_KEY)
    assert slider is not None and slider.fragment, "the slider's delta names its fragment"
    assert len(s.moves_s) == 2 and s.metric(S.METRIC) == "70.0 %" and s.errors == [], s.errors
    assert s.move_status == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
    assert s.widget("outside") is not None, "a fragment run keeps the elements outside the fragment"
    assert s.full_rerun_settled, "a full rerun after fragment runs names the page that ran, not app.py"
    assert list(s.widgets[slider.el.id].double_array_value.data) == [70.0]
