import time

import streamlit as st

from compression import classes as C
from compression.challenges import KINDS, OBJECTIVES, Challenge, ChallengeError, Constraint, Objective
from compression.exercises import EXERCISES
from ui import board as ui_board
from ui import workspace
from ui.format import plain

# The limit a teacher types, per constraint kind: (unit shown, factor to the library's unit, default).
UNITS = {"max_bytes": ("KiB", 1024, 64.0), "min_accuracy": ("%", 0.01, 85.0), "max_drop": ("points", 1, 2.0),
         "max_macs": ("% of the start's", 0.01, 50.0), "max_nonzero_macs": ("% of the start's", 0.01, 50.0),
         "min_sparsity": ("%", 0.01, 70.0), "max_bits": ("bits", 1, 4.0), "max_int8_latency": ("ms", 1, 5.0),
         "beats_plain": ("points", 1, 0.0)}


def start_or_join() -> None:
    """No class yet: a student types the code, a teacher starts a class."""
    st.title("Class board")
    st.markdown("One chart for the whole class: the teacher sets a challenge, every student submits a variant, "
                "and the server measures each one itself.")
    join, start = st.columns(2)
    with join.form("join_form"):
        st.subheader("Join a class")
        code = st.text_input("Join code", max_chars=12, placeholder="e.g. K7QX2M")
        if st.form_submit_button("Join", type="primary", icon=":material/login:"):
            try:
                ui_board.enter(ui_board.STUDENT, code)
                st.rerun()
            except C.ClassError as exc:
                st.error(plain(exc), icon=":material/error:")
    with start.form("start_form"):
        st.subheader("Start a class (teacher)")
        name = st.text_input("Class name", max_chars=C.MAX_CLASS_NAME, placeholder="Monday's lab")
        picked = st.multiselect("Start with these exercises", list(EXERCISES), default=["smallest-85"],
                                format_func=lambda n: EXERCISES[n].title)
        rate = st.number_input("Submissions per student per minute", 1, 60, C.DEFAULT_RATE_LIMIT)
        if st.form_submit_button("Create the class", icon=":material/add:"):
            try:
                with st.spinner("Measuring the starting models on this server…"):
                    _, token, _ = C.create_class(workspace.store(), name, picked, rate_limit=int(rate))
                ui_board.enter(ui_board.TEACHER, token)
                st.session_state["_board_message"] = ("success", "Class created. Show the join code to the class; "
                                                                 "keep your teacher link private.")
                st.rerun()
            except (C.ClassError, ChallengeError) as exc:
                st.error(plain(exc), icon=":material/error:")


def exercises_panel(token: str) -> None:
    """Each built-in exercise, with its hint, added in one click."""
    for name, challenge in EXERCISES.items():
        a, b = st.columns([5, 1])
        a.markdown(f"**{plain(challenge.title)}**  \n{plain(challenge.hint)}")
        if b.button("Add", key=f"add_{name}", icon=":material/add:"):
            ui_board.add_exercise(token, name)


def custom_panel(token: str) -> None:
    """A goal of the teacher's own: constraints with limits, an objective, a start, a deadline."""
    title = st.text_input("Title", max_chars=120, key="custom_title", placeholder="Smallest model above 85 %")
    a, b = st.columns(2)
    start = a.selectbox("Start from", ["resnet20", "resnet8"], key="custom_start")
    objective = b.selectbox("Objective", list(OBJECTIVES), format_func=lambda m: OBJECTIVES[m][1], key="custom_obj")
    kinds = st.multiselect("Constraints", list(KINDS), default=["min_accuracy"], key="custom_kinds",
                           format_func=lambda k: KINDS[k].label)
    limits = {}
    for kind in kinds:
        unit, factor, default = UNITS[kind]
        limits[kind] = st.number_input(f"{KINDS[kind].label} ({'≤' if KINDS[kind].op == '<=' else '≥'} ; {unit})",
                                       value=default, min_value=0.0, key=f"custom_{kind}") * factor
    minutes = st.number_input("Deadline in minutes from now (0: none)", 0, 24 * 60, 0, key="custom_deadline")
    hint = st.text_area("Hint for the students (optional)", max_chars=600, key="custom_hint")
    if st.button("Add this challenge", type="primary", key="custom_add"):
        try:
            challenge = Challenge(title, tuple(Constraint(k, round(v, 10)) for k, v in limits.items()),
                                  Objective(objective), start=start,
                                  deadline=time.time() + 60 * minutes if minutes else None, hint=hint)
            ui_board.add_exercise(token, challenge)
        except ChallengeError as exc:
            st.error(plain(exc), icon=":material/error:")


def header(info: C.ClassInfo, role: str, key: str, presenter: bool) -> None:
    st.title(f"Class board: {plain(info.name)}")
    if presenter:
        st.markdown(f"### Join code: `{info.join_code}` — on the Class board page, or at "
                    f"{plain(ui_board.page_link(join=info.join_code))}")
    elif role == ui_board.TEACHER:
        ui_board.links(info, key)
        if info.closed is not None:
            st.warning("This class is closed: its join code no longer works. The board stays readable here.")
    else:
        st.markdown(f"You joined with code `{info.join_code}`. Submit your variants from **Compare & Download**; "
                    "your entry is marked “◀ you”.")
        st.page_link("app_pages/compare.py", label="Go to Compare & Download", icon=":material/leaderboard:")


def board_page() -> None:
    found = ui_board.from_link()
    if found is None:
        start_or_join()
        return
    role, key = found
    try:
        info = ui_board.enter(role, key)
    except C.ClassError as exc:
        st.title("Class board")
        st.error(plain(exc), icon=":material/link_off:")
        if st.button("Forget this link and start again", key="board_leave"):
            ui_board.leave()
            st.rerun()
        return
    key = key if role == ui_board.TEACHER else info.join_code
    presenter = ui_board.presenter_toggle()
    if presenter:
        st.html(ui_board.PRESENTER_CSS)
    header(info, role, key, presenter)
    message = st.session_state.pop("_board_message", None)
    if message:
        getattr(st, message[0])(message[1])
    teacher = role == ui_board.TEACHER
    if teacher and not presenter:
        with st.expander("Add a challenge", icon=":material/add_task:", expanded=False):
            built_in, custom = st.tabs(["Built-in exercises", "Your own goal"])
            with built_in:
                exercises_panel(key)
            with custom:
                custom_panel(key)
    challenges = C.list_challenges(workspace.store(), key)
    if not challenges:
        st.info("No challenge yet." + (" Add one above." if teacher else " Wait for the teacher to add one."))
        return
    ids = [c.id for c in challenges]
    pick = st.session_state.pop("_board_pick", None)
    if pick in ids:
        st.session_state["board_challenge"] = pick
    cid = st.selectbox("Challenge", ids, key="board_challenge",
                       format_func=lambda i: challenges[ids.index(i)].challenge.title)
    a, b = st.columns(2)
    polling = presenter or a.toggle("Live: update as students submit", key="board_live", value=teacher)
    references = b.toggle("Show reference points", key="board_refs")
    ui_board.live(key, cid, presenter, references, polling)
    if teacher and not presenter:
        with st.expander("Moderate entries (hide, show, remove)", icon=":material/shield:"):
            ui_board.moderate(key, cid)
        if st.button("Leave this board", key="board_leave_teacher"):
            ui_board.leave()
            st.rerun()
    elif not teacher and not presenter and st.button("Leave this class", key="board_leave_student"):
        ui_board.leave()
        st.rerun()


board_page()
