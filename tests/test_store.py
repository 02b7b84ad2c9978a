"""The workspace store (compression/store.py): round trips, sharing, isolation, deletion, faults."""
import hashlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

from compression.model_cache import ModelCache, model_bytes
from compression.prune import prune
from compression.activations import activation_settings, quantize_activations
from compression.store import check_token, open_store, variant_id
from compression.store_errors import (StoreBusyError, StoreError, StoreFullError, VariantUnavailableError,
                                      WorkspaceTokenError)
from compression.variant import Variant
from helpers import toy_set
from store_fixtures import (PYTHON, child_env, db_url, home, images, logits, one_torch_thread,  # noqa: F401
                            opener, pg_url, tiny_model, tiny_variant)


# --- round trips ---------------------------------------------------------------------------------------

CHILD_LOAD = """
import json, sys
import numpy as np, torch
from compression.store import open_store
home, url, token, vid, out = sys.argv[1:]
store = open_store(home, url)
ws = store.open_workspace(token)
record = store.variant(ws, vid)
model = store.model(ws, vid)
x = torch.from_numpy(np.load(out + ".x.npy", allow_pickle=False))
with torch.no_grad():
    np.save(out + ".logits.npy", model(x).numpy(), allow_pickle=False)
json.dump({"metrics": record.metrics.to_dict(with_layers=True), "name": record.name,
           "settings": record.settings, "parent": record.parent}, open(out + ".json", "w"))
store.close()
"""


def load_in_new_process(home, url, token, vid, tmp_path):
    """Open the store in a fresh Python process and return (logits of images(), record as JSON)."""
    out = str(tmp_path / "child")
    np.save(out + ".x.npy", images().numpy(), allow_pickle=False)
    subprocess.run([PYTHON, "-c", CHILD_LOAD, str(home), url, token, vid, out], check=True, env=child_env(),
                   timeout=120)
    return torch.from_numpy(np.load(out + ".logits.npy", allow_pickle=False)), json.load(open(out + ".json"))


def test_keep_then_reopen_in_a_new_process_gives_bit_identical_logits(opener, home, db_url, tmp_path):
    store = opener()
    ws, token = store.create_workspace()
    parent = tiny_variant(0, "parent")
    parent_id = store.keep(ws, parent)
    child = Variant("pruned 60 %", prune(parent.model, 0.6), "pruned", {"amount": 0.6, "exempt": ("fc",)},
                    parent_id, tiny_variant(1).metrics)
    vid = store.keep(ws, child)
    expected = logits(child.model)
    store.close()

    got, record = load_in_new_process(home, db_url, token, vid, tmp_path)
    assert torch.equal(got, expected)
    assert record["metrics"] == json.loads(json.dumps(child.metrics.to_dict(with_layers=True)))
    assert record["name"] == "pruned 60 %" and record["parent"] == parent_id
    assert record["settings"] == {"amount": 0.6, "exempt": ["fc"]}


def test_activation_rounding_survives_the_round_trip(opener):
    model = quantize_activations(tiny_model(0), 3, toy_set(64), batches=1, batch_size=32)
    assert activation_settings(model)
    plain = logits(tiny_model(0))
    expected = logits(model)
    assert not torch.equal(plain, expected)        # the rounding changes the logits, so it must travel

    store = opener()
    ws, _ = store.create_workspace()
    vid = store.keep(ws, Variant("a3", model, "quantized", {"a_bits": 3}))
    store.close()
    restored = opener().model(ws, vid)
    assert activation_settings(restored) == activation_settings(model)
    assert torch.equal(logits(restored), expected)


def test_a_variant_id_comes_from_content_and_lineage(opener):
    store = opener()
    ws, _ = store.create_workspace()
    vid = store.keep(ws, tiny_variant(0))
    record = store.variant(ws, vid)
    assert vid == variant_id(record.weights_sha256, None, "trained", {"seed": 0})
    assert len(vid) == 32
    assert store.keep(ws, tiny_variant(0, parent="p")) != vid          # another lineage, another id
    assert store.keep(ws, tiny_variant(0, lr=0.1)) != vid              # other settings, another id


