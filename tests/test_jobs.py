"""Every task of compression/jobs.py called directly, as the app's worker calls it, on a tiny model and toy
data: each result is checked against the options it was given, so a task that ignored one would fail."""
import pytest
import torch
from torch.nn.utils import parametrize

from compression import jobs
from compression.activations import activation_settings, quantize_model
from compression.analysis import sensitivity
from compression.pipelines import Stage
from compression.prune import FIRST_AND_LAST, prunable_layers, prune, sparsity
from compression.share import cluster_weights
from compression.structured import prune_filters
from compression.train import TrainConfig, TrainEvent, evaluate
from compression.variant import measure_variant
from helpers import confident_model, on_grid, toy_set


class Recorder:
    """A job's report(): keeps every event."""

    def __init__(self):
        self.events = []

    def __call__(self, **event):
        self.events.append(event)

    def phases(self) -> set:
        return {e.get("phase") for e in self.events}


def never() -> bool:
    return False


def stop_after(n: int):
    """A stop() that says yes from its (n + 1)-th call on."""
    calls = iter(range(10 ** 6))
    return lambda: next(calls) >= n


@pytest.fixture(scope="module")
def data():
    return toy_set(128), toy_set(64, seed=3)


@pytest.fixture(scope="module")
def parent(data):
    return measure_variant(confident_model(), "trained", {"arch": "resnet8"}, name="tiny (trained)", eval_set=data[1])


def weights(model) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach() for name, m in prunable_layers(model).items()}


def test_report_events_reports_every_event_with_its_phase_and_returns_the_last():
    events = [TrainEvent("step", i, 3, i / 3, 1.0, 0.5, 0.1, 100.0, 1.0) for i in (1, 2, 3)]
    report = Recorder()
    assert jobs.report_events(iter(events), report, "finetune") is events[-1]
    assert [e["step"] for e in report.events] == [1, 2, 3] and report.phases() == {"finetune"}


def test_train_model_trains_the_architecture_asked_for_and_measures_it(data):
    report = Recorder()
    config = TrainConfig(epochs=1, batch_size=32, lr=0.05, augment=False)
    v = jobs.train_model("resnet8", 0.5, config, data[0], data[1], report, never, test_set=data[1], name="mine")
    assert v.name == "mine" and v.technique == "trained" and v.model.width == 0.5
    assert v.model.layer1[0].conv1.out_channels == 8
    assert v.settings == {"arch": "resnet8", "width": 0.5, "epochs": 1, "lr": 0.05, "batch_size": 32,
                          "data": "toy", "images": 128}
    assert report.phases() == {"train", "measure"} and report.events[-2]["step"] == 4
    assert v.metrics.test_accuracy == evaluate(v.model, data[1]).accuracy and v.metrics.latency_b1_ms > 0


def test_train_model_honours_stop_and_says_where_it_stopped(data):
    config = TrainConfig(epochs=2, batch_size=32, augment=False)
    v = jobs.train_model("resnet8", 0.25, config, data[0], data[1], Recorder(), stop_after(2))
    assert v.settings["stopped_at_epoch"] == 0.5           # 2 of 4 steps per epoch
    assert v.name == "resnet8 trained (2 ep)"


def test_finetune_variant_keeps_pruned_zeros_and_the_parents_model(parent, data):
    pruned = prune(parent.model, 0.7, exempt=FIRST_AND_LAST)
    before = {k: w.clone() for k, w in weights(pruned).items()}
    report = Recorder()
    v = jobs.finetune_variant(parent, pruned, "pruned", {"amount": 0.7}, 0.5, data[0], data[1], report, never,
                              lr=0.05, name="ft", batch_size=32)
    assert v.name == "ft" and v.parent == parent.id
    assert v.settings == {"amount": 0.7, "finetune_epochs": 0.5, "finetune_lr": 0.05}
    after = weights(v.model)
    assert sparsity(v.model) == sparsity(pruned) and all(torch.equal(after[k] == 0, before[k] == 0) for k in after)
    assert any(not torch.equal(after[k], before[k]) for k in after), "it was trained"
    assert all(torch.equal(w, before[k]) for k, w in weights(pruned).items()), "the given model is untouched"
    assert report.events[-2]["total_steps"] == 2, "0.5 epoch of 128 images at batch 32"


