"""Who a class's caller is, and what a class, challenge and entry look like: the shared half of
compression/classes.py (the calls) and compression/board.py (the board's data).

Credentials. A class has two: the teacher token (secrets.token_urlsafe(24): 192 bits, 32 characters;
only its SHA-256 is stored, like a workspace token) and a join code of JOIN_LENGTH characters from
JOIN_ALPHABET (capitals and digits without 0/O, 1/I/L: nothing to misread on a projector), unique
among open classes. class_row accepts either; teacher_row only the token, so a join code can never
change a class. Neither ever yields a workspace: entries name their student by an opaque key.

Display names are stored as text; clean_display_name removes control and format characters (bidi
overrides, zero-width joiners, private-use and unassigned code points) and collapses whitespace;
safe_display_name escapes a name for HTML wherever a page renders it.
"""
from __future__ import annotations

import hashlib
import html
import json
import re
import secrets
import unicodedata
from dataclasses import dataclass

from sqlalchemy import select

# The library's public names this module relies on (repoint here if the package's API moves).
from .store import TOKEN, token_sha256

from .challenges import Challenge, Check, Measured, Verdict
from .store_errors import StoreError
from .store_schema import CHALLENGES, CLASSES, SUBMISSIONS

JOIN_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
JOIN_LENGTH = 6
MAX_NAME = 40


class ClassError(StoreError):
    """Something about a class went wrong; the message says what to do."""


class ClassAccessError(ClassError):
    """A join code or teacher link is malformed or unknown, or a join code tried a teacher's action."""


class SubmissionRefused(ClassError):
    """A submission was refused (name, deadline, rate limit, not the student's variant)."""


@dataclass(frozen=True)
class ClassInfo:
    id: str
    name: str
    join_code: str
    rate_limit: int
    created: float
    closed: float | None


@dataclass(frozen=True)
class ChallengeInfo:
    id: str
    class_id: str
    challenge: Challenge
    start_id: str                  # the pretrained variant students start from
    start: Measured                # its measurement, for relative constraints
    created: float
    closed: float | None

    def open_at(self, now: float) -> bool:
        deadline = self.challenge.deadline
        return self.closed is None and (deadline is None or now <= deadline)


@dataclass(frozen=True)
class Entry:
    id: str
    challenge_id: str
    name: str                      # as the student typed it, cleaned; escape it to show (safe_display_name)
    student: str                   # an opaque key for the student, stable within the class
    variant_id: str
    measured: Measured
    verdict: Verdict
    recipe: list[str]
    submitted: float
    hidden: bool
    superseded: bool


# --- codes, tokens and names ---------------------------------------------------------------------------

def new_join_code() -> str:
    return "".join(secrets.choice(JOIN_ALPHABET) for _ in range(JOIN_LENGTH))


def normalise_join_code(code: object) -> str | None:
    """The join code in canonical form (capitals; spaces and dashes dropped), or None if it is not one."""
    if not isinstance(code, str) or len(code) > 3 * JOIN_LENGTH:
        return None
    code = re.sub(r"[\s-]", "", code).upper()
    return code if len(code) == JOIN_LENGTH and all(c in JOIN_ALPHABET for c in code) else None


def clean_display_name(name: object) -> str:
    """The name to store: NFC, control/format/private characters removed, whitespace collapsed, stripped;
    SubmissionRefused if empty or longer than MAX_NAME characters."""
    text = unicodedata.normalize("NFC", name) if isinstance(name, str) else ""
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cf", "Co", "Cs", "Cn"))
    text = " ".join(text.split())
    if not text:
        raise SubmissionRefused("Type a display name for the board (letters, digits, anything printable).")
    if len(text) > MAX_NAME:
        raise SubmissionRefused(f"Display names are at most {MAX_NAME} characters; this one has {len(text)}. "
                                f"Shorten it.")
    return text


def safe_display_name(name: str) -> str:
    """The name escaped for HTML (and so for plotly hover text): <, >, &, quotes become entities."""
    return html.escape(name, quote=True)


