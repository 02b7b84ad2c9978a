"""The class board's parts the pages share: who this session is in a class (teacher or student), the
links, the live board, moderation, and the submit form of Compare & Download. All the rules (who may do
what, re-measuring, judging, ranking) are compression.classes and compression.board; this module only
draws and calls them.

A class is named in the URL: ?teacher=TOKEN on the teacher's link, ?join=CODE on the students'. Neither
link carries a workspace (?ws=): a student who opens the join link works in a workspace of their own,
and the join code reaches no workspace at all. A student's workspace remembers the class it joined (in
the store: compression.classes.joined_class), so Compare & Download knows where to submit after a
reload, in a new tab of the workspace link, or on another device; a teacher's class is the session's.
"""
from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
import streamlit as st

from compression import board as B
from compression import classes as C
from compression.challenges import ChallengeError
from compression.class_access import MAX_NAME

from . import board_chart, safety, workspace
from .format import accuracy, kib, plain

TEACHER, STUDENT = "teacher", "join"          # the URL parameter of each role
MAX_PARAM = 64                                # a token is 32 characters, a code 6: anything longer is not one
POLL_S = 2.0
PRESENTER_CSS = """<style>
section[data-testid="stSidebar"], [data-testid="stSidebarCollapsedControl"], header[data-testid="stHeader"],
[data-testid="stSidebarNav"] {display: none !important;}
[data-testid="stMainBlockContainer"] {max-width: 100%; padding-top: 1rem;}
[data-testid="stMainBlockContainer"] p, [data-testid="stMainBlockContainer"] li {font-size: 1.45rem;}
[data-testid="stTable"] td, [data-testid="stTable"] th {font-size: 1.35rem;}
</style>"""


# --- who this session is ---------------------------------------------------------------------------------

def from_link() -> tuple[str, str] | None:
    """(role, key) the URL names, else the class this session or its workspace joined, else None."""
    for role in (TEACHER, STUDENT):
        value = st.query_params.get(role)
        if value:
            return role, value[:MAX_PARAM + 1]
    return joined()


def joined() -> tuple[str, str] | None:
    """The class this session entered, else the open class the workspace joined (a reload, a new tab)."""
    held = st.session_state.get("_class")
    if held is not None:
        return held
    info = C.joined_class(workspace.store(), workspace.get())
    if info is None:
        return None
    st.session_state["_class"] = (STUDENT, info.join_code)
    return STUDENT, info.join_code


def enter(role: str, key: str) -> C.ClassInfo:
    """Check the teacher token or join code (ClassAccessError says what is wrong), remember it for the
    session (a student's workspace remembers its class too) and put it in the URL beside the workspace."""
    store = workspace.store()
    if role == TEACHER:
        info = C.open_class(store, key)
    else:                  # the workspace remembers the class once; a projector (present=1) joins no class
        remember = st.session_state.get("_class") != (STUDENT, key) and not st.query_params.get("present")
        info = C.join_class(store, key, workspace.get() if remember else None)
    key = key if role == TEACHER else info.join_code
    st.session_state["_class"] = (role, key)
    params = {role: key, **({"ws": st.query_params["ws"]} if "ws" in st.query_params else {})}
    if st.query_params.get("present"):
        params["present"] = "1"
    if dict(st.query_params) != params:
        st.query_params.from_dict(params)
    return info


def leave() -> None:
    held = st.session_state.pop("_class", None)
    if held is not None and held[0] == STUDENT:
        C.leave_class(workspace.store(), workspace.get())
    for role in (TEACHER, STUDENT, "present"):
        st.query_params.pop(role, None)


def presenter_toggle() -> bool:
    """The Presenter mode toggle, kept in the URL as present=1: a reload stays in presenter mode, and the
    address can be opened on the projector's browser. A link with present=1 opens in presenter mode."""
    return st.toggle("Presenter mode", key="board_present", value=bool(st.query_params.get("present")),
                     on_change=_present_in_url, help="Large type, no sidebar, the board updates by itself")


def _present_in_url() -> None:
    if st.session_state.get("board_present"):
        st.query_params["present"] = "1"
    else:
        st.query_params.pop("present", None)


def page_link(**params: str) -> str:
    """This page's URL with `params` only (never the workspace)."""
    parts = urlsplit(st.context.url or "http://localhost:8501/board")
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "&".join(f"{k}={v}" for k, v in params.items()), ""))


