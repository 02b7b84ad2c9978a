"""The safety net: whatever goes wrong in a page, the sidebar or a fragment, the student sees a message
they can act on, never a traceback, and nothing already kept is lost.

Errors a user can cause (a bad file, missing data) are DataError / ModelFileError, the workspace store's
faults (a newer database, a locked one, a full disk, a missing weights file, a bad link) StoreError, and
a job the engine does not take JobRefused; each says what to do, and its message is shown as plain text. Anything else is a bug: the page says so in one line and the
traceback goes to the server's log. Streamlit's own control flow (st.rerun, st.stop) passes through:
it raises BaseExceptions, which `except Exception` does not catch.
"""
from __future__ import annotations

import functools
import logging

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from compression.data import DataError
from compression.files import ModelFileError
from compression.job_view import JobRefused
from compression.store_errors import StoreError

from .format import plain

log = logging.getLogger("playground")
EXPECTED = (DataError, ModelFileError, StoreError, JobRefused)


def reason(exc: Exception) -> str:
    """What went wrong, in the student's words: an expected error's own message, else one line."""
    if isinstance(exc, EXPECTED):
        return str(exc).strip() or type(exc).__name__
    return f"an unexpected error ({type(exc).__name__}); it has been written to the server's log"


def message(exc: Exception) -> str:
    """reason(exc), made safe to show as Markdown: an expected error's message may quote a file or a
    link, so it is shown as plain text; the line for a bug is ours (a class name), shown as it is."""
    return plain(reason(exc)) if isinstance(exc, EXPECTED) else reason(exc)


def show_error(exc: Exception, where: str = "This page") -> None:
    log.error("%s failed", where, exc_info=exc)
    st.error(f"{where} could not finish: {message(exc)}\n\nNothing you kept was lost. Try other settings, "
             "or pick another model in hand in the sidebar.", icon=":material/error:")


def guarded(where: str = "This page"):
    """Decorator: run the function inside the safety net."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # the last safety net: a message, never a traceback
                show_error(exc, where)
        return run
    return wrap


def fragment(fn=None, *, run_every=None, where: str = "This part of the page"):
    """st.fragment inside the safety net: a fragment reruns on its own, outside app.py's net."""
    if fn is None:
        return lambda f: fragment(f, run_every=run_every, where=where)
    return st.fragment(guarded(where)(fn), run_every=run_every)


def fragment_run() -> bool:
    """True while Streamlit reruns one or more fragments alone (a widget inside one moved, or its timer
    fired); False during a run of the whole app, which also ends every fragment's timer in the browser."""
    ctx = get_script_run_ctx(suppress_warning=True)
    return bool(ctx is not None and ctx.fragment_ids_this_run)


def rerun_app() -> None:
    """Rerun the whole app (sidebar, navigation and page), also from inside a fragment: after something
    that every part of the page shows (a variant kept, a job started) changed."""
    st.rerun(scope="app")
