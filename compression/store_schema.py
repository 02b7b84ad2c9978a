"""Where the workspace store lives, its tables, and how an older database is brought up to date.

Database: SQLite in WAL mode at PLAYGROUND_HOME/playground.db by default (readers never wait for a
writer; one writer at a time, waiting up to the busy timeout for the lock), or PostgreSQL when
PLAYGROUND_DB_URL=postgresql+psycopg://user@host/db is set (several app processes share it). Weights
files live in PLAYGROUND_HOME/blobs either way (compression/blobs.py).

Tables (JSON travels as text, the same on both databases):

    schema_version      one row: the layout version this database has
    workspaces          id, SHA-256 of the token (never the token), created, last_seen
    variants            id (from content and lineage), technique, settings, parent, weights SHA-256,
                        size of the weights file, artifacts {name: SHA-256}, created — what a variant
                        IS, shared by every workspace that keeps it
    workspace_variants  workspace, variant, name, metrics, history, added — what a workspace
                        knows about it (two students may name and measure the same variant differently)
    jobs                workspace, kind, title, settings (to run it again), status, progress (the
                        last event), curve (a bounded list of points), error, result (variant ids),
                        created / started / finished, server (the process that queued it), worker
                        (what runs it) — compression/store_jobs.py
    classes             name, SHA-256 of the teacher token, join code (unique among open classes), rate
                        limit, created, closed — compression/classes.py (version 3)
    challenges          a class's challenges: the goal as JSON (compression/challenges.py), the starting
                        model and its measurement, created, closed
    submissions         class, challenge, student workspace, display name, variant, the server's own
                        measurement, pass/fail per constraint, score, submitted, hidden, superseded
    measurements        cache of what the server measured, by weights SHA-256 and what was measured
    class_members       the class a workspace's student joined by code (one per workspace), joined —
                        so a reload or a new tab of the workspace link is still in the class (version 4)

The pretrained models belong to the workspace BUILTIN, which every workspace sees and no token opens.

Versions. A fresh database gets the current layout; an older one is upgraded in one transaction by
UPGRADES[v] (v → v + 1, in turn); a newer one is refused with StoreVersionError before anything is
written to it. Each upgrade step is frozen DDL text that works on SQLite and PostgreSQL alike: a step
never changes after release, so every old database takes the same path. (Alembic would do this with
an env.py, a versions folder and batch mode for SQLite's ALTER TABLE: more machinery than a handful of
tables with a linear history needs.)
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (BigInteger, Boolean, Column, Engine, Float, ForeignKey, Index, Integer, MetaData, String,
                        Table, Text, create_engine, event, inspect, select, text)
from sqlalchemy import exc as sa_exc

from .store_errors import StoreBusyError, StoreError, StoreFullError, StoreVersionError

SCHEMA_VERSION = 4
APP_FOLDER = "compression-playground"
DB_FILE = "playground.db"
BUILTIN = "builtin"                        # the workspace of the pretrained models
DEFAULT_BUSY_MS = 5000

METADATA = MetaData()


def _key(name: str = "id") -> Column:
    return Column(name, String(40), primary_key=True)


def _owner(name: str, table: str) -> Column:
    """A required reference to `table`'s id; deleting the owner deletes the row."""
    return Column(name, String(40), ForeignKey(f"{table}.id", ondelete="CASCADE"), nullable=False)


def _required(name: str, kind=Text) -> Column:
    """A required column (Text by default: names, and JSON, which travels as text on both databases)."""
    return Column(name, kind, nullable=False)


SCHEMA = Table("schema_version", METADATA, _required("version", Integer))
WORKSPACES = Table(
    "workspaces", METADATA, _key(), Column("token_sha256", String(64), nullable=False, unique=True),
    _required("created", Float), _required("last_seen", Float),
)
VARIANTS = Table(
    "variants", METADATA, _key(), _required("technique"), _required("settings"), Column("parent", Text),
    _required("weights_sha256", String(64)), _required("size", BigInteger), _required("artifacts"),
    _required("created", Float),
    Index("variants_weights", "weights_sha256"),
)
MEMBERS = Table(
    "workspace_variants", METADATA,
    Column("workspace_id", String(40), ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True),
    Column("variant_id", String(40), ForeignKey("variants.id"), primary_key=True),
    _required("name"), _required("metrics"), _required("history"), _required("added", Float),
    Index("workspace_variants_variant", "variant_id"),
)
JOBS = Table(
    "jobs", METADATA, _key(), _owner("workspace_id", "workspaces"), _required("kind"), _required("title"),
    _required("settings"), _required("status", String(16)), _required("progress"), _required("curve"),
    Column("error", Text), _required("result"), _required("created", Float), Column("started", Float),
    Column("finished", Float), _required("server"), Column("worker", Text),
    Index("jobs_workspace", "workspace_id", "created"),
)