def network_address() -> str | None:
    """This laptop's address on the local network (the route to a private address; nothing is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
    except OSError:
        return None


def links(info: C.ClassInfo, teacher_token: str) -> None:
    """The join code and link to show the class, and the teacher's own link (kept private)."""
    st.markdown(f"### Join code: `{info.join_code}`")
    join = page_link(join=info.join_code)
    st.code(join, language=None, wrap_lines=True)
    host = urlsplit(join).hostname
    address = network_address()
    if host in ("localhost", "127.0.0.1") and address:
        st.caption(f"Students on the same network open {plain(join.replace(host, address, 1))} "
                   f"(this laptop's address), or type the code on the Class board page.")
    st.caption(f"To project the board without your teacher link in the address bar, open "
               f"{plain(page_link(join=info.join_code, present='1'))} (read-only, presenter mode).")
    with st.popover("Your teacher link (keep it private)", icon=":material/key:"):
        st.caption("It opens this class with the right to add challenges and remove entries. It is shown "
                   "in full only here: bookmark it before you close the tab.")
        st.code(page_link(teacher=teacher_token), language=None, wrap_lines=True)


# --- the board itself ------------------------------------------------------------------------------------

def deadline_text(b: B.Board, now: float) -> str:
    if not b.open:
        return "Closed: no more submissions."
    if b.deadline is None:
        return "Open, no deadline."
    left = b.deadline - now
    return (f"Open until {time.strftime('%H:%M', time.localtime(b.deadline))} (server time), "
            f"{int(left // 60)} min {int(left % 60):02d} s left.")


def ranked_table(b: B.Board) -> pd.DataFrame:
    """One row per entry in board order: rank, name (as typed: a table shows text), score, each rule."""
    rows = []
    for r in b.rows:
        row = {"rank": str(r["rank"] or "—"), "name": r["name"] + ("  ◀ you" if r["mine"] else ""),
               "score": r["score_text"], "eval accuracy": accuracy(r["eval_accuracy"]),
               "packed": kib(r["bytes_packed"])}
        for i, c in enumerate(r["checks"], 1):
            row[f"rule {i}"] = ("✓ " if c["passed"] else "✗ ") + (c["note"] or "")
        rows.append({**row, "recipe": r["recipe"]})
    return pd.DataFrame(rows)


def current_board(key: str, challenge_id: str) -> B.Board:
    """The board, rebuilt only when board_version moved (an entry came, went or was hidden) or its
    deadline passed since it was built; else the one this session built last."""
    store = workspace.store()
    version = B.board_version(store, key, challenge_id)
    held = st.session_state.get("_board")
    if held is not None and held[0] == (key, challenge_id, version):
        b = held[1]
        if not (b.open and b.deadline is not None and time.time() > b.deadline):
            return b
    mine = workspace.get() if st.session_state.get("_class", ("",))[0] == STUDENT else None
    b = B.board(store, key, challenge_id, workspace=mine)
    st.session_state["_board"] = ((key, challenge_id, version), b)
    return b


def draw(b: B.Board, presenter: bool, references: bool) -> None:
    """The board of one challenge: goal, chart, off-axis rules, ranked table, references."""
    challenge_id = b.challenge_id
    st.markdown(f"## {plain(b.title)}")
    st.markdown("Goal: " + "; ".join(plain(g) for g in b.goal) + f".  \n{plain(deadline_text(b, time.time()))}")
    fig = board_chart.board_chart(b, references=references, height=760 if presenter else 560, large=presenter)
    st.plotly_chart(fig, key=f"board_chart_{challenge_id}",       # the projector's type: the figure's own
                    theme=None if presenter else "streamlit")
    _, off_axes = board_chart.drawable(b)
    if off_axes:
        st.caption("Also required (not on these axes): " + "; ".join(plain(r["rule"]) for r in off_axes) + ".")
    if b.rows:
        rules = "  \n".join(f"rule {i}: {plain(g)}" for i, g in enumerate(b.goal[:-1], 1))
        st.table(ranked_table(b).set_index("rank"))
        st.caption(rules)
    else:
        st.info("No submissions yet. Students submit a variant from Compare & Download.")
    if references and b.references:
        with st.expander("Reference points: where they come from"):
            for r in b.references:
                st.markdown(f"- **{plain(r['label'])}**: {accuracy(r['accuracy'])}, {plain(r['bytes_kind'])}. "
                            f"Source: {plain(r['source'])}. *{plain(r['note'])}*")


