"""The workspace store: every student's variants (and, in store_jobs.py, jobs) kept for good.

Nothing lives only in a browser session any more. A workspace is opened by an unguessable token
(the app puts it in the URL as ?ws=…); every query names the workspace, so another workspace's
variants are never visible without its token. The pretrained models are read-only entries that
every workspace sees.

Keeping a variant (keep):
1. pack the model (compression/packed.py: bit-exact logits) with its activation rounding, which lives
   in forward pre-hooks and not in the state_dict, in the packed metadata;
2. write the packed file, and any extra artifacts (the int8 .pt2), content-addressed and atomically
   (compression/blobs.py);
3. derive the variant's id from content and lineage,
       id = first 32 hex digits (128 bits) of SHA-256(canonical JSON [weights SHA-256, parent id,
                                                                      technique, settings]),
   so two students who make the same variant share one file and one id;
4. insert its rows in ONE transaction. A process killed before step 4 commits leaves at most an
   unreferenced file (harmless; collect_garbage removes it): the variant is there whole or not at all.

Loading (model, load) builds the model from its file on demand through a bounded LRU of models
(compression/model_cache.py), so memory does not grow with the number of variants or sessions.
Cached models are shared by every session: never modify one in place.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from torch import nn

# The library's public names the store relies on (repoint here if the package's API moves).
from .weights import ModelFileError
from .metrics import Metrics
from .portable import pack_weights, unpack_weights  # noqa: F401 (workspace_zip imports them from here)
from .variant import Variant

from .blobs import BlobStore
from .model_cache import ModelCache
from .store_errors import BlobError, StoreError, VariantUnavailableError, WorkspaceTokenError
from .store_jobs import JobStore
from .store_schema import (BUILTIN, DEFAULT_BUSY_MS, MEMBERS, VARIANTS, WORKSPACES, Workspace, data_home,
                           database_url, db_errors, make_engine, prepare)

TOKEN_BYTES = 24                                   # 192 bits; token_urlsafe gives 32 characters
TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
MAX_TOKEN_CHARS = 100
ID_HEX = 32                                        # 128 bits of SHA-256
SEEN_EVERY_S = 60.0                                # last_seen is refreshed at most this often


def canonical_json(value: Any) -> str:
    """One text for one value: sorted keys, no spaces; tuples become lists, numpy/torch scalars numbers."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_plain)


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def variant_id(weights_sha256: str, parent: str | None, technique: str, settings: dict) -> str:
    """The id of a variant, from its content and lineage (module docstring, step 3)."""
    digest = hashlib.sha256(canonical_json([weights_sha256, parent, technique, settings]).encode("utf-8"))
    return digest.hexdigest()[:ID_HEX]


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass
class StoredVariant:
    """A variant's record as one workspace sees it: everything but the model."""
    id: str
    name: str
    technique: str
    settings: dict
    parent: str | None
    metrics: Metrics
    created: float
    added: float
    weights_sha256: str
    size: int
    artifacts: dict[str, str] = field(default_factory=dict)    # name -> SHA-256 of its file
    history: list = field(default_factory=list)
    builtin: bool = False                                    # a pretrained model: read-only

    def as_variant(self, model: nn.Module | None = None, artifacts: dict[str, bytes] | None = None) -> Variant:
        return Variant(self.name, model, self.technique, dict(self.settings), self.parent, self.metrics,
                       id=self.id, created=self.created, artifacts=dict(artifacts or {}),
                       history=list(self.history))

    def row(self) -> dict:
        """The flat row of Variant.row(), for tables and reports."""
        return {**self.as_variant().row(), "builtin": self.builtin}


@dataclass
class PackedVariant:
    """A variant ready to store: its packed weights file and everything else but the model."""
    name: str
    technique: str
    settings: dict
    parent: str | None
    metrics: dict                                    # Metrics.to_dict(with_layers=True)
    weights: bytes                                   # pack_weights(model)
    history: list = field(default_factory=list)
    created: float = field(default_factory=time.time)
    artifacts: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, variant: Variant) -> "PackedVariant":
        try:
            weights = pack_weights(variant.model)
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"Cannot keep {variant.name!r}: its model cannot be packed ({exc}).") from None
        return cls(variant.name, variant.technique, json.loads(canonical_json(variant.settings or {})),
                   variant.parent, variant.metrics.to_dict(with_layers=True), weights,
                   json.loads(canonical_json(variant.history or [])), variant.created, dict(variant.artifacts or {}))


