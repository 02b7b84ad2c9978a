"""Classes on the workspace store: a teacher runs challenges, students submit variants from their own
workspaces. One call per page action (the board's data is in compression/board.py):

    teacher starts a lesson    info, teacher_token, join_code = create_class(store, name, exercises=[...])
    teacher adds / closes      add_challenge(store, teacher_token, challenge or exercise name);
                               close_challenge(store, teacher_token, challenge_id); close_class(...)
    student joins              info = join_class(store, join_code, workspace)   (the workspace remembers it)
    ... after a reload         info = joined_class(store, workspace)   (None: no open class); leave_class(...)
    either lists challenges    list_challenges(store, join_code or teacher_token)
    student submits            entry = submit(store, join_code, challenge_id, workspace, variant_id, name)
    teacher moderates          entries(store, teacher_token, challenge_id, history=...);
                               hide_entry(..., entry_id, hidden=True/False); remove_entry(..., entry_id)

Who may do what (compression/class_access.py). The teacher token (192 bits, only its SHA-256 stored,
shown once) is the only thing that changes a class. The join code (6 characters, unique among open
classes) only lets a student submit a variant of the workspace the page opened with the student's own
token, and read the board: no call takes a join code and returns or changes a workspace, and nothing
returned holds a workspace's id or token (a student appears as an opaque key). A workspace remembers
the class it joined (the table class_members), so that its link, reloaded or opened in a new tab, is
still in the class; only a caller holding the workspace (its page) reads or changes that.

Submitting. The server re-measures the variant's stored weights (compression/remeasure.py) and judges
them (compression/challenges.py); a page sends no numbers. Refused with a SubmissionRefused that says
why: a display name that is empty after cleaning or longer than MAX_NAME characters, a challenge past
its deadline or closed, more than the class's rate limit (default 3) submissions by one student in
any 60 s, or a variant that is not the student's own. Resubmitting to a challenge supersedes the
student's entry (the history is kept for the teacher); an entry the teacher hid stays hidden.

Display names are stored as text: clean_display_name when submitting, safe_display_name to show one.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy import exc as sa_exc

# The library's public names this module relies on (repoint here if the package's API moves).
from .data import PROJECT_ROOT
from .files import ModelFileError, load_model
from .metrics import measure
from .models import ARCHS
from .store import Store, StoredVariant, token_sha256
from .variant import Variant

from .challenges import Challenge, ChallengeError, Measured, judge
from .class_access import (ChallengeInfo, ClassAccessError, ClassError, ClassInfo, Entry,  # noqa: F401 (API)
                           SubmissionRefused, challenge_info, challenge_row, class_info, class_row,
                           clean_display_name, entry_row, load_entries, new_join_code, safe_display_name,
                           student_key, student_row, teacher_row)
from .exercises import exercise
from .lineage import recipe_chain
from .remeasure import Remeasurer, bundled_eval_set
from .store_errors import VariantUnavailableError
from .store_schema import BUILTIN, CHALLENGES, CLASS_MEMBERS, CLASSES, SUBMISSIONS, Workspace, db_errors

__all__ = ["ChallengeInfo", "ClassAccessError", "ClassError", "ClassInfo", "Entry", "SubmissionRefused",
           "add_challenge", "clean_display_name", "close_challenge", "close_class", "create_class", "entries",
           "hide_entry", "join_class", "joined_class", "leave_class", "list_challenges", "open_class",
           "remove_entry", "resolve_start", "safe_display_name", "submit"]
MAX_CLASS_NAME = 80
DEFAULT_RATE_LIMIT = 3
RATE_WINDOW_S = 60.0
ASSETS = PROJECT_ROOT / "assets"


# --- the teacher's calls -------------------------------------------------------------------------------

def create_class(store: Store, name: str, exercises=(), *, rate_limit: int = DEFAULT_RATE_LIMIT,
                 now: float | None = None) -> tuple[ClassInfo, str, str]:
    """A new class with the given challenges (built-in exercise names or Challenge objects):
    (class, teacher token, join code). The token is shown only this once: put it in the teacher's link."""
    title = " ".join(str(name).split()) if isinstance(name, str) else ""
    if not title or len(title) > MAX_CLASS_NAME:
        raise ClassError(f"Give the class a name of 1 to {MAX_CLASS_NAME} characters.")
    if isinstance(rate_limit, bool) or not isinstance(rate_limit, int) or not 1 <= rate_limit <= 60:
        raise ClassError("The rate limit is a whole number of submissions per student per minute, 1 to 60.")
    challenges = [exercise(c) if isinstance(c, str) else c for c in exercises]
    if not all(isinstance(c, Challenge) for c in challenges):
        raise ChallengeError("exercises lists built-in exercise names or Challenge objects.")
    prepared = [_prepare(store, c) for c in challenges]          # measure the starts before anything is stored
    token, now = secrets.token_urlsafe(24), time.time() if now is None else now
    info = _insert_class(store, "k" + secrets.token_hex(8), title, token, rate_limit, now)
    for order, (challenge, (start_id, start)) in enumerate(zip(challenges, prepared)):
        _insert_challenge(store, info.id, challenge, start_id, start, now + order * 1e-6)   # listed in order
    return info, token, info.join_code


