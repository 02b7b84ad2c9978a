"""Fixtures the store tests share: a real SQLite file always, and a real PostgreSQL server when
PLAYGROUND_TEST_DB_URL is set (a fresh database per test run, its tables dropped before each test and
the database dropped at the end)."""
import os
import secrets
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy import MetaData, create_engine, make_url

from compression.metrics import Metrics
from compression.models import create_model
from compression.store import open_store
from compression.variant import Variant

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["sqlite"] + (["postgresql"] if os.environ.get("PLAYGROUND_TEST_DB_URL") else [])


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread (on a busy machine, two threads wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pg_url():
    base = os.environ["PLAYGROUND_TEST_DB_URL"]
    name = f"playground_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    yield make_url(base).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """The database URL of one backend, empty."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'home' / 'playground.db'}"
    url = request.getfixturevalue("pg_url")
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)
    engine.dispose()
    return url


@pytest.fixture
def home(tmp_path):
    return tmp_path / "home"


@pytest.fixture
def opener(home, db_url):
    """open(**kw) -> Store on this test's home and database; every store is closed at the end."""
    stores = []

    def open_(**kw):
        store = open_store(home, db_url, **kw)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


def tiny_model(seed: int = 0):
    """A resnet8 at width 0.25 with random weights and BN statistics (about 5,000 parameters)."""
    torch.manual_seed(seed)
    model = create_model("resnet8", width=0.25)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def tiny_variant(seed: int = 0, name: str | None = None, technique: str = "trained", parent=None, **settings):
    metrics = Metrics(params=5214, eval_accuracy=0.1 + seed / 1000, latency_b1_ms=1.5)
    return Variant(name or f"tiny {seed}", tiny_model(seed), technique, {"seed": seed, **settings}, parent, metrics)


def images(n: int = 4):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def logits(model, x=None):
    return model.eval()(images() if x is None else x)


def child_env() -> dict:
    """Environment for a child Python process: the repo importable, one torch thread."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


PYTHON = sys.executable
