"""A small class in real browsers, through bench/class_load.py's own code: five Chromium contexts open
the same lesson link of the Prune page together and move the pruning ratio to the same positions.
Every page loads, every move settles (the new sparsity shown, nothing stale), no page shows an error,
and sessions that sit idle get no messages from the server (nothing polls when no job runs).
Timings are the bench's business (docs/LOAD.md), not this test's."""
import asyncio
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
pytestmark = [pytest.mark.browser, pytest.mark.slow]

SESSIONS, MOVES = 5, 3


def test_a_class_of_five_follows_a_lesson_without_a_timeout_or_an_error():
    import class_load as L
    from app_server import TreeMonitor, start_server, stop_server

    if not Path(L.CHROMIUM).exists():
        pytest.skip("browser test: Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright")
    with tempfile.TemporaryDirectory(prefix="class-load-test-") as home:
        proc, base = start_server(Path(home), log=Path(home) / "server.log")
        monitor = TreeMonitor(proc.pid)
        try:
            L.warm_up(base, monitor, timeout_s=240)
            row = asyncio.run(L.run_class(base, monitor, SESSIONS, "lesson", MOVES, load_timeout_s=240,
                                          move_timeout_s=120, idle_s=5, after_s=0, think_s=0.5))
        finally:
            monitor.stop()
            stop_server(proc)
    assert row["timeouts"] == 0, row
    assert row["page_errors"] == [], row["page_errors"]
    assert row["page_load_s"]["n"] == SESSIONS and row["move_settle_s"]["n"] == SESSIONS * MOVES, row
    assert row["idle_messages"] == 0, "an idle page with no job running must not be rerun by the server"