def _insert_class(store: Store, class_id: str, name: str, token: str, rate_limit: int, now: float) -> ClassInfo:
    """Insert the class under a fresh join code, drawing again while the code is taken by an open class."""
    with db_errors(store.engine):
        for _ in range(20):
            code = new_join_code()
            try:
                with store.engine.execution_options(write=True).begin() as conn:
                    conn.execute(CLASSES.insert().values(id=class_id, name=name, teacher_sha256=token_sha256(token),
                                                         join_code=code, rate_limit=rate_limit, created=now))
                return ClassInfo(class_id, name, code, rate_limit, now, None)
            except sa_exc.IntegrityError:
                continue
    raise ClassError("Could not find a free join code; close some old classes and try again.")


def open_class(store: Store, teacher_token: str) -> ClassInfo:
    """The class of a teacher link (open or closed)."""
    with db_errors(store.engine), store.engine.connect() as conn:
        return class_info(teacher_row(conn, teacher_token))


def join_class(store: Store, join_code: str, workspace: Workspace | None = None, *,
               now: float | None = None) -> ClassInfo:
    """The open class of a join code; with `workspace` (the one the student's page opened), the workspace
    remembers it as its class (replacing the one it joined before): see joined_class."""
    with db_errors(store.engine), store.engine.connect() as conn:
        info = class_info(student_row(conn, join_code))
    if workspace is not None:
        with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
            conn.execute(delete(CLASS_MEMBERS).where(CLASS_MEMBERS.c.workspace_id == workspace.id))
            conn.execute(CLASS_MEMBERS.insert().values(workspace_id=workspace.id, class_id=info.id,
                                                       joined=time.time() if now is None else now))
    return info


def joined_class(store: Store, workspace: Workspace) -> ClassInfo | None:
    """The class `workspace` joined last (join_class), if it is still open; else None."""
    with db_errors(store.engine), store.engine.connect() as conn:
        row = conn.execute(select(CLASSES).join(CLASS_MEMBERS, CLASS_MEMBERS.c.class_id == CLASSES.c.id)
                           .where(CLASS_MEMBERS.c.workspace_id == workspace.id, CLASSES.c.closed.is_(None))).first()
    return None if row is None else class_info(row)


def leave_class(store: Store, workspace: Workspace) -> None:
    """The workspace forgets its class (its entries stay on the board)."""
    with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
        conn.execute(delete(CLASS_MEMBERS).where(CLASS_MEMBERS.c.workspace_id == workspace.id))


def close_class(store: Store, teacher_token: str, *, now: float | None = None) -> None:
    """End the class: its join code stops working (and may be given to a new class); the teacher's
    link still shows the board."""
    with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
        row = teacher_row(conn, teacher_token)
        conn.execute(update(CLASSES).where(CLASSES.c.id == row.id, CLASSES.c.closed.is_(None))
                     .values(closed=time.time() if now is None else now))


def add_challenge(store: Store, teacher_token: str, challenge: Challenge | str, *,
                  now: float | None = None) -> ChallengeInfo:
    """Add a challenge (or a built-in exercise by name); its starting model is measured now."""
    challenge = exercise(challenge) if isinstance(challenge, str) else challenge
    if not isinstance(challenge, Challenge):
        raise ChallengeError("add_challenge takes a Challenge or the name of a built-in exercise.")
    with db_errors(store.engine), store.engine.connect() as conn:
        row = teacher_row(conn, teacher_token)
    start_id, start = _prepare(store, challenge)
    return _insert_challenge(store, row.id, challenge, start_id, start, time.time() if now is None else now)


