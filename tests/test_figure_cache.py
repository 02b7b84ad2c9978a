"""ui.cached.figure: a chart is built once per server for its key, shared, and the cache holds at most
its bound in bytes (the figures' JSON), least recently used out first."""
import plotly.graph_objects as go

from compression.model_cache import ByteCache
from ui import cached


def bars(n: int) -> go.Figure:
    return go.Figure(go.Bar(x=list(range(n)), y=list(range(n))))


def test_a_key_is_built_once_and_every_caller_gets_the_same_figure(monkeypatch):
    monkeypatch.setattr(cached, "_figures", ByteCache(2**20, cached._figures.sizeof))
    builds = []
    first = cached.figure(("v1", "pruned", 0.7, "layers"), lambda: builds.append(1) or bars(3))
    again = cached.figure(("v1", "pruned", 0.7, "layers"), lambda: builds.append(1) or bars(3))
    other = cached.figure(("v1", "pruned", 0.8, "layers"), lambda: builds.append(1) or bars(3))
    assert builds == [1, 1] and first is again and other is not first
    assert cached.figure(("v1", "nothing"), lambda: None) is None


def test_the_cache_is_bounded_by_the_bytes_of_its_figures(monkeypatch):
    size = len(bars(50).to_json())
    monkeypatch.setattr(cached, "_figures", ByteCache(2 * size + size // 2, cached._figures.sizeof))
    for i in range(3):
        cached.figure(i, lambda: bars(50))
    assert cached._figures.keys() == [1, 2] and cached._figures.total_bytes == 2 * size
    huge = cached.figure("huge", lambda: bars(5000))           # larger than the whole bound: drawn, not kept
    assert len(huge.data[0].x) == 5000 and "huge" not in cached._figures


def test_computations_take_turns_and_a_nested_one_goes_on():
    import threading
    import time

    from ui import cached

    assert cached.COMPUTE_SLOTS == 1, "the default: one computation at a time for the whole server"
    running, peak, lock = [0], [0], threading.Lock()

    def work():
        with cached.compute_slot():
            with cached.compute_slot():          # a cached function calling another: no deadlock
                with lock:
                    running[0] += 1
                    peak[0] = max(peak[0], running[0])
                time.sleep(0.05)
                with lock:
                    running[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert peak[0] == 1