# Classes, challenges and submissions (version 3; compression/classes.py). A join code is unique among
# the open classes only: closing a class frees its code.
CLASSES = Table(
    "classes", METADATA, _key(), _required("name"),
    Column("teacher_sha256", String(64), nullable=False, unique=True),
    _required("join_code", String(16)), _required("rate_limit", Integer), _required("created", Float),
    Column("closed", Float),
    Index("classes_open_code", "join_code", unique=True, sqlite_where=text("closed IS NULL"),
          postgresql_where=text("closed IS NULL")),
)
CHALLENGES = Table(
    "challenges", METADATA, _key(), _owner("class_id", "classes"), _required("spec"),
    _required("start_id", String(40)), _required("reference"), _required("created", Float), Column("closed", Float),
    Index("challenges_class", "class_id", "created"),
)
SUBMISSIONS = Table(
    "submissions", METADATA, _key(), _owner("class_id", "classes"), _owner("challenge_id", "challenges"),
    _owner("workspace_id", "workspaces"), _required("name"), _required("variant_id", String(40)),
    _required("measured"), _required("checks"), _required("passed", Boolean), Column("score", Float),
    _required("recipe"), _required("submitted", Float), _required("hidden", Boolean),
    _required("superseded", Boolean),
    Index("submissions_board", "challenge_id", "superseded"),
    Index("submissions_student", "class_id", "workspace_id", "submitted"),
)
MEASUREMENTS = Table(
    "measurements", METADATA, Column("weights_sha256", String(64), primary_key=True),
    Column("what", String(80), primary_key=True), _required("value"), _required("measured", Float),
)
# The class a workspace joined (version 4): one row per workspace; closing a class leaves the row (the page
# then sees no open class), deleting the class or the workspace deletes it.
CLASS_MEMBERS = Table(
    "class_members", METADATA,
    Column("workspace_id", String(40), ForeignKey("workspaces.id", ondelete="CASCADE"), primary_key=True),
    _owner("class_id", "classes"), _required("joined", Float),
)

@dataclass(frozen=True)
class Workspace:
    """A workspace as the store knows it. Its token is not kept: only the student's link holds it."""
    id: str
    created: float
    last_seen: float