def test_load_gives_a_whole_variant_with_its_artifacts(opener):
    store = opener()
    ws, _ = store.create_workspace()
    variant = tiny_variant(0, history=None)
    variant.history = [{"epoch": 1, "accuracy": 0.5}]
    vid = store.keep(ws, variant)
    variant.artifacts = {"int8": b"\x00pt2 bytes"}
    assert store.keep(ws, variant) == vid                   # kept again, now with its int8 file
    loaded = store.load(ws, vid)
    assert loaded.id == vid and loaded.artifacts == {"int8": b"\x00pt2 bytes"}
    assert loaded.history == [{"epoch": 1, "accuracy": 0.5}]
    assert store.artifact(ws, vid, "int8") == b"\x00pt2 bytes"
    assert store.blobs.exists(hashlib.sha256(b"\x00pt2 bytes").hexdigest())
    assert store.weights(ws, vid)[:4] == b"CMPK"


# --- workspaces ----------------------------------------------------------------------------------------

def test_two_workspaces_share_one_file_and_id_but_never_see_each_others_lists(opener):
    store = opener()
    alice, alice_token = store.create_workspace()
    bob, bob_token = store.create_workspace()
    shared_a = store.keep(alice, tiny_variant(0, "alice's copy"))
    shared_b = store.keep(bob, tiny_variant(0, "bob's copy"))
    only_alice = store.keep(alice, tiny_variant(1))

    assert shared_a == shared_b
    assert len(list(store.blobs.digests())) == 2
    assert [v.id for v in store.variants(alice)] == [shared_a, only_alice]
    assert [(v.id, v.name) for v in store.variants(bob)] == [(shared_b, "bob's copy")]
    with pytest.raises(VariantUnavailableError, match="no variant"):
        store.variant(bob, only_alice)
    with pytest.raises(VariantUnavailableError):
        store.model(bob, only_alice)
    assert store.open_workspace(alice_token).id == alice.id
    assert store.open_workspace(" " + bob_token + "\n").id == bob.id   # pasted with spaces


def test_tokens_are_long_random_and_stored_only_as_a_hash(opener, home, db_url):
    store = opener()
    tokens = [store.create_workspace()[1] for _ in range(3)]
    assert len(set(tokens)) == 3 and all(len(t) == 32 for t in tokens)     # 192 bits each
    with store.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT token_sha256 FROM workspaces")]
    assert not set(tokens) & set(stored)
    assert {hashlib.sha256(t.encode()).hexdigest() for t in tokens} <= set(stored)


@pytest.mark.parametrize("token, message", [
    ("", "no token"),
    ("abc", "damaged"),
    ("a" * 31 + "!", "damaged"),
    ("a" * 33, "damaged"),
    ("x" * 101, "101 characters long"),
    ("../../etc/passwd" + "a" * 16, "damaged"),
])
def test_a_malformed_token_is_refused_with_what_to_do(token, message):
    with pytest.raises(WorkspaceTokenError, match=message) as err:
        check_token(token)
    assert "new workspace" in str(err.value)


def test_an_unknown_token_is_refused_with_what_to_do(opener):
    store = opener()
    store.create_workspace()
    with pytest.raises(WorkspaceTokenError, match="No workspace on this server matches this link"):
        store.open_workspace("A" * 32)


# --- pretrained, deleting, collecting ------------------------------------------------------------------

def test_pretrained_models_are_seen_by_every_workspace_and_cannot_be_deleted(opener):
    store = opener()
    pretrained = store.register_pretrained(tiny_variant(7, "resnet8 (pretrained)", "pretrained"))
    assert store.register_pretrained(tiny_variant(7, "resnet8 (pretrained)", "pretrained")) == pretrained
    alice, _ = store.create_workspace()
    bob, _ = store.create_workspace()
    own = store.keep(alice, tiny_variant(0, parent=pretrained))
    assert [(v.id, v.builtin) for v in store.variants(alice)] == [(pretrained, True), (own, False)]
    assert [v.id for v in store.variants(bob)] == [pretrained]
    with pytest.raises(StoreError, match="pretrained model.*cannot be deleted"):
        store.delete(alice, pretrained)
    assert torch.equal(logits(store.model(bob, pretrained)), logits(tiny_model(7)))


