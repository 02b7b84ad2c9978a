"""Schema versions of the workspace store: an older database is upgraded and keeps its data; a newer
one is refused and left untouched (compression/store_schema.py)."""
import hashlib
import json

import pytest
import torch
from sqlalchemy import MetaData, create_engine, inspect

from compression.blobs import BlobStore
from compression.store import open_store, pack_weights, variant_id
from compression.store_errors import StoreError, StoreVersionError
from compression.store_schema import SCHEMA_VERSION
from store_fixtures import (db_url, home, logits, one_torch_thread, opener, pg_url,  # noqa: F401
                            tiny_model, tiny_variant)

# The first layout this store shipped with (version 1: no jobs table), written as raw SQL.
VERSION_1 = [
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE workspaces (id VARCHAR(40) NOT NULL, token_sha256 VARCHAR(64) NOT NULL, created FLOAT NOT NULL, "
    "last_seen FLOAT NOT NULL, PRIMARY KEY (id), UNIQUE (token_sha256))",
    "CREATE TABLE variants (id VARCHAR(40) NOT NULL, technique TEXT NOT NULL, settings TEXT NOT NULL, parent TEXT, "
    "weights_sha256 VARCHAR(64) NOT NULL, size BIGINT NOT NULL, artifacts TEXT NOT NULL, created FLOAT NOT NULL, "
    "PRIMARY KEY (id))",
    "CREATE INDEX variants_weights ON variants (weights_sha256)",
    "CREATE TABLE workspace_variants (workspace_id VARCHAR(40) NOT NULL, variant_id VARCHAR(40) NOT NULL, "
    "name TEXT NOT NULL, metrics TEXT NOT NULL, history TEXT NOT NULL, added FLOAT NOT NULL, "
    "PRIMARY KEY (workspace_id, variant_id), "
    "FOREIGN KEY(workspace_id) REFERENCES workspaces (id) ON DELETE CASCADE, "
    "FOREIGN KEY(variant_id) REFERENCES variants (id))",
    "CREATE INDEX workspace_variants_variant ON workspace_variants (variant_id)",
    "INSERT INTO schema_version (version) VALUES (1)",
    "INSERT INTO workspaces VALUES ('builtin', 'builtin', 0, 0)",
]
TOKEN = "v1-token-v1-token-v1-token-v1-to"


def make_version_1(url: str, home) -> str:
    """A version-1 store holding one workspace (token TOKEN) with one variant; returns the variant's id."""
    weights = pack_weights(tiny_model(3))
    digest = BlobStore(home / "blobs").put(weights)
    vid = variant_id(digest, None, "trained", {"epochs": 5})
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in VERSION_1:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("INSERT INTO workspaces VALUES ('wold', %s, 100.0, 200.0)" % _quote(
            hashlib.sha256(TOKEN.encode()).hexdigest()))
        conn.exec_driver_sql(
            "INSERT INTO variants VALUES (%s, 'trained', '{\"epochs\":5}', NULL, %s, %d, '{}', 150.0)"
            % (_quote(vid), _quote(digest), len(weights)))
        conn.exec_driver_sql(
            "INSERT INTO workspace_variants VALUES ('wold', %s, 'my old model', %s, '[]', 160.0)"
            % (_quote(vid), _quote(json.dumps({"params": 5214, "eval_accuracy": 0.625}))))
    engine.dispose()
    return vid


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def layout(url: str) -> dict:
    """Every table's columns, keys and indexes, as the database reports them."""
    engine = create_engine(url)
    db = inspect(engine)
    out = {}
    for table in sorted(db.get_table_names()):
        out[table] = {
            "columns": [(c["name"], str(c["type"]), c["nullable"]) for c in db.get_columns(table)],
            "primary": db.get_pk_constraint(table)["constrained_columns"],
            "foreign": sorted((f["constrained_columns"], f["referred_table"], f["referred_columns"],
                               f["options"].get("ondelete")) for f in db.get_foreign_keys(table)),
            "indexes": sorted((i["name"], i["column_names"], bool(i["unique"])) for i in db.get_indexes(table)),
            "unique": sorted(tuple(u["column_names"]) for u in db.get_unique_constraints(table)),
        }
    engine.dispose()
    return out


def test_a_version_1_store_is_upgraded_and_keeps_its_data(home, db_url, opener):
    home.mkdir(parents=True, exist_ok=True)
    vid = make_version_1(db_url, home)
    store = opener()

    ws = store.open_workspace(TOKEN)
    [record] = store.variants(ws)
    assert (record.id, record.name, record.settings) == (vid, "my old model", {"epochs": 5})
    assert record.metrics.eval_accuracy == 0.625
    assert torch.equal(logits(store.model(ws, vid)), logits(tiny_model(3)))
    job = store.jobs.create(ws, "train", "new in version 2", {"epochs": 1})     # the new table works
    assert [j.id for j in store.jobs.list(ws)] == [job.id]
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version FROM schema_version").scalar_one() == SCHEMA_VERSION
    upgraded = layout(db_url)
    store.close()

    fresh_url = db_url
    if db_url.startswith("sqlite"):
        fresh_url = f"sqlite:///{home / 'fresh.db'}"
    else:
        engine = create_engine(db_url)
        tables = MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
        engine.dispose()
    open_store(home, fresh_url).close()
    assert layout(fresh_url) == upgraded           # upgrading gives exactly the layout a fresh store has


def test_opening_twice_does_not_upgrade_twice(opener, home, db_url):
    home.mkdir(parents=True, exist_ok=True)
    make_version_1(db_url, home)
    opener().close()
    store = opener()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM schema_version").scalar_one() == 1
    assert len(store.variants(store.open_workspace(TOKEN))) == 1


def database_state(url: str) -> list:
    """Every row of every table, for comparing a database before and after."""
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    with engine.connect() as conn:
        state = [(t.name, sorted(map(tuple, conn.execute(t.select()).all()))) for t in tables.sorted_tables]
    engine.dispose()
    return state


def test_a_database_from_a_newer_release_is_refused_and_left_untouched(opener, home, db_url):
    store = opener()
    ws, _ = store.create_workspace()
    store.keep(ws, tiny_variant(0))
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE schema_version SET version = 99")
    store.close()
    before = database_state(db_url)
    db_file = home / "playground.db"
    file_before = db_file.read_bytes() if db_url.startswith("sqlite") else None

    with pytest.raises(StoreVersionError, match=r"newer release.*version 99.*left untouched"):
        open_store(home, db_url)

    if file_before is not None:
        assert db_file.read_bytes() == file_before
        wal = home / "playground.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0
    assert database_state(db_url) == before


def test_an_upgrade_that_fails_half_way_leaves_the_old_database_as_it_was(home, db_url, monkeypatch):
    """Upgrades run in one transaction (SQLite's DDL too): a failing step undoes the steps before it."""
    from compression import store_schema
    home.mkdir(parents=True, exist_ok=True)
    make_version_1(db_url, home)
    before = layout(db_url)
    monkeypatch.setitem(store_schema.UPGRADES, 1, store_schema.UPGRADES[1] + ["CREATE TABLE variants (x INTEGER)"])
    with pytest.raises(StoreError):
        open_store(home, db_url)
    assert layout(db_url) == before                         # no jobs table, still version 1
    monkeypatch.undo()
    store = open_store(home, db_url)                        # the real upgrade then succeeds
    assert len(store.variants(store.open_workspace(TOKEN))) == 1
    store.close()