# version v -> the DDL taking a database from v to v + 1. Frozen: never edit a released step.
UPGRADES: dict[int, list[str]] = {
    1: ["CREATE TABLE jobs (id VARCHAR(40) NOT NULL, workspace_id VARCHAR(40) NOT NULL, kind TEXT NOT NULL, "
        "title TEXT NOT NULL, settings TEXT NOT NULL, status VARCHAR(16) NOT NULL, progress TEXT NOT NULL, "
        "curve TEXT NOT NULL, error TEXT, result TEXT NOT NULL, created FLOAT NOT NULL, started FLOAT, "
        "finished FLOAT, server TEXT NOT NULL, worker TEXT, PRIMARY KEY (id), "
        "FOREIGN KEY(workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE)",
        "CREATE INDEX jobs_workspace ON jobs (workspace_id, created)"],
    2: ["CREATE TABLE classes (id VARCHAR(40) NOT NULL, name TEXT NOT NULL, teacher_sha256 VARCHAR(64) NOT NULL, "
        "join_code VARCHAR(16) NOT NULL, rate_limit INTEGER NOT NULL, created FLOAT NOT NULL, closed FLOAT, "
        "PRIMARY KEY (id), UNIQUE (teacher_sha256))",
        "CREATE UNIQUE INDEX classes_open_code ON classes (join_code) WHERE closed IS NULL",
        "CREATE TABLE challenges (id VARCHAR(40) NOT NULL, class_id VARCHAR(40) NOT NULL, spec TEXT NOT NULL, "
        "start_id VARCHAR(40) NOT NULL, reference TEXT NOT NULL, created FLOAT NOT NULL, closed FLOAT, "
        "PRIMARY KEY (id), FOREIGN KEY(class_id) REFERENCES classes (id) ON DELETE CASCADE)",
        "CREATE INDEX challenges_class ON challenges (class_id, created)",
        "CREATE TABLE submissions (id VARCHAR(40) NOT NULL, class_id VARCHAR(40) NOT NULL, "
        "challenge_id VARCHAR(40) NOT NULL, workspace_id VARCHAR(40) NOT NULL, name TEXT NOT NULL, "
        "variant_id VARCHAR(40) NOT NULL, measured TEXT NOT NULL, checks TEXT NOT NULL, passed BOOLEAN NOT NULL, "
        "score FLOAT, recipe TEXT NOT NULL, submitted FLOAT NOT NULL, hidden BOOLEAN NOT NULL, "
        "superseded BOOLEAN NOT NULL, PRIMARY KEY (id), "
        "FOREIGN KEY(class_id) REFERENCES classes (id) ON DELETE CASCADE, "
        "FOREIGN KEY(challenge_id) REFERENCES challenges (id) ON DELETE CASCADE, "
        "FOREIGN KEY(workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE)",
        "CREATE INDEX submissions_board ON submissions (challenge_id, superseded)",
        "CREATE INDEX submissions_student ON submissions (class_id, workspace_id, submitted)",
        "CREATE TABLE measurements (weights_sha256 VARCHAR(64) NOT NULL, what VARCHAR(80) NOT NULL, "
        "value TEXT NOT NULL, measured FLOAT NOT NULL, PRIMARY KEY (weights_sha256, what))"],
    3: ["CREATE TABLE class_members (workspace_id VARCHAR(40) NOT NULL, class_id VARCHAR(40) NOT NULL, "
        "joined FLOAT NOT NULL, PRIMARY KEY (workspace_id), "
        "FOREIGN KEY(workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE, "
        "FOREIGN KEY(class_id) REFERENCES classes (id) ON DELETE CASCADE)"],
}