def test_new_pretrained_weights_replace_the_listed_entry_and_keep_what_was_made_from_the_old(opener):
    store = opener()
    old = store.register_pretrained(tiny_variant(7, "resnet8 (pretrained)", "pretrained"))
    alice, _ = store.create_workspace()
    own = store.keep(alice, tiny_variant(0, parent=old))
    new = store.register_pretrained(tiny_variant(8, "resnet8 (pretrained)", "pretrained"))
    assert new != old
    assert [(v.id, v.builtin) for v in store.variants(alice)] == [(new, True), (own, False)]
    assert store.variant(alice, own).parent == old
    assert torch.equal(logits(store.model(alice, own)), logits(tiny_model(0)))


def test_delete_removes_only_the_workspaces_own_entry_and_gc_the_unused_files(opener):
    store = opener()
    alice, _ = store.create_workspace()
    bob, _ = store.create_workspace()
    shared = store.keep(alice, tiny_variant(0))
    store.keep(bob, tiny_variant(0))
    mine = store.keep(alice, tiny_variant(1))
    shared_file = store.variant(alice, shared).weights_sha256
    mine_file = store.variant(alice, mine).weights_sha256

    with pytest.raises(VariantUnavailableError):
        store.delete(bob, mine)                               # not bob's: untouched
    store.delete(alice, shared)
    store.delete(alice, mine)
    assert store.variants(alice) == []
    assert [v.id for v in store.variants(bob)] == [shared]    # bob's copy is still there
    assert store.collect_garbage(grace_s=3600) == (0, 0)      # too young to collect
    removed, freed = store.collect_garbage(grace_s=0)
    assert removed == 1 and freed > 0
    assert store.blobs.exists(shared_file) and not store.blobs.exists(mine_file)
    assert torch.equal(logits(store.model(bob, shared)), logits(tiny_model(0)))


# --- the model cache -----------------------------------------------------------------------------------

def test_the_model_cache_stays_under_its_byte_bound(opener):
    size = model_bytes(tiny_model(0))
    cache = ModelCache(max_bytes=int(2.5 * size))
    store = opener(cache=cache)
    ws, _ = store.create_workspace()
    ids = [store.keep(ws, tiny_variant(seed)) for seed in range(6)]
    for seed, vid in enumerate(ids):
        model = store.model(ws, vid)
        assert torch.equal(logits(model), logits(tiny_model(seed)))
        assert cache.total_bytes <= cache.max_bytes
    assert len(cache) == 2 and cache.total_bytes == 2 * size
    assert cache.keys() == [store.variant(ws, vid).weights_sha256 for vid in ids[-2:]]
    assert store.model(ws, ids[-1]) is model                     # a hit: the same shared object
    assert cache.misses == 6 and cache.hits == 1


