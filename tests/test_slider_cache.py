"""The server's byte-bounded caches (compression.model_cache.ByteCache) and what ui/cached.py keys them by;
the idle trim (ui/memory.py)."""
import threading
import time
from contextlib import contextmanager

import torch

from compression.data import ImageSet
from compression.metrics import return_freed_memory
from compression.model_cache import ByteCache, model_bytes, nbytes
from compression.models import create_model
from compression.prune import prune
from compression.train import predict_logits
from helpers import toy_set
from ui import cached
from ui.memory import IdleTrim


def kib(n: int) -> torch.Tensor:
    return torch.zeros(n * 256)                     # n KiB of float32


def test_the_cache_evicts_the_least_recently_used_beyond_its_bound():
    cache = ByteCache(max_bytes=3 * 1024 + 512, sizeof=lambda t: t.numel() * t.element_size())
    for key in "abc":
        cache.get(key, lambda: kib(1))
    cache.get("a", lambda: kib(1))                  # a hit: "a" is now the most recent
    cache.get("d", lambda: kib(1))                  # four KiB do not fit: the oldest, "b", goes
    assert cache.keys() == ["c", "a", "d"] and cache.total_bytes == 3 * 1024 <= cache.max_bytes
    cache.get("e", lambda: kib(2))
    assert cache.keys() == ["d", "e"] and cache.total_bytes <= cache.max_bytes
    big = cache.get("big", lambda: kib(8))          # larger than the whole bound: returned, not kept
    assert big.numel() == 2048 and "big" not in cache and cache.hits == 1 and cache.misses == 6
    cache.put("kept", kib(1))                       # kept as a computed value is (the ONNX check's files)
    assert cache.keys() == ["e", "kept"] and cache.get("kept", lambda: kib(3)).numel() == 256


def test_threads_asking_for_one_key_together_compute_it_once_and_all_wait_visibly():
    cache = ByteCache(max_bytes=1 << 20)
    calls, waiting, started = [], [], threading.Barrier(4)

    @contextmanager
    def spinner():
        waiting.append(threading.get_ident())
        yield

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return object()

    results = []

    def ask():
        started.wait()
        results.append(cache.get("key", compute, spinner))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1 and len({id(r) for r in results}) == 1 and len(results) == 4
    assert len(waiting) == 4                                           # every one of them saw the spinner
    cache.get("key", compute, spinner)
    assert len(waiting) == 4 and len(calls) == 1                       # a hit shows none


def test_a_pruned_model_weighs_its_masks_and_masked_weights_too():
    model = create_model("resnet8", width=0.5)
    pruned = prune(model, 0.5, "magnitude", "global")
    pruned_weights = sum(m.weight_orig.numel() * 4 for m in pruned.modules() if hasattr(m, "weight_orig"))
    assert nbytes(model) > model_bytes(model) > pruned_weights > 0
    assert nbytes(pruned) - nbytes(model) == 2 * pruned_weights      # weight_orig, and weight_mask and weight
    assert nbytes((pruned, 0.5)) > nbytes(pruned)


def test_a_fingerprint_names_the_data_not_the_set():
    a = toy_set(64, seed=0)
    same = ImageSet(a.images.clone(), a.labels.clone(), "another name")
    changed = ImageSet(a.images.clone(), a.labels.clone(), a.name)
    changed.images[3, 0, 0, 0] ^= 1
    assert a.fingerprint() == same.fingerprint() != changed.fingerprint()
    assert a.subset(slice(0, 32)).fingerprint() != a.fingerprint()


def test_two_eval_sets_get_two_accuracies_for_one_variant(monkeypatch):
    monkeypatch.setattr(cached, "_results", ByteCache(1 << 26))
    model = create_model("resnet8", width=0.25).eval()
    first = toy_set(128, seed=1)
    answers = ImageSet(first.images, predict_logits(model, first.images).argmax(1), "the model's own answers")
    assert cached.accuracy("v1", model, first) < 1.0
    assert cached.accuracy("v1", model, answers) == 1.0                # not the first set's entry
    pruned_first = cached.unstructured("v1", "magnitude", "global", (), 0.5, model, first, first)
    pruned_answers = cached.unstructured("v1", "magnitude", "global", (), 0.5, model, answers, first)
    assert pruned_first[0] is not pruned_answers[0] and len(cached._results) == 4
    assert cached.unstructured("v1", "magnitude", "global", (), 0.5, model, first, first) is pruned_first


def test_the_trim_runs_once_when_a_busy_server_goes_quiet():
    state = IdleTrim(cpu=0.0, now=0.0, idle_s=5)
    decisions = [state.tick(cpu=2.0 * t, now=t) for t in range(1, 4)]              # three busy seconds
    decisions += [state.tick(cpu=6.0 + 0.01 * t, now=3 + t) for t in range(1, 12)]  # then quiet
    assert decisions.count(True) == 1 and decisions.index(True) == 3 + 5 - 1
    assert not any(state.tick(cpu=6.2, now=15 + t) for t in range(10))            # no work: no trim again


def test_a_long_busy_spell_is_trimmed_every_ten_seconds_and_once_more_when_quiet():
    state = IdleTrim(cpu=0.0, now=0.0, idle_s=5)
    busy = [t for t in range(1, 26) if state.tick(cpu=0.3 * t, now=t)]             # 0.3 cores for 25 s
    quiet = [t for t in range(26, 40) if state.tick(cpu=7.5, now=t)]
    assert busy == [10, 20] and quiet == [30]


def test_returning_freed_memory_is_safe_to_call_anywhere():
    assert return_freed_memory() in (True, False)


def test_when_the_class_has_left_the_slider_results_and_charts_go():
    from ui.memory import active_sessions

    model = create_model("resnet8", width=0.25)
    data = toy_set(8)
    cached.unstructured("forget-test", "magnitude", "global", (), 0.5, model, data, data)
    cached.figure(("forget-test", "chart"), lambda: None)
    assert ("unstructured", "forget-test", "magnitude", "global", (), 0.5, data.fingerprint(), None) in cached._results
    assert cached.forget() >= model_bytes(model) and len(cached._results) == 0 and len(cached._figures) == 0
    assert cached.forget() == 0                      # nothing left: the watcher does not trim again
    assert active_sessions() is None                 # no Streamlit runtime in a bare test: nothing is dropped