def _prepare(store: Store, challenge: Challenge) -> tuple[str, Measured]:
    """The challenge's starting model: its id, measured by the server (with int8 latency if asked)."""
    start_id = resolve_start(store, challenge.start)
    return start_id, Remeasurer(store).measure_builtin(start_id, int8=challenge.needs_int8)


def _insert_challenge(store: Store, class_id: str, challenge: Challenge, start_id: str, start: Measured,
                      now: float) -> ChallengeInfo:
    info = ChallengeInfo("c" + secrets.token_hex(8), class_id, challenge, start_id, start, now, None)
    with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
        conn.execute(CHALLENGES.insert().values(id=info.id, class_id=class_id, spec=challenge.to_json(),
                                                start_id=start_id, reference=json.dumps(start.to_dict()),
                                                created=now))
    return info


def close_challenge(store: Store, teacher_token: str, challenge_id: str, *, now: float | None = None) -> None:
    with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
        row = teacher_row(conn, teacher_token)
        challenge_row(conn, row.id, challenge_id)
        conn.execute(update(CHALLENGES).where(CHALLENGES.c.id == challenge_id, CHALLENGES.c.closed.is_(None))
                     .values(closed=time.time() if now is None else now))


def resolve_start(store: Store, start: str) -> str:
    """The id of the pretrained variant `start` names: a pretrained variant's id, or a shipped model's
    name ("resnet20"), registered from assets/ the first time (as the app registers it)."""
    builtin = [v for v in store.variants(Workspace(BUILTIN, 0.0, 0.0)) if v.builtin]
    for v in builtin:
        if v.id == start:
            return v.id
    for v in builtin:
        if v.technique == "pretrained" and v.settings.get("arch") == start:
            return v.id
    path = ASSETS / f"{start}.safetensors"
    if start not in ARCHS or not path.is_file():
        raise ChallengeError(f"There is no pretrained model {start!r} on this server; start from one of the "
                             f"shipped models ({', '.join(p.stem for p in sorted(ASSETS.glob('*.safetensors')))}).")
    try:
        model, _ = load_model(path)
        card = json.loads(path.with_suffix(".json").read_text())
    except (ModelFileError, OSError, ValueError) as exc:
        raise ChallengeError(f"The shipped model {path.name} cannot be loaded ({exc}); restore it with "
                             f"git checkout -- assets/.") from None
    metrics = measure(model, eval_set=bundled_eval_set())
    metrics.test_accuracy = card.get("test_accuracy")
    return store.register_pretrained(Variant(f"{start} (pretrained)", model, "pretrained",
                                             {"arch": start, "epochs": card.get("epochs"),
                                              "card": f"assets/{start}.json"}, metrics=metrics))


def entries(store: Store, teacher_token: str, challenge_id: str, *, history: bool = False) -> list[Entry]:
    """Every current entry of a challenge, hidden ones included, newest first; with history=True the
    superseded ones too. For the teacher's moderation table."""
    with db_errors(store.engine), store.engine.connect() as conn:
        row = teacher_row(conn, teacher_token)
        challenge_row(conn, row.id, challenge_id)
        return load_entries(conn, challenge_id, hidden=True, superseded=history)


def hide_entry(store: Store, teacher_token: str, entry_id: str, hidden: bool = True) -> None:
    """Hide an entry from the board (hidden=False shows it again). Its student's later entries stay hidden."""
    with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
        row = teacher_row(conn, teacher_token)
        entry_row(conn, row.id, entry_id)
        conn.execute(update(SUBMISSIONS).where(SUBMISSIONS.c.id == entry_id).values(hidden=bool(hidden)))


def remove_entry(store: Store, teacher_token: str, entry_id: str) -> int:
    """Delete an entry and its student's history in that challenge (the student may submit again).
    Returns the number of submissions deleted."""
    with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
        row = teacher_row(conn, teacher_token)
        entry = entry_row(conn, row.id, entry_id)
        return conn.execute(delete(SUBMISSIONS).where(SUBMISSIONS.c.challenge_id == entry.challenge_id,
                                                      SUBMISSIONS.c.workspace_id == entry.workspace_id)).rowcount


def list_challenges(store: Store, key: str) -> list[ChallengeInfo]:
    """The class's challenges, oldest first; `key` is a join code or the teacher token."""
    with db_errors(store.engine), store.engine.connect() as conn:
        row = class_row(conn, key)
        rows = conn.execute(select(CHALLENGES).where(CHALLENGES.c.class_id == row.id)
                            .order_by(CHALLENGES.c.created, CHALLENGES.c.id)).all()
    return [challenge_info(r) for r in rows]