def test_the_model_cache_loads_a_model_once_for_threads_asking_together():
    cache = ModelCache(max_bytes=1 << 30)
    calls, started = [], threading.Barrier(4)

    def load():
        calls.append(1)
        time.sleep(0.2)
        return tiny_model(0)

    def ask(out):
        started.wait()
        out.append(cache.get("key", load))

    results = []
    threads = [threading.Thread(target=ask, args=(results,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(m) for m in results}) == 1


def test_a_model_larger_than_the_bound_is_returned_but_not_kept():
    cache = ModelCache(max_bytes=100)
    model = cache.get("big", lambda: tiny_model(0))
    assert isinstance(model, torch.nn.Module) and len(cache) == 0 and cache.total_bytes == 0


# --- faults --------------------------------------------------------------------------------------------

def test_a_damaged_or_missing_weights_file_fails_for_that_variant_only(opener):
    store = opener()
    ws, _ = store.create_workspace()
    damaged, missing, fine = (store.keep(ws, tiny_variant(seed, f"v{seed}")) for seed in range(3))
    path = store.blobs.path(store.variant(ws, damaged).weights_sha256)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    store.blobs.path(store.variant(ws, missing).weights_sha256).unlink()

    assert [v.name for v in store.variants(ws)] == ["v0", "v1", "v2"]     # the list still works
    with pytest.raises(VariantUnavailableError, match="weights of 'v0' cannot be loaded.*damaged"):
        store.model(ws, damaged)
    with pytest.raises(VariantUnavailableError, match="weights of 'v1' cannot be loaded.*missing"):
        store.model(ws, missing)
    with pytest.raises(VariantUnavailableError, match="'v1'.*missing"):
        store.weights(ws, missing)
    assert torch.equal(logits(store.model(ws, fine)), logits(tiny_model(2)))
    store.delete(ws, damaged)                                 # and the student can clear it away
    assert [v.name for v in store.variants(ws)] == ["v1", "v2"]


HOLD_SQLITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""
HOLD_PG_LOCK = """
import sys
import psycopg
url = sys.argv[1].replace("postgresql+psycopg://", "postgresql://")
with psycopg.connect(url) as conn:
    conn.execute("LOCK TABLE workspace_variants IN ACCESS EXCLUSIVE MODE")
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_database_locked_by_another_process_gives_a_clear_error_then_works(opener, home, db_url):
    store = opener(busy_timeout_ms=300)
    ws, _ = store.create_workspace()
    kept = store.keep(ws, tiny_variant(0))
    if db_url.startswith("sqlite"):
        holder = [PYTHON, "-c", HOLD_SQLITE_LOCK, str(home / "playground.db")]
    else:
        holder = [PYTHON, "-c", HOLD_PG_LOCK, db_url]
    with subprocess.Popen(holder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as lock:
        assert lock.stdout.readline().strip() == "locked"
        with pytest.raises(StoreBusyError, match="in use by another program.*Try again"):
            store.keep(ws, tiny_variant(1))
        lock.stdin.close()                                    # the other process lets go
        assert lock.wait(timeout=30) == 0
    other = store.keep(ws, tiny_variant(1))
    assert [v.id for v in store.variants(ws)] == [kept, other]


def write_until_full(path):
    """Fill the file system holding `path` with one file; returns that file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    return path


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs; needs root and mount rights, else the test skips)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and the right to mount a tmpfs (a real full disk)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_gives_a_clear_error_and_keeps_everything_stored(small_disk):
    store = open_store(small_disk / "home", busy_timeout_ms=300)
    try:
        ws, token = store.create_workspace()
        kept = store.keep(ws, tiny_variant(0))
        filler = write_until_full(small_disk / "filler")

        with pytest.raises(StoreFullError, match="disk .* is full.*nothing was saved"):
            store.keep(ws, tiny_variant(1))                       # its weights file does not fit
        assert not list((small_disk / "home" / "blobs").glob("*/.tmp-*"))     # nothing half-written
        tokens = []
        with pytest.raises(StoreFullError, match="full"):
            for _ in range(5000):                                 # rows until the database cannot grow
                tokens.append(store.create_workspace()[1])
        assert [v.id for v in store.variants(store.open_workspace(token))] == [kept]
        assert all(store.open_workspace(t) for t in tokens)       # every committed row is intact

        filler.unlink()
        again = store.keep(ws, tiny_variant(1))
        assert [v.id for v in store.variants(ws)] == [kept, again]
        assert torch.equal(logits(store.model(ws, again)), logits(tiny_model(1)))
    finally:
        store.close()


FILE_SIZE_LIMIT = """
import json, resource, signal, sys
from pathlib import Path
from compression.models import create_model
from compression.store import open_store
from compression.store_errors import StoreFullError
from compression.variant import Variant
home = Path(sys.argv[1])
store = open_store(home)
ws, _ = store.create_workspace()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)          # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
try:
    store.keep(ws, Variant("big", create_model("resnet20"), "trained"))   # about 1 MB packed
    outcome = "kept"
except StoreFullError as exc:
    outcome = str(exc)
print(json.dumps({"outcome": outcome, "listed": len(store.variants(ws)),
                  "temp_files": len(list((home / "blobs").glob("*/.tmp-*")))}))
"""


