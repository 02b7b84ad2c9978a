"""Whose work is this? The workspace of this browser tab, kept in the store and named by a token in the
URL (?ws=…), so that a reload, a new tab or the same link on another device opens the same work, and a
server restart loses nothing.

- One Store per server process and data folder (st.cache_resource), opened once: jobs left running by
  a previous run of this server are marked interrupted, the pretrained models registered as read-only
  entries every workspace sees.
- A visit without ?ws= (a first visit, or a lesson link a teacher sent) gets a new workspace of its own,
  never the sender's; its token joins the URL beside the lesson parameters.
- A visit with a malformed or unknown token gets a message and a "Start a new workspace" button;
  nothing is created behind the student's back.
The token is the only key to a workspace (the store keeps its SHA-256 only): whoever has the link
sees and changes that work.
"""
from __future__ import annotations

import os
import socket

import streamlit as st

from compression.store import Store, StoredVariant, open_store
from compression.store_errors import StoreError, WorkspaceTokenError
from compression.store_schema import Workspace, data_home, database_url
from compression.variant import Variant

from . import precompute, state
from .format import plain

PARAM = "ws"


def server_name() -> str:
    """This app server, stable across its restarts (host and port): its jobs are the ones a restart
    marks interrupted, so app processes sharing one PostgreSQL database leave each other's alone."""
    return os.environ.get("PLAYGROUND_SERVER") or f"{socket.gethostname()}:{st.get_option('server.port')}"


@st.cache_resource(show_spinner="Opening the workspace store…", max_entries=4)
def _open(home: str, url: str) -> Store:
    store = open_store(home, url)
    store.jobs.mark_interrupted(server=server_name())
    shipped = {store.register_pretrained(v): v for v in state.pretrained_variants().values()}
    precompute.start(shipped, state.eval_set())     # their slider grids, in the background (ui/precompute.py)
    return store


def store() -> Store:
    """The store of PLAYGROUND_HOME (or PLAYGROUND_DB_URL), shared by every session of this server."""
    home = data_home()
    return _open(str(home), database_url(home))


def get() -> Workspace:
    """This session's workspace, from the URL's token (WorkspaceTokenError if it names none), or a new
    one when the URL has no token. The token stays in the URL."""
    token = st.query_params.get(PARAM)
    held = st.session_state.get("_workspace")          # (token, Workspace) once resolved
    if held is not None and token in (None, held[0]):
        if token is None:
            st.query_params[PARAM] = held[0]
        return held[1]
    if token is None:
        workspace, token = store().create_workspace()
        st.query_params[PARAM] = token
    else:
        workspace = store().open_workspace(token)
    _enter(workspace, token)
    return workspace


def token() -> str:
    return st.session_state["_workspace"][0]


def _enter(workspace: Workspace, token: str) -> None:
    """Make `workspace` this session's; what the session held of another one goes."""
    previous = st.session_state.get("_workspace")
    if previous is not None and previous[1].id != workspace.id:
        st.session_state.pop("current", None)
    st.session_state["_workspace"] = (token, workspace)


def start_new() -> None:
    """A fresh, empty workspace for this session (the old one stays at its link)."""
    old = st.session_state.get("_workspace")
    if old is not None:
        st.session_state["_previous_link"] = link(old[0])
    workspace, token = store().create_workspace()
    _enter(workspace, token)
    st.query_params[PARAM] = token


def link(token: str) -> str:
    """The URL that opens the workspace of `token` (on this page)."""
    base = (st.context.url or "").split("?")[0] or "http://localhost:8501/"
    return f"{base}?{PARAM}={token}"