def test_pruning_curve_gives_a_point_per_amount_pruned_as_asked(parent, data):
    model, ev = parent.model, data[1]
    points = jobs.pruning_curve(model, ev, "magnitude", "layer", FIRST_AND_LAST, Recorder(), never,
                                amounts=(0.3, 0.9))
    expected = [evaluate(prune(model, a, "magnitude", "layer", exempt=FIRST_AND_LAST), ev).accuracy for a in (0.3, 0.9)]
    assert points == list(zip((0.3, 0.9), expected))
    random = jobs.pruning_curve(model, ev, "random", "global", (), Recorder(), never, amounts=(0.2,))
    assert random == [(0.2, evaluate(prune(model, 0.2, "random"), ev).accuracy)]
    assert random[0][1] != evaluate(prune(model, 0.2, "magnitude"), ev).accuracy, "the method matters here"
    assert len(jobs.pruning_curve(model, ev, "magnitude", "global", (), Recorder(), stop_after(1))) == 1


def test_structured_curve_prunes_filters_by_the_criterion_given(parent, data):
    model, ev = parent.model, data[1]
    report = Recorder()
    points = jobs.structured_curve(model, ev, "bn_scale", report, never, ratios=(0.25, 0.5, 0.9))
    assert [r for r, _ in points] == [0.25, 0.5], "0.9 would empty the narrowest layer (4 channels)"
    assert points[1][1] == evaluate(prune_filters(model, 0.5, "bn_scale"), ev).accuracy
    assert points[1][1] != evaluate(prune_filters(model, 0.5, "random"), ev).accuracy, "the criterion matters here"
    assert [e["done"] for e in report.events] == [1, 2]


def test_sensitivity_curves_report_progress_and_use_the_method_given(parent, data):
    model, ev = parent.model, data[1]
    report = Recorder()
    curves = jobs.sensitivity_curves(model, ev, report, never, method="random")
    assert set(curves) == set(prunable_layers(model))
    assert curves == sensitivity(model, ev, method="random") != sensitivity(model, ev, method="magnitude")
    assert report.events[-1] == {"done": len(curves), "total": len(curves)}
    assert len(jobs.sensitivity_curves(model, ev, Recorder(), stop_after(1))) == 1


def test_distill_vs_plain_trains_two_students_on_one_budget(parent, data):
    config = TrainConfig(epochs=0.5, batch_size=32, lr=0.05, augment=False)
    report = Recorder()
    kd, plain = jobs.distill_vs_plain("resnet8", 0.5, None, parent, config, 2.0, 0.7, data[0], data[1], report, never)
    assert kd.technique == "distilled" and plain.technique == "trained"
    assert kd.settings == {"teacher": parent.name, "T": 2.0, "alpha": 0.7, "epochs": 0.5, "lr": 0.05, "data": "toy"}
    assert plain.settings == {"kd": "none", "epochs": 0.5, "lr": 0.05, "data": "toy"}
    assert kd.model.width == plain.model.width == 0.5 and kd.model.layer1[0].conv1.out_channels == 8
    assert {"kd", "plain"} <= report.phases()
    assert not torch.equal(kd.model.fc.weight, plain.model.fc.weight), "the teacher changed what the student learnt"
    start = jobs.distill_vs_plain("resnet8", 0.5, parent, parent, config, 2.0, 0.7, data[0], data[1], Recorder(),
                                  never)
    assert start[0].parent == parent.id and start[0].model.width == 0.25, "starts from the given variant's model"


