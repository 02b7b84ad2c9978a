"""The workspace store (compression/store.py): round trips, sharing, isolation, deletion, faults."""
import hashlib
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time

import numpy as np
import pytest
import torch

from compression.model_cache import ModelCache, model_bytes
from compression.models import copy_model
from compression.prune import prune
from compression.quantize import activation_settings, quantize_activations
from compression.store import check_token, open_store, variant_id
from compression.store_errors import (StoreBusyError, StoreError, StoreFullError, StoreVersionError,
                                      VariantUnavailableError, WorkspaceTokenError)
from compression.variant import Variant
from helpers import toy_set
from store_fixtures import (PYTHON, child_env, db_url, home, images, logits, opener, pg_url,  # noqa: F401
                            tiny_model, tiny_variant)


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