def enter() -> bool:
    """Before the sidebar and the page: resolve the workspace. A bad link gets its message and a way
    out, a store that cannot be used (StoreError) its message; then the rest of the app is not drawn
    (returns False)."""
    try:
        get()
        return True
    except WorkspaceTokenError as exc:
        st.error(f"{plain(exc)}", icon=":material/link_off:")
        st.caption("Nothing was changed: the workspace of a correct link is still there.")
        if st.button("Start a new workspace", type="primary", icon=":material/add:", key="ws_new_after_error"):
            start_new()
            st.rerun()
        return False
    except StoreError as exc:                  # a newer, locked or unreachable database, a full disk
        st.error(f"The workspace store cannot be used right now: {plain(exc)}", icon=":material/database:")
        st.caption("Nothing stored was changed. Reload the page to try again.")
        return False


def sidebar() -> None:
    """The workspace link to copy, and a fresh workspace."""
    with st.popover("Your workspace link", icon=":material/link:", width="stretch"):
        st.caption("Open this link later, in another tab or on another device, to come back to everything "
                   "you kept and every job you started. Keep it to yourself: whoever has it can change "
                   "this work.")
        st.code(link(token()), language=None, wrap_lines=True)
    if st.button("Start a new workspace", icon=":material/add:", width="stretch", key="ws_new",
                 help="An empty workspace with a new link. This one stays at its link: copy it first."):
        start_new()
        st.rerun()
    previous = st.session_state.get("_previous_link")
    if previous:
        with st.expander("Your previous workspace"):
            st.code(previous, language=None, wrap_lines=True)


# --- the workspace's variants and the model in hand ------------------------------------------------------

def variants() -> list[StoredVariant]:
    """Every variant the workspace sees, pretrained first, as records (no model loaded)."""
    return [_remeasured(r) for r in store().variants(get())]


def record(variant_id: str) -> StoredVariant:
    """One variant's record (VariantUnavailableError if this workspace does not see it)."""
    return _remeasured(store().variant(get(), variant_id))


def variant(variant_id: str) -> Variant:
    """A variant with its model (shared by every session through the store's cache: never modify it)."""
    return record(variant_id).as_variant(store().model(get(), variant_id))


def _remeasured(record: StoredVariant) -> StoredVariant:
    """Figures measured later on a pretrained model (latency, full test accuracy), from this server."""
    for name, value in remeasured().get(record.id, {}).items():
        if getattr(record.metrics, name) is None:
            setattr(record.metrics, name, value)
    return record


def pretrained_id(arch: str) -> str | None:
    """The store id of a shipped model, by architecture."""
    return next((r.id for r in variants() if r.builtin and r.settings.get("arch") == arch), None)


def current_id() -> str | None:
    """The id of the model in hand (the first variant when none was picked, or the pick is gone)."""
    ids = [r.id for r in variants()]
    if st.session_state.get("current") not in ids:
        st.session_state.current = ids[0] if ids else None
    return st.session_state.current


def current() -> Variant | None:
    vid = current_id()
    return variant(vid) if vid is not None else None


def require_current() -> Variant:
    """The model in hand; without one, the page says what to do and stops."""
    in_hand = current()
    if in_hand is None:
        st.error("No model in hand. Train one on the Train page or upload one on Compare & Download.")
        st.stop()
    return in_hand


def set_current(variant_id: str) -> None:
    st.session_state.current = variant_id


def keep(variant: Variant) -> str:
    """Keep `variant` in the workspace for good; returns its stored id."""
    return store().keep(get(), variant)


@st.cache_resource(show_spinner=False)
def remeasured() -> dict[str, dict]:
    """Figures measured after a pretrained model was registered, by variant id (ids are content-derived,
    so every session may share them). A workspace's own variants keep theirs in the store instead."""
    return {}


def record_metrics(variant: Variant, builtin: bool, **values) -> None:
    """Remember figures measured later (latency, full test accuracy) for good: kept again in the store
    for the workspace's own variants (same content, same id), in this server's memory for pretrained ones."""
    for name, value in values.items():
        setattr(variant.metrics, name, value)
    if builtin:
        remeasured().setdefault(variant.id, {}).update(values)
    else:
        keep(variant)