# --- the student's call --------------------------------------------------------------------------------

def submit(store: Store, join_code: str, challenge_id: str, workspace: Workspace, variant_id: str,
           display_name: str, *, now: float | None = None) -> Entry:
    """Submit one of the student's own variants to a challenge (module docstring): the server measures
    it, judges it and makes it the student's entry. `workspace` is the one the page opened with the
    student's own token. SubmissionRefused says why when refused."""
    now = time.time() if now is None else now
    name = clean_display_name(display_name)
    with db_errors(store.engine), store.engine.connect() as conn:
        klass = student_row(conn, join_code)
        info = challenge_info(challenge_row(conn, klass.id, challenge_id))
        _check_open(info, now)
        _check_rate(conn, klass, workspace.id, now)
    record = _own_variant(store, workspace, variant_id)
    challenge = info.challenge
    measured = Remeasurer(store).measure(workspace, record, int8=challenge.needs_int8, plain=challenge.needs_plain)
    verdict = judge(challenge, measured, info.start)
    recipe = recipe_chain(store, workspace, record)
    entry_id = "s" + secrets.token_hex(8)
    mine = and_(SUBMISSIONS.c.challenge_id == info.id, SUBMISSIONS.c.workspace_id == workspace.id,
                SUBMISSIONS.c.superseded.is_(False))
    with db_errors(store.engine), store.engine.execution_options(write=True).begin() as conn:
        conn.execute(select(CLASSES.c.id).where(CLASSES.c.id == klass.id).with_for_update())   # one at a time
        _check_rate(conn, klass, workspace.id, now)
        hidden = conn.execute(select(func.count()).select_from(SUBMISSIONS)
                              .where(mine, SUBMISSIONS.c.hidden.is_(True))).scalar_one() > 0
        conn.execute(update(SUBMISSIONS).where(mine).values(superseded=True))
        conn.execute(SUBMISSIONS.insert().values(
            id=entry_id, class_id=klass.id, challenge_id=info.id, workspace_id=workspace.id, name=name,
            variant_id=record.id, measured=json.dumps(measured.to_dict()),
            checks=json.dumps([asdict(c) for c in verdict.checks]), passed=verdict.passed, score=verdict.score,
            recipe=json.dumps(recipe), submitted=now, hidden=hidden, superseded=False))
    return Entry(entry_id, info.id, name, student_key(klass.id, workspace.id), record.id, measured, verdict,
                 recipe, now, hidden, False)


def _check_open(info: ChallengeInfo, now: float) -> None:
    if info.closed is not None:
        raise SubmissionRefused(f"The teacher closed the challenge {info.challenge.title!r}: it takes no more "
                                f"submissions.")
    deadline = info.challenge.deadline
    if deadline is not None and now > deadline:
        raise SubmissionRefused(f"The deadline of {info.challenge.title!r} passed at "
                                f"{time.strftime('%H:%M', time.localtime(deadline))} (server time): it takes no "
                                f"more submissions.")


def _check_rate(conn, klass, workspace_id: str, now: float) -> None:
    """At most klass.rate_limit submissions by one student to the class in any RATE_WINDOW_S seconds."""
    recent = conn.execute(select(SUBMISSIONS.c.submitted).where(
        SUBMISSIONS.c.class_id == klass.id, SUBMISSIONS.c.workspace_id == workspace_id,
        SUBMISSIONS.c.submitted > now - RATE_WINDOW_S).order_by(SUBMISSIONS.c.submitted)).scalars().all()
    if len(recent) >= klass.rate_limit:
        wait = recent[len(recent) - klass.rate_limit] + RATE_WINDOW_S - now
        raise SubmissionRefused(f"You submitted {len(recent)} times in the last minute; this class takes "
                                f"{klass.rate_limit} a minute from each student. Try again in {max(1, round(wait))} s.")


def _own_variant(store: Store, workspace: Workspace, variant_id: str) -> StoredVariant:
    try:
        record = store.variant(workspace, variant_id)
    except VariantUnavailableError:
        raise SubmissionRefused("That variant is not in your workspace (it was deleted, or the link is "
                                "another student's). Pick one of yours on Compare & Download.") from None
    if record.builtin:
        raise SubmissionRefused(f"{record.name!r} is a pretrained model, everybody's starting point: submit a "
                                f"variant you made from it.")
    return record