def test_centroid_finetune_keeps_k_values_per_layer_and_moves_them(parent, data):
    report = Recorder()
    v = jobs.centroid_finetune(parent, 4, 0.5, data[0], data[1], report, never, lr=0.05)
    assert v.settings == {"clusters": 4, "centroid_epochs": 0.5} and v.parent == parent.id
    trained, kmeans = weights(v.model), weights(cluster_weights(parent.model, 4))
    assert all(torch.unique(w[w != 0]).numel() <= 4 for w in trained.values())
    assert any(not torch.equal(trained[k], kmeans[k]) for k in kmeans), "the centroids moved"
    assert "finetune" in report.phases()


@pytest.mark.parametrize("per_channel,a_bits", [(True, None), (False, 4)])
def test_qat_variant_returns_a_plain_model_on_the_grid(parent, data, per_channel, a_bits):
    v = jobs.qat_variant(parent, 3, True, per_channel, 0.5, data[0], data[1], Recorder(), never, a_bits=a_bits,
                         lr=0.05)
    assert v.technique == "QAT" and v.settings == {"bits": 3, "symmetric": True, "per_channel": per_channel,
                                                   "a_bits": a_bits, "qat_epochs": 0.5}
    assert not any(parametrize.is_parametrized(m) for m in v.model.modules()), "a plain model, no QAT machinery"
    assert all(on_grid(w, 3, per_channel) for w in weights(v.model).values())
    settings = activation_settings(v.model)
    assert (settings == {}) == (a_bits is None)
    assert all(s["bits"] == a_bits for s in settings.values())


@pytest.mark.slow
def test_int8_variant_reports_the_speedup_it_measured(parent, data):
    report = Recorder()
    v = jobs.int8_variant(parent, data[0], data[1], report, never)
    s = v.settings
    assert v.technique == "int8" and len(v.artifacts["int8"]) == s["int8_file_bytes"]
    int8_ms = v.metrics.latency_b256_ms     # fp32_b256_ms is rounded to 0.1 ms, the speedup to 0.01
    assert abs(s["speedup_b256"] - s["fp32_b256_ms"] / int8_ms) <= 0.05 / int8_ms + 0.005 + 1e-9
    assert v.metrics.latency_b1_ms > 0 and s["speedup_b1"] > 0
    assert all(on_grid(w, 8, per_channel=True) for w in weights(v.model).values())
    assert [e["step"] for e in report.events] == [1, 2, 3, 4, 5]


def test_bits_curve_quantizes_at_every_bit_width_as_asked(parent, data):
    model, (calib, ev) = parent.model, data
    points = jobs.bits_curve(model, ev, False, False, True, calib, Recorder(), never)
    assert [b for b, _ in points] == list(range(1, 9))
    for bits in (1, 4):
        q = quantize_model(model, bits, max(2, bits), calib, symmetric=False, per_channel=False, batches=2)
        assert points[bits - 1][1] == evaluate(q, ev).accuracy
    assert len(jobs.bits_curve(model, ev, True, True, False, calib, Recorder(), stop_after(2))) == 2


def test_run_pipeline_reports_every_step_and_returns_each_variant_once(parent, data):
    a = measure_variant(prune(parent.model, 0.5), "pruned", {}, parent, name="a")
    b = measure_variant(prune(parent.model, 0.8), "pruned", {}, a, name="b")
    event = TrainEvent("epoch", 1, 1, 1.0, 1.0, 0.5, 0.1, 100.0, 0.0)
    report = Recorder()
    variants = jobs.run_pipeline(iter([Stage("one", a), event, Stage("two", b, 123), Stage("three", b)]), report)
    assert variants == [a, b]
    assert [e["phase"] for e in report.events] == ["stage", "train", "stage", "stage"]
    assert [e.get("stage") for e in report.events] == ["one", None, "two", "three"]
    assert report.events[2]["bytes"] == 123
