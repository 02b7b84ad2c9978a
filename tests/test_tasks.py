"""The engine's task registry, run in this process (test_engine.py runs tasks on real Dask workers)."""
import pytest

from compression.data import DataError
from compression.models import create_model
from compression.portable import model_payload, variant_payload, variants_from_result
from compression.prune import prune
from compression.tasks import TASKS, UnknownTask, load_data, run
from compression.variant import Variant, measure_variant

DATA = {"source": "sample", "train_images": 100}


@pytest.fixture(scope="module")
def parent():
    return measure_variant(create_model("resnet8", 0.5), "trained", {"arch": "resnet8"})


def test_data_is_loaded_once_per_process_and_subsets_are_class_balanced():
    first, _ = load_data(DATA)
    again, cached = load_data({"source": "sample", "train_images": 300})
    assert cached and again.eval is first.eval
    assert len(first.train) == 100 and first.train.labels.bincount().tolist() == [10] * 10
    assert len(again.train) == 300 and len(first.eval) == 1000 and first.test is None


def test_unknown_data_and_tasks_are_refused_with_messages(tmp_path):
    with pytest.raises(DataError, match="unknown data source 'imagenet'"):
        load_data({"source": "imagenet"})
    with pytest.raises(DataError, match="no CIFAR-10 folder"):
        load_data({"source": "cifar10", "root": str(tmp_path)})
    with pytest.raises(UnknownTask, match="there is no task 'sing'; the tasks are train, finetune"):
        run("sing", {}, print, lambda: False)


def specs(parent, parent_id):
    p = {**variant_payload(parent), "id": parent_id}
    quick = {"epochs": 0.2, "batch_size": 50, "lr": 0.05}
    return {
        "train": {"arch": "resnet8", "width": 0.5, "config": quick, "name": "mine"},
        "finetune": {"parent": p, "model": model_payload(prune(parent.model, 0.5)), "technique": "pruned",
                     "settings": {"amount": 0.5}, "epochs": 0.2, "name": "pruned + FT"},
        "qat": {"parent": p, "bits": 4, "symmetric": True, "per_channel": True, "epochs": 0.2},
        "distill": {"teacher": p, "start": None, "student_arch": "resnet8", "student_width": 0.5, "config": quick,
                    "T": 4.0, "alpha": 0.9},
        "centroids": {"parent": p, "clusters": 8, "epochs": 0.2},
        "deep_compression": {"parent": p, "sparsity": 0.8, "clusters": 8, "finetune_epochs": 0.2},
        "spiral": {"parent": p, "rounds": 2, "final_sparsity": 0.5, "epochs_per_round": 0.2, "T": 4.0},
        "auto_prune": {"parent": p, "target_sparsity": 0.6, "calib_images": 32, "levels": LEVELS},
        "auto_quant": {"parent": p, "budget_bytes": budget(parent), "criterion": "sqnr"},
    }


LEVELS = [0.0, 0.25, 0.5, 0.75, 0.9]


def budget(parent) -> int:
    """The packed size of the parent at 4 bits in every layer: a budget the auto mode must meet."""
    from compression.auto_prune import packed_size
    from compression.quantize import quantize_weights
    return packed_size(quantize_weights(parent.model, 4))


P = "the job's parent"
EXPECTED = {  # task: (techniques of the variants made, in order; each one's parent: P or the index of another)
    "train": (["trained"], [None]), "finetune": (["pruned"], [P]), "qat": (["QAT"], [P]),
    "distill": (["distilled", "trained"], [None, None]), "centroids": (["shared"], [P]),
    "deep_compression": (["deep-compression"] * 3, [P, 0, 1]), "spiral": (["spiral"] * 4, [P, P, 1, 1]),
    "auto_prune": (["pruned", "pruned"], [P, P]), "auto_quant": (["quantized", "quantized"], [P, P]),
}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_each_task_returns_its_variants_as_payloads(task, parent):
    # A worker numbers the variants it makes v1, v2, … like the app does: here the first one made gets the
    # same id as the parent the job starts from, and the parent links must still say which is which.
    parent_id = f"v{int(Variant('probe', parent.model, 'x').id[1:]) + 1}"
    events = []
    result = run(task, {**specs(parent, parent_id)[task], "data": DATA}, lambda **e: events.append(e),
                 lambda: False)
    assert [p["id"] for p in result["variants"]] == [f"made:{i}" for i in range(len(result["variants"]))]
    made = variants_from_result(result["variants"])
    techniques, parents = EXPECTED[task]
    assert [v.technique for v in made] == techniques
    ids = {None: None, P: parent_id, **{i: v.id for i, v in enumerate(made)}}
    assert [v.parent for v in made] == [ids[p] for p in parents] and parent_id not in {v.id for v in made}
    assert {k: events[0][k] for k in ("phase", "train_images")} == {"phase": "data", "train_images": 100}
    assert all(v.metrics.eval_accuracy is not None for v in made)


def test_the_int8_task_is_registered_and_others_are_tested():
    assert set(TASKS) == set(EXPECTED) | {"int8"}     # int8 compiles for minutes: test_int8.py covers it


def test_the_auto_tasks_meet_their_budgets_and_keep_the_allocation_with_the_variant(parent):
    """What the Auto modes of Prune and Quantize draw after a reload travels in the auto variant's history:
    per-layer settings of auto and uniform (the auto ones meeting the budget) and both accuracies."""
    p = {**variant_payload(parent), "id": "app-id"}
    events = []
    result = run("auto_prune", {"parent": p, "target_sparsity": 0.6, "calib_images": 32, "levels": LEVELS,
                                "data": DATA}, lambda **e: events.append(e), lambda: False)
    auto, uniform = variants_from_result(result["variants"])
    (record,) = auto.history
    n = sum(r["params"] for r in record["layers"])
    zeros = sum(round(r["auto"] * r["params"]) for r in record["layers"])
    assert record["allocation"] == "sparsity" and zeros == round(0.6 * n)           # exactly the target
    assert auto.metrics.sparsity == pytest.approx(zeros / n, abs=1e-9)
    assert uniform.metrics.sparsity == pytest.approx(zeros / n, abs=1e-3)            # each layer rounded alone
    assert all(r["uniform"] == pytest.approx(0.6, abs=0.01) for r in record["layers"])
    assert record["accuracy"]["auto"] == auto.metrics.eval_accuracy
    assert record["accuracy"]["uniform"] == uniform.metrics.eval_accuracy and record["images"] == 1000
    n_layers = len(record["layers"])
    assert any(e.get("step") == e.get("done") == e.get("total_steps") == n_layers for e in events)

    limit = budget(parent)
    result = run("auto_quant", {"parent": p, "budget_bytes": limit, "criterion": "sqnr", "data": DATA},
                 lambda **e: None, lambda: False)
    auto, uniform = variants_from_result(result["variants"])
    (record,) = auto.history
    assert record["allocation"] == "bits" and auto.metrics.bytes_packed == record["packed_bytes"] <= limit
    assert uniform.settings["bits"] == record["uniform_bits"] == 4 and uniform.metrics.bytes_packed <= limit
    assert {r["auto"] for r in record["layers"]} <= set(range(2, 9)) and record["accuracy"]["uniform"] is not None


def test_stopping_an_auto_task_while_it_measures_makes_nothing(parent):
    p = {**variant_payload(parent), "id": "app-id"}
    result = run("auto_prune", {"parent": p, "target_sparsity": 0.5, "calib_images": 32, "data": DATA},
                 lambda **e: None, lambda: True)
    assert result == {"variants": []}