def metrics_from_dict(values: dict) -> Metrics:
    known = Metrics.__dataclass_fields__
    return Metrics(**{k: v for k, v in values.items() if k in known})


def open_store(home: str | Path | None = None, url: str | None = None, *, busy_timeout_ms: int = DEFAULT_BUSY_MS,
               cache: ModelCache | None = None) -> "Store":
    """Open (creating or upgrading) the store in `home` (default data_home()) on `url` (default
    PLAYGROUND_DB_URL, else SQLite in `home`)."""
    home = Path(home) if home is not None else data_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"Cannot create the data folder {home}: {exc.strerror}. Set PLAYGROUND_HOME to a "
                         f"writable folder.") from None
    return Store(home, url or database_url(home), busy_timeout_ms, cache)


class Store:
    def __init__(self, home: Path, url: str, busy_timeout_ms: int = DEFAULT_BUSY_MS,
                 cache: ModelCache | None = None):
        self.home = home
        self.engine = make_engine(url, busy_timeout_ms)
        self._writer = self.engine.execution_options(write=True)
        self.blobs = BlobStore(home / "blobs")
        self.cache = cache if cache is not None else ModelCache()
        self.jobs = JobStore(self.engine)
        try:
            prepare(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()
        self.cache.clear()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _insert(self, table):
        return (pg_insert if self.engine.dialect.name == "postgresql" else sqlite_insert)(table)

    # --- workspaces ------------------------------------------------------------------------------------

    def create_workspace(self) -> tuple[Workspace, str]:
        """A new, empty workspace and its token (≥ 128 bits from secrets; shown only this once)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = time.time()
        workspace = Workspace("w" + secrets.token_hex(8), now, now)
        with db_errors(self.engine), self._writer.begin() as conn:
            conn.execute(WORKSPACES.insert().values(id=workspace.id, token_sha256=token_sha256(token),
                                                    created=now, last_seen=now))
        return workspace, token

    def open_workspace(self, token: str) -> Workspace:
        """The workspace of a link's token; WorkspaceTokenError, with what to do, if malformed or unknown."""
        token = check_token(token)
        with db_errors(self.engine), self.engine.connect() as conn:
            row = conn.execute(select(WORKSPACES).where(WORKSPACES.c.token_sha256 == token_sha256(token))).first()
        if row is None:
            raise WorkspaceTokenError(
                "No workspace on this server matches this link. It may come from another server, or the "
                "server's data folder was reset. Ask for the link again, or start a new workspace.")
        workspace = Workspace(row.id, row.created, row.last_seen)
        if time.time() - row.last_seen > SEEN_EVERY_S:
            self._touch(workspace.id)
        return workspace

    def _touch(self, workspace_id: str) -> None:
        """Best effort: a busy database must not stop a page from opening."""
        try:
            with db_errors(self.engine), self._writer.begin() as conn:
                conn.execute(update(WORKSPACES).where(WORKSPACES.c.id == workspace_id).values(last_seen=time.time()))
        except StoreError:
            pass

    # --- keeping -----------------------------------------------------------------------------------------

    def keep(self, workspace: Workspace, variant: Variant) -> str:
        """Store `variant` in `workspace` (module docstring); returns its id. Keeping it again updates
        its name, metrics and history in this workspace."""
        return self.keep_packed(workspace, [PackedVariant.of(variant)])[0]

    def register_pretrained(self, variant: Variant) -> str:
        """Store a pretrained model as a read-only entry that every workspace sees; returns its id.
        Idempotent: registering the same model again returns the same id. An entry of the same name with
        other weights (what an earlier release shipped) leaves the list, which shows what the server ships
        now; its row stays for the variants made from it."""
        new_id = self._keep(BUILTIN, [PackedVariant.of(variant)])[0]
        stale = and_(MEMBERS.c.workspace_id == BUILTIN, MEMBERS.c.name == variant.name, MEMBERS.c.variant_id != new_id)
        with db_errors(self.engine), self._writer.begin() as conn:
            conn.execute(delete(MEMBERS).where(stale))
        return new_id

    def keep_packed(self, workspace: Workspace, items: list["PackedVariant"]) -> list[str]:
        """Store variants whose weights are packed already (a checked import): every file first, then
        every row in ONE transaction — all of them are kept, or none."""
        return self._keep(workspace.id, items)

    def _keep(self, workspace_id: str, items: list["PackedVariant"]) -> list[str]:
        rows = [self._write_files(item) for item in items]
        now = time.time()
        with db_errors(self.engine), self._writer.begin() as conn:
            for order, (item, row) in enumerate(zip(items, rows)):
                conn.execute(self._insert(VARIANTS).values(**row).on_conflict_do_nothing(index_elements=["id"]))
                self._merge_artifacts(conn, row["id"], json.loads(row["artifacts"]))
                member = {"workspace_id": workspace_id, "variant_id": row["id"], "name": item.name,
                          "metrics": canonical_json(item.metrics), "history": canonical_json(item.history),
                          "added": now + order * 1e-6}                # a batch keeps its order in the list
                conn.execute(self._insert(MEMBERS).values(**member).on_conflict_do_update(
                    index_elements=["workspace_id", "variant_id"],
                    set_={k: member[k] for k in ("name", "metrics", "history")}))
        return [row["id"] for row in rows]

    def _write_files(self, item: "PackedVariant") -> dict:
        """Write the item's files (content-addressed); its variants row, not yet inserted."""
        weights = self.blobs.put(item.weights)
        artifacts = {name: self.blobs.put(bytes(data)) for name, data in item.artifacts.items()}
        return {"id": variant_id(weights, item.parent, item.technique, item.settings), "technique": item.technique,
                "settings": canonical_json(item.settings), "parent": item.parent, "weights_sha256": weights,
                "size": len(item.weights), "artifacts": canonical_json(artifacts), "created": item.created}

    def _merge_artifacts(self, conn, vid: str, artifacts: dict[str, str]) -> None:
        """A variant kept again with artifacts it did not have (an int8 file built later) gains them."""
        if not artifacts:
            return
        stored = json.loads(conn.execute(select(VARIANTS.c.artifacts).where(VARIANTS.c.id == vid)).scalar_one())
        if set(artifacts) - set(stored):
            merged = {**artifacts, **stored}
            conn.execute(update(VARIANTS).where(VARIANTS.c.id == vid).values(artifacts=canonical_json(merged)))

    # --- reading -----------------------------------------------------------------------------------------

    def _visible(self, workspace: Workspace):
        """The workspace's own variants and the pretrained ones, as one query."""
        return (select(VARIANTS, MEMBERS.c.workspace_id, MEMBERS.c.name, MEMBERS.c.metrics, MEMBERS.c.history,
                       MEMBERS.c.added)
                .join(MEMBERS, MEMBERS.c.variant_id == VARIANTS.c.id)
                .where(MEMBERS.c.workspace_id.in_([BUILTIN, workspace.id])))

    def variants(self, workspace: Workspace) -> list[StoredVariant]:
        """Every variant the workspace sees: the pretrained ones first, then its own in the order kept.
        Reads no weights file, so a damaged file never stops the list."""
        query = self._visible(workspace).order_by((MEMBERS.c.workspace_id != BUILTIN), MEMBERS.c.added,
                                                  VARIANTS.c.id)
        with db_errors(self.engine), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        out, seen = [], set()
        for row in rows:
            if row.id not in seen:
                seen.add(row.id)
                out.append(_record(row))
        return out

    def variant(self, workspace: Workspace, variant_id: str) -> StoredVariant:
        """One variant's record; VariantUnavailableError if this workspace does not see it."""
        query = self._visible(workspace).where(VARIANTS.c.id == str(variant_id)).order_by(
            MEMBERS.c.workspace_id != BUILTIN)
        with db_errors(self.engine), self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise VariantUnavailableError(f"There is no variant {variant_id!r} in this workspace (it was deleted, "
                                          f"or belongs to another workspace). Pick another one.")
        return _record(row)

    def model(self, workspace: Workspace, variant_id: str) -> nn.Module:
        """The variant's model (shared, cached: never modify it). VariantUnavailableError, naming the
        variant, if its weights file is missing or damaged."""
        record = self.variant(workspace, variant_id)
        return self.cache.get(record.weights_sha256, lambda: self._build(record))

    def _build(self, record: StoredVariant) -> nn.Module:
        try:
            return unpack_weights(self.blobs.get(record.weights_sha256), record.name)
        except (BlobError, ModelFileError) as exc:
            raise VariantUnavailableError(
                f"The weights of {record.name!r} cannot be loaded: {exc}. Delete this variant, or import it "
                f"again from a workspace export.") from None

    def weights(self, workspace: Workspace, variant_id: str) -> bytes:
        """The variant's packed file (.cmpk), checked against its hash: the download as stored."""
        record = self.variant(workspace, variant_id)
        return self._file(record, record.weights_sha256, "weights")

    def artifact(self, workspace: Workspace, variant_id: str, name: str) -> bytes:
        """An extra file the variant carries (e.g. "int8": the real int8 .pt2)."""
        record = self.variant(workspace, variant_id)
        if name not in record.artifacts:
            raise VariantUnavailableError(f"{record.name!r} has no {name!r} file.")
        return self._file(record, record.artifacts[name], name)

    def _file(self, record: StoredVariant, digest: str, what: str) -> bytes:
        try:
            return self.blobs.get(digest)
        except BlobError as exc:
            raise VariantUnavailableError(f"The {what} file of {record.name!r} cannot be read: {exc}. Delete "
                                          f"this variant, or import it again from a workspace export.") from None

    def load(self, workspace: Workspace, variant_id: str) -> Variant:
        """The variant as a compression.variant.Variant: record, shared model and artifact bytes."""
        record = self.variant(workspace, variant_id)
        model = self.model(workspace, variant_id)
        artifacts = {name: self._file(record, digest, name) for name, digest in record.artifacts.items()}
        return record.as_variant(model, artifacts)

    # --- deleting ----------------------------------------------------------------------------------------

    def delete(self, workspace: Workspace, variant_id: str) -> None:
        """Remove one of the workspace's own variants. Its files stay while another workspace or variant
        uses them (collect_garbage removes the rest). Pretrained models cannot be deleted."""
        record = self.variant(workspace, variant_id)
        own = and_(MEMBERS.c.workspace_id == workspace.id, MEMBERS.c.variant_id == record.id)
        with db_errors(self.engine), self._writer.begin() as conn:
            if conn.execute(delete(MEMBERS).where(own)).rowcount == 0:
                raise StoreError(f"{record.name!r} is a pretrained model, shared by every workspace: it "
                                 f"cannot be deleted.")
            users = conn.execute(select(func.count()).select_from(MEMBERS)
                                 .where(MEMBERS.c.variant_id == record.id)).scalar_one()
            if users == 0:
                conn.execute(delete(VARIANTS).where(VARIANTS.c.id == record.id))

    def collect_garbage(self, grace_s: float = 3600.0) -> tuple[int, int]:
        """Remove weights and artifact files no variant names (and temporary files of killed writers)
        older than `grace_s` — the grace spares files a keep in progress has written but not yet
        committed. Returns (files removed, bytes freed)."""
        with db_errors(self.engine), self.engine.connect() as conn:
            rows = conn.execute(select(VARIANTS.c.weights_sha256, VARIANTS.c.artifacts)).all()
        referenced = {r.weights_sha256 for r in rows}
        for r in rows:
            referenced.update(json.loads(r.artifacts).values())
        return self.blobs.collect(referenced, grace_s)


def check_token(token: Any) -> str:
    """The token without surrounding spaces; WorkspaceTokenError, saying what to do, if malformed."""
    if not isinstance(token, str) or not token.strip():
        raise WorkspaceTokenError("The workspace link has no token. Open your workspace link again, or start "
                                  "a new workspace.")
    token = token.strip()
    if len(token) > MAX_TOKEN_CHARS:
        raise WorkspaceTokenError(f"The workspace link's token is {len(token)} characters long; a real one has "
                                  f"32. Copy the whole link again (only the part after ws=), or start a new "
                                  f"workspace.")
    if not TOKEN.fullmatch(token):
        raise WorkspaceTokenError(f"The workspace link is damaged: its token should be 32 letters, digits, "
                                  f"'-' or '_' (this one has {len(token)} characters). Copy the whole link "
                                  f"again, or start a new workspace.")
    return token


def _record(row) -> StoredVariant:
    return StoredVariant(
        id=row.id, name=row.name, technique=row.technique, settings=json.loads(row.settings), parent=row.parent,
        metrics=metrics_from_dict(json.loads(row.metrics)), created=row.created, added=row.added,
        weights_sha256=row.weights_sha256, size=row.size, artifacts=json.loads(row.artifacts),
        history=json.loads(row.history), builtin=row.workspace_id == BUILTIN)
