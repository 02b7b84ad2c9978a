"""Slider grids on disk (compression/grid.py) and their background filling (ui/precompute.py): the
accuracy a page shows at a measured position is the one measured there, and a restart finds it."""
import json

from compression.data import eval_subset, load_sample
from compression.grid import AccuracyGrid, lesson_order, open_grid
from compression.models import create_model
from compression.train import evaluate
from compression.variant import Variant
from ui import cached, precompute


def test_a_grid_survives_a_restart_and_bad_files_read_as_empty(tmp_path):
    grid = AccuracyGrid(tmp_path / "g.json")
    position = ("unstructured", "magnitude", "global", (), 0.7)
    grid.put(position, 0.812)
    again = AccuracyGrid(tmp_path / "g.json")              # what a restarted server reads
    assert again.get(position) == 0.812 and again.get(("unstructured", "magnitude", "global", (), 0.71)) is None
    for text in ("{\"a\": 0.5", "[1, 2]", "{\"a\": \"x\"}", ""):
        (tmp_path / "bad.json").write_text(text)
        assert len(AccuracyGrid(tmp_path / "bad.json")) == 0
    assert not list(tmp_path.glob(".grid-*"))                 # no temporary file left behind


def test_lesson_order_puts_round_ratios_first():
    order = lesson_order(list(range(100)))
    assert order[:3] == [50, 40, 60] and set(order[:10]) == set(range(0, 100, 10))
    assert set(order[10:20]) == set(range(5, 100, 10)) and sorted(order) == list(range(100))


def test_the_page_shows_the_accuracy_measured_in_the_grid():
    model = create_model("resnet8", width=0.5)
    eval_set = eval_subset(load_sample(splits=("test",)))
    shipped = {"shipped-test-model": Variant("toy", model, "pretrained")}
    which = [("unstructured", "magnitude", "global", (), 0.7), ("quantized", 4, True, True, None, "minmax")]
    assert precompute.fill(shipped, eval_set, which, pause_s=0) == 2
    assert precompute.fill(shipped, eval_set, which, pause_s=0) == 0     # measured once, kept
    grid = open_grid(cached.grid_folder(), "shipped-test-model", eval_set.fingerprint())
    on_disk = json.loads(grid.path.read_text())
    assert len(on_disk) == 2
    pruned, acc = cached.unstructured("shipped-test-model", "magnitude", "global", (), 0.7, model, eval_set, eval_set)
    assert acc == grid.get(which[0]) == evaluate(pruned, eval_set).accuracy     # the same figure either way
    # The page reads the grid, not a fresh evaluation: a value only the grid holds comes through.
    grid.put(("unstructured", "magnitude", "global", (), 0.3), 0.123)
    _, acc = cached.unstructured("shipped-test-model", "magnitude", "global", (), 0.3, model, eval_set, eval_set)
    assert acc == 0.123
    q_model, acc = cached.quantized("shipped-test-model", 4, True, True, None, "minmax", model, eval_set, eval_set)
    assert acc == grid.get(which[1]) == evaluate(q_model, eval_set).accuracy
    # A variant without a grid is evaluated, and gets no grid.
    _, acc = cached.unstructured("someone-else", "magnitude", "global", (), 0.3, model, eval_set, eval_set)
    assert acc != 0.123 and not (cached.grid_folder() / f"someone-else-{eval_set.fingerprint()}.json").exists()


def test_positions_cover_every_ratio_and_bit_width_of_the_default_settings():
    ps = precompute.positions()
    ratios = sorted(p[4] for p in ps if p[0] == "unstructured")
    assert ratios == [p / 100 for p in range(100)]
    assert sorted(p[1] for p in ps if p[0] == "quantized") == list(range(1, 9))
