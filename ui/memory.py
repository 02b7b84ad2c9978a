"""Give the memory of a class back when the server goes idle.

glibc's malloc keeps what is freed: every arena stays at its high-water mark, so after a lesson the
server would stay about as large as at its peak, although the caches are bounded (ui/cached.py) and
the sessions hold only ids and widget state. A daemon thread watches the process's CPU time (all its
threads: script runs, fragments, analyses) and calls `malloc_trim(0)`
(compression.metrics.return_freed_memory; nothing happens without glibc) once the process has been quiet
for PLAYGROUND_TRIM_IDLE_S seconds (default 5) after at least a second of work, and every BUSY_EVERY_S
(10 s) while work goes on: a class's backlog of reruns and the background curves it asked for can keep a
server busy long after the sessions closed (ten students in free play: 0.3 cores for 30 s and more), and
memory freed meanwhile should not wait for the end. A quiet second is one in which the process used
under 5 % of a core: an idle server with ten open pages uses 1 %.

When no browser has been connected for PLAYGROUND_TRIM_IDLE_S seconds (the class has left), the slider
results and charts cached for it go too (ui/cached.forget) before the trim: a server with nobody on it
keeps only what a first visit loads. The accuracies that are expensive to measure stay on disk (the
slider grids, ui/precompute.py). The session count is Streamlit's runtime's (private API; without it
nothing is dropped).

CPU time rather than Streamlit's script runs: it also sees fragments and background work, and needs
no hook into Streamlit's runtime. A trim takes milliseconds (95 ms handing back 570 MB of a fragmented
heap, 7 ms when there is little to give back): at most 1 % of a core while busy.
"""
from __future__ import annotations

import os
import threading
import time

from compression.metrics import return_freed_memory

from . import cached

IDLE_S = float(os.environ.get("PLAYGROUND_TRIM_IDLE_S") or 5)
QUIET_CORES = 0.05      # under this share of a core, a second counts as quiet
WORK_CPU_S = 1.0        # CPU seconds of work since the last trim before the next one
BUSY_EVERY_S = 10.0     # while work goes on, a trim at most this often


class IdleTrim:
    """When to trim, from samples of (process CPU seconds, wall seconds); `tick` says whether to trim now."""

    def __init__(self, cpu: float, now: float, idle_s: float = IDLE_S):
        self.idle_s = idle_s
        self.last_cpu, self.last_now = cpu, now
        self.quiet_since = self.trimmed_at = now
        self.cpu_at_trim = cpu

    def tick(self, cpu: float, now: float) -> bool:
        if cpu - self.last_cpu > QUIET_CORES * max(now - self.last_now, 1e-9):
            self.quiet_since = now
        self.last_cpu, self.last_now = cpu, now
        worked = cpu - self.cpu_at_trim >= WORK_CPU_S
        if worked and (now - self.quiet_since >= self.idle_s or now - self.trimmed_at >= BUSY_EVERY_S):
            self.cpu_at_trim, self.trimmed_at = cpu, now
            return True
        return False


_started = False
_lock = threading.Lock()


def trim_when_idle() -> None:
    """Start the watching thread (once per process; later calls do nothing)."""
    global _started
    with _lock:
        if _started:
            return
        _started = True
    threading.Thread(target=_watch, name="playground-trim", daemon=True).start()


def active_sessions() -> int | None:
    """Browsers connected to this server now (None where Streamlit's runtime does not say)."""
    try:
        from streamlit import runtime

        return runtime.get_instance()._session_mgr.num_active_sessions()
    except Exception:            # no runtime (a bare script), or Streamlit changed its internals
        return None


def _watch() -> None:
    state = IdleTrim(time.process_time(), time.monotonic())
    empty_since = None
    while True:
        time.sleep(1.0)
        now = time.monotonic()
        if active_sessions() == 0:
            empty_since = empty_since or now
            if now - empty_since >= state.idle_s and cached.forget():
                return_freed_memory()
        else:
            empty_since = None
        if state.tick(time.process_time(), now):
            return_freed_memory()
            state.cpu_at_trim = time.process_time()      # the trim's own CPU is not work