def test_a_file_size_limit_while_writing_weights_gives_a_clear_error_and_no_partial_file(tmp_path):
    """Runs everywhere (no mount needed): the kernel refuses the write, as a full disk would."""
    done = subprocess.run([PYTHON, "-c", FILE_SIZE_LIMIT, str(tmp_path / "home")], env=child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert "is full" in result["outcome"] and "nothing was saved" in result["outcome"]
    assert result["listed"] == 0 and result["temp_files"] == 0


# --- killed writers ------------------------------------------------------------------------------------

def writer_model(i: int):
    """The i-th model the writer keeps: tiny_model(0) with fc.bias shifted by i / 1000."""
    model = tiny_model(0)
    with torch.no_grad():
        model.fc.bias += i / 1000
    return model


def keep_forever(home, url, token, start, kept):
    """A writer process: keeps variant after variant until it is killed, counting them in `kept`."""
    torch.set_num_threads(1)
    store = open_store(home, url)
    ws = store.open_workspace(token)
    i = start
    while True:
        store.keep(ws, Variant(f"w{i}", writer_model(i), "trained", {"i": i}))
        kept.value += 1
        i += 1


def test_a_writer_killed_at_random_moments_leaves_whole_variants_only(opener, home, db_url):
    """SIGKILL a process that keeps variants in a loop, 20 times at random moments: each time the store
    opens, and every listed variant loads with exactly the logits it was kept with."""
    store = opener()
    ws, token = store.create_workspace()
    store.close()
    rng, fork = random.Random(18), multiprocessing.get_context("fork")
    listed, next_i = [], 0
    for _ in range(20):
        kept = fork.Value("i", 0)
        writer = fork.Process(target=keep_forever, args=(home, db_url, token, next_i, kept), daemon=True)
        writer.start()
        deadline = time.time() + 120
        while kept.value < 1 and time.time() < deadline:     # one whole variant at least, however slow the machine
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))                     # then a random moment, often mid-keep
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        assert writer.exitcode == -signal.SIGKILL

        store = open_store(home, db_url, cache=ModelCache(max_bytes=0))
        records = store.variants(store.open_workspace(token))
        assert [r.id for r in records[:len(listed)]] == listed          # nothing kept before was lost
        for record in records:
            i = record.settings["i"]
            assert record.name == f"w{i}"
            assert store.weights(ws, record.id)                         # its file is whole (hash checked)
            if record.id not in listed:                                 # new since the last kill: load it
                assert torch.equal(logits(store.model(ws, record.id)), logits(writer_model(i)))
        listed = [r.id for r in records]
        next_i = max([r.settings["i"] + 1 for r in records], default=next_i)
        store.close()
    assert len(listed) >= 20                      # the writer got work done between kills


def keep_some(home, url, token, first, count):
    """A writer process keeping `count` variants."""
    torch.set_num_threads(1)
    store = open_store(home, url)
    ws = store.open_workspace(token)
    for i in range(first, first + count):
        store.keep(ws, Variant(f"w{i}", writer_model(i), "trained", {"i": i}))
    store.close()


def test_two_processes_keeping_at_once_both_get_every_variant_stored(opener, home, db_url):
    store = opener()
    ws, token = store.create_workspace()
    fork = multiprocessing.get_context("fork")
    writers = [fork.Process(target=keep_some, args=(home, db_url, token, first, 10)) for first in (0, 100)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    kept = {r.settings["i"]: r for r in store.variants(ws)}
    assert sorted(kept) == [*range(10), *range(100, 110)]
    for i in (0, 9, 100, 109):
        assert torch.equal(logits(store.model(ws, kept[i].id)), logits(writer_model(i)))


def test_the_data_folder_follows_the_environment(monkeypatch, tmp_path):
    from compression.store_schema import data_home, database_url
    monkeypatch.delenv("PLAYGROUND_HOME", raising=False)
    monkeypatch.delenv("PLAYGROUND_DB_URL", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and not os.uname().sysname == "Darwin":
        assert data_home() == tmp_path / "xdg" / "compression-playground"
    monkeypatch.setenv("PLAYGROUND_HOME", str(tmp_path / "mine"))
    assert data_home() == tmp_path / "mine"
    assert database_url(data_home()) == f"sqlite:///{tmp_path / 'mine' / 'playground.db'}"
    monkeypatch.setenv("PLAYGROUND_DB_URL", "postgresql+psycopg://teacher@db.school/playground")
    assert database_url(data_home()) == "postgresql+psycopg://teacher@db.school/playground"