def live(key: str, challenge_id: str, presenter: bool, references: bool, polling: bool) -> None:
    """The board in a fragment that reruns every POLL_S only while `polling` (live or presenter mode):
    it asks board_version first and redraws only when an entry came, went or was hidden."""
    def body():
        draw(current_board(key, challenge_id), presenter, references)

    safety.fragment(body, run_every=POLL_S if polling else None, where="The board")()


# --- the teacher's controls ------------------------------------------------------------------------------

def moderate(token: str, challenge_id: str) -> None:
    """Every current entry, hidden ones too: hide / show and remove (the student may submit again)."""
    store = workspace.store()
    found = C.entries(store, token, challenge_id)
    if not found:
        st.caption("No entries yet.")
    for e in found:
        a, b, c = st.columns([4, 1, 1])
        state = " (hidden from the board)" if e.hidden else ""
        a.markdown(f"**{plain(e.name)}**{state}: {accuracy(float(e.measured.value('eval_accuracy')))}, "
                   f"{plain(' → '.join(e.recipe))}")
        if b.button("Show" if e.hidden else "Hide", key=f"hide_{e.id}"):
            C.hide_entry(store, token, e.id, hidden=not e.hidden)
            st.rerun()
        if c.button("Remove", key=f"remove_{e.id}", help="Delete this entry and its history in this challenge"):
            C.remove_entry(store, token, e.id)
            st.session_state["_board_message"] = ("success", f"Removed the entry of {plain(e.name)}.")
            st.rerun()


def add_exercise(token: str, name: str) -> None:
    try:
        with st.spinner("Measuring the starting model on this server…"):
            info = C.add_challenge(workspace.store(), token, name)
        st.session_state["_board_message"] = ("success", f"Added “{plain(info.challenge.title)}”.")
        st.session_state["_board_pick"] = info.id
    except ChallengeError as exc:
        st.session_state["_board_message"] = ("error", plain(exc))
    st.rerun()


# --- the student's submit form (Compare & Download) -----------------------------------------------------

def submit_message(entry) -> tuple[str, str]:
    """What the student reads after submitting: the server's measurement and each rule's outcome."""
    lines = [f"{'✓' if c.passed else '✗'} {plain(c.rule)}" + (f" ({plain(c.note)})" if c.note else "")
             for c in entry.verdict.checks]
    head = ("Submitted: it meets every constraint." if entry.verdict.passed
            else f"Submitted, but it misses {entry.verdict.failed} constraint(s).")
    measured = (f"The server measured {accuracy(float(entry.measured.value('eval_accuracy')))} eval accuracy, "
                f"{kib(entry.measured.bytes_packed)} packed.")
    return ("success" if entry.verdict.passed else "warning"), "  \n".join([head, measured, *lines])


def variant_label(record) -> str:
    known = record.metrics.eval_accuracy
    return f"{record.name} ({accuracy(known)} eval accuracy)" if known is not None else record.name


def submit_section() -> None:
    """Submit one of the workspace's own variants to a challenge of the class this session joined."""
    st.subheader("Submit to a class challenge")
    store = workspace.store()
    entered = joined()
    if entered is None:
        st.caption("Your teacher runs a class board? Join it on the Class board page with its code, then "
                   "come back here to submit.")
        st.page_link("app_pages/board.py", label="Open the Class board", icon=":material/co_present:")
        return
    role, key = entered
    code = key if role == STUDENT else C.open_class(store, key).join_code
    open_now = [c for c in C.list_challenges(store, code) if c.open_at(time.time())]
    mine = [r for r in workspace.variants() if not r.builtin]
    message = st.session_state.pop("_submit_message", None)
    if message:
        getattr(st, message[0])(message[1])
    if not open_now:
        st.info("This class has no open challenge right now.")
        return
    if not mine:
        st.info("Keep a variant of your own first (prune, quantize, …, then “Keep this variant”).")
        return
    with st.form("submit_form"):
        pick = st.selectbox("Challenge", open_now, format_func=lambda c: c.challenge.title)
        variant = st.selectbox("Your variant", mine, format_func=variant_label)
        name = st.text_input("Display name on the board", max_chars=MAX_NAME, key="submit_name")
        go = st.form_submit_button("Submit", type="primary", icon=":material/send:")
    if go:
        try:
            with st.spinner("The server measures your variant on the eval subset…"):
                entry = C.submit(store, code, pick.id, workspace.get(), variant.id, name)
            st.session_state["_submit_message"] = submit_message(entry)
        except C.ClassError as exc:
            st.session_state["_submit_message"] = ("error", plain(exc))
        st.rerun()