def student_key(class_id: str, workspace_id: str) -> str:
    return hashlib.sha256(f"{class_id}:{workspace_id}".encode()).hexdigest()[:12]


def class_row(conn, key: str):
    """The class a join code (an open class) or a teacher token (any) names."""
    if normalise_join_code(key) is not None:
        return student_row(conn, key)
    if isinstance(key, str) and TOKEN.fullmatch(key.strip()):
        return teacher_row(conn, key)
    raise ClassAccessError("This is neither a class's join code (6 letters and digits, e.g. K7QX2M) nor a "
                           "teacher's link. Check what you typed, or ask the teacher for the code again.")


def load_entries(conn, challenge_id: str, *, hidden: bool = False, superseded: bool = False) -> list[Entry]:
    """A challenge's entries, newest first: the current visible ones, plus hidden or superseded ones."""
    query = select(SUBMISSIONS).where(SUBMISSIONS.c.challenge_id == challenge_id)
    if not hidden:
        query = query.where(SUBMISSIONS.c.hidden.is_(False))
    if not superseded:
        query = query.where(SUBMISSIONS.c.superseded.is_(False))
    rows = conn.execute(query.order_by(SUBMISSIONS.c.submitted.desc(), SUBMISSIONS.c.id)).all()
    return [entry_from_row(r) for r in rows]


def class_info(row) -> ClassInfo:
    return ClassInfo(row.id, row.name, row.join_code, row.rate_limit, row.created, row.closed)


def teacher_row(conn, token: object):
    """The class of a teacher token; ClassAccessError for a join code, a damaged or an unknown token."""
    if normalise_join_code(token) is not None:
        raise ClassAccessError("A join code lets students submit; changing the class needs the teacher's link.")
    if not isinstance(token, str) or not TOKEN.fullmatch(token.strip()):
        raise ClassAccessError("The teacher link is damaged: copy the whole link again.")
    row = conn.execute(select(CLASSES).where(CLASSES.c.teacher_sha256 == token_sha256(token.strip()))).first()
    if row is None:
        raise ClassAccessError("No class on this server matches this teacher link. It may come from another "
                               "server; create a new class.")
    return row


def student_row(conn, code: object):
    """The open class of a join code; ClassAccessError if malformed or no open class has it."""
    canonical = normalise_join_code(code)
    if canonical is None:
        raise ClassAccessError(f"A join code is {JOIN_LENGTH} letters and digits (e.g. K7QX2M). Check what you typed.")
    row = conn.execute(select(CLASSES).where(CLASSES.c.join_code == canonical, CLASSES.c.closed.is_(None))).first()
    if row is None:
        raise ClassAccessError(f"No open class has the code {canonical}. Check it with your teacher (the "
                               f"class may have ended).")
    return row


def _class_member(conn, table, what: str, class_id: str, row_id: str):
    """The row of `table` with this id that belongs to the class, else ClassError naming `what`."""
    row = conn.execute(select(table).where(table.c.id == str(row_id), table.c.class_id == class_id)).first()
    if row is None:
        raise ClassError(f"This class has no such {what} (it may have been removed). Reload the page.")
    return row


def challenge_row(conn, class_id: str, challenge_id: str):
    return _class_member(conn, CHALLENGES, "challenge", class_id, challenge_id)


def entry_row(conn, class_id: str, entry_id: str):
    return _class_member(conn, SUBMISSIONS, "entry", class_id, entry_id)


def challenge_info(row) -> ChallengeInfo:
    return ChallengeInfo(row.id, row.class_id, Challenge.from_json(row.spec), row.start_id,
                         Measured.from_dict(json.loads(row.reference)), row.created, row.closed)


def entry_from_row(row) -> Entry:
    checks = json.loads(row.checks)
    verdict = Verdict(tuple(Check(**c) for c in checks), bool(row.passed), row.score,
                      sum(not c["passed"] for c in checks))
    return Entry(row.id, row.challenge_id, row.name, student_key(row.class_id, row.workspace_id), row.variant_id,
                 Measured.from_dict(json.loads(row.measured)), verdict, json.loads(row.recipe), row.submitted,
                 bool(row.hidden), bool(row.superseded))