def data_home() -> Path:
    """PLAYGROUND_HOME, else the user's data folder + /compression-playground: $XDG_DATA_HOME or
    ~/.local/share on Linux, ~/Library/Application Support on macOS, %LOCALAPPDATA% on Windows."""
    if os.environ.get("PLAYGROUND_HOME"):
        return Path(os.environ["PLAYGROUND_HOME"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_FOLDER


def database_url(home: Path) -> str:
    """PLAYGROUND_DB_URL, else the SQLite file in `home`."""
    return os.environ.get("PLAYGROUND_DB_URL") or f"sqlite:///{home / DB_FILE}"


def make_engine(url: str, busy_timeout_ms: int = DEFAULT_BUSY_MS) -> Engine:
    """An engine whose transactions behave alike on both databases.

    SQLite: Python's sqlite3 module is put in autocommit mode and every transaction opens with an
    explicit BEGIN (SQLAlchemy's documented recipe), so DDL is transactional too; a transaction begun
    on engine.execution_options(write=True) opens with BEGIN IMMEDIATE, taking the write lock at once
    (a deferred one that starts writing later can fail without waiting). busy_timeout makes a locked
    database wait up to `busy_timeout_ms`; synchronous=FULL makes a commit durable at once.
    PostgreSQL: lock_timeout bounds the wait for a row or table lock the same way.
    """
    if url.startswith("sqlite"):
        engine = create_engine(url)
        _sqlite_events(engine, busy_timeout_ms)
        return engine
    if url.startswith("postgresql"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)       # the driver installed: psycopg 3
        return create_engine(url, pool_pre_ping=True,
                             connect_args={"options": f"-c lock_timeout={int(busy_timeout_ms)}"})
    raise StoreError(f"PLAYGROUND_DB_URL must be sqlite:///FILE or postgresql+psycopg://USER@HOST/DB, "
                     f"got {url.split(':')[0]!r}.")


def _sqlite_events(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        for pragma in (f"busy_timeout = {int(busy_timeout_ms)}", "foreign_keys = ON", "synchronous = FULL"):
            dbapi_connection.execute(f"PRAGMA {pragma}")

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get("write")
                                   else "BEGIN")


def where(engine: Engine) -> str:
    """The database's location for messages (no password)."""
    if engine.dialect.name == "sqlite":
        return str(engine.url.database)
    return engine.url.render_as_string(hide_password=True)


# --- opening: create, upgrade or refuse ---------------------------------------------------------------

def prepare(engine: Engine) -> None:
    """Give the database the current layout: create it when empty, upgrade it when older, refuse it
    (untouched) when newer. Safe when several processes open the same database at once."""
    with db_errors(engine):
        with engine.connect() as conn:
            version = read_version(conn)
        _refuse_newer(engine, version)
        if version == SCHEMA_VERSION:
            return
        if engine.dialect.name == "sqlite":
            raw = engine.raw_connection()               # outside any transaction, as WAL mode needs
            try:
                raw.driver_connection.execute("PRAGMA journal_mode = WAL")
            finally:
                raw.close()
        with engine.execution_options(write=True).begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(18041804)"))   # one preparer at a time
            version = read_version(conn)                # again: another process may have been first
            _refuse_newer(engine, version)
            if version is None:
                _create(conn)
            for step in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
                for statement in UPGRADES[step]:
                    conn.execute(text(statement))
                conn.execute(SCHEMA.update().values(version=step + 1))


def read_version(conn) -> int | None:
    """The database's layout version; None for an empty database. StoreError for a database that
    has some of the store's tables but no version (not written by this app)."""
    tables = set(inspect(conn).get_table_names())
    if SCHEMA.name not in tables:
        if tables & {t.name for t in METADATA.sorted_tables}:
            raise StoreError("The database holds tables named like the store's but no schema_version table: "
                             "it was not made by this app. Point PLAYGROUND_HOME or PLAYGROUND_DB_URL at "
                             "another location.")
        return None
    versions = conn.execute(select(SCHEMA.c.version)).scalars().all()
    if len(versions) != 1:
        raise StoreError(f"The database's schema_version table holds {len(versions)} rows instead of one; "
                         f"it was changed by hand. Restore it from a backup.")
    return int(versions[0])


def _refuse_newer(engine: Engine, version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise StoreVersionError(
            f"The workspace database at {where(engine)} was written by a newer release of the app (layout "
            f"version {version}; this release knows up to {SCHEMA_VERSION}). It was left untouched. Update "
            f"the app, or set PLAYGROUND_HOME (or PLAYGROUND_DB_URL) to another location to start afresh.")


def _create(conn) -> None:
    METADATA.create_all(conn)
    conn.execute(SCHEMA.insert().values(version=SCHEMA_VERSION))
    conn.execute(WORKSPACES.insert().values(id=BUILTIN, token_sha256=BUILTIN, created=0.0, last_seen=0.0))


# --- errors ------------------------------------------------------------------------------------------

@contextmanager
def db_errors(engine: Engine):
    """Turn the database's failures into StoreErrors that say what to do."""
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise translate(exc, engine) from None


def translate(exc: sa_exc.DBAPIError, engine: Engine) -> StoreError:
    message = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    state = getattr(exc.orig, "sqlstate", None)
    place = where(engine)
    if "locked" in message or "busy" in message or state in ("55P03", "40P01"):
        return StoreBusyError(f"The workspace database at {place} is in use by another program and stayed "
                              f"locked longer than the store waits. Try again in a moment; if it keeps "
                              f"happening, close the other program holding it (a second app server, a "
                              f"database browser).")
    if "full" in message or state == "53100":
        return StoreFullError(f"The disk holding the workspace database ({place}) is full, so nothing was "
                              f"saved; everything stored before is intact. Free some space and try again.")
    if "not a database" in message or "malformed" in message:
        return StoreError(f"{place} is damaged or not a workspace database ({message}). Move it away (the "
                          f"app then starts a fresh one) or restore it from a backup.")
    if isinstance(exc, sa_exc.OperationalError):
        return StoreError(f"Cannot use the workspace database at {place}: {message}. Check PLAYGROUND_DB_URL "
                          f"and that the database server is running, or that PLAYGROUND_HOME is writable.")
    return StoreError(f"The workspace database at {place} refused a change: {message}.")
