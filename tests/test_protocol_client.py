"""Two students without a browser, through bench/protocol_client.py's own code: each a Streamlit session over
the websocket on a real server, opening the Prune page's lesson link and following one lesson move.
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
    from app_server import TreeMonitor, start_server, stop_server

    target = P.L.LESSON[0]
    with tempfile.TemporaryDirectory(prefix="protocol-test-") as home:
        proc, base = start_server(Path(home), log=Path(home) / "server.log")
        monitor = TreeMonitor(proc.pid)
        try:
            row = asyncio.run(P.run_class(base, monitor, SESSIONS, "lesson", 1, load_timeout_s=240,
                                          move_timeout_s=180, idle_s=2, after_s=0, think_s=0))

            async def one_more() -> P.Session:
                student = P.Session(SESSIONS, base)
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
    assert student.metric(P.METRIC) == f"{target}.0 %"
    assert f"ratio={target}" in student.query.split("&"), student.query     # the server's widget state
    assert student.errors == []
