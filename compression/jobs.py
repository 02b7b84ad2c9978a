"""Long-running work, as plain functions: the tasks the job engine's workers run (compression/tasks.py)
and the short analyses the app computes beside its pages (accuracy curves, sensitivity).

Each takes `report(**fields)` to publish progress and `stop()` to ask whether to end early, and
returns its result (usually a Variant). They call the library like the CLI does; none knows about
Streamlit.
"""
from __future__ import annotations

from typing import Callable, Iterable

from torch import nn

from .analysis import accuracy_vs_amount, sensitivity
from .data import ImageSet
from .models import create_model
from .schedule import finetune
from .train import TrainConfig, TrainEvent, train
from .variant import Variant, measure_variant
from .weights import copy_model

Report = Callable[..., None]
Stop = Callable[[], bool]


def report_events(events: Iterable[TrainEvent], report: Report, phase: str = "") -> TrainEvent | None:
    last = None
    for last in events:
        report(phase=phase, **last.to_dict())
    return last


def train_model(arch: str, width: float, config: TrainConfig, train_set: ImageSet, eval_set: ImageSet,
                report: Report, stop: Stop, test_set: ImageSet | None = None, name: str | None = None,
                checkpoint: str | None = None) -> Variant:
    """Train a fresh model; returns it as a 'trained' variant (measured on the eval subset).

    checkpoint: a file the run saves itself to at every epoch's end and resumes from when it exists (a
    run the server's restart interrupted carries on); whoever started the run deletes it when done."""
    model = create_model(arch, width)
    last = report_events(train(model, train_set, config, eval_set, stop=stop, checkpoint=checkpoint), report,
                         "train")
    settings = {"arch": arch, "width": width, "epochs": config.epochs, "lr": config.lr,
                "batch_size": config.batch_size, "data": train_set.name, "images": len(train_set)}
    if last is not None and last.step < last.total_steps:
        settings["stopped_at_epoch"] = round(last.epoch, 2)
    report(phase="measure")
    return measure_variant(model, "trained", settings, name=name or f"{arch} trained ({config.epochs:g} ep)",
                           eval_set=eval_set, test_set=test_set, latency=True)


def finetune_variant(parent: Variant, model: nn.Module, technique: str, settings: dict, epochs: float,
                     train_set: ImageSet, eval_set: ImageSet, report: Report, stop: Stop, lr: float = 0.02,
                     name: str | None = None, test_set: ImageSet | None = None, **kw) -> Variant:
    """Fine-tune `model` (a compressed copy of `parent`'s model, e.g. pruned) and return it as a variant."""
    model = copy_model(model)
    report_events(finetune(model, train_set, epochs, eval_set, lr=lr, stop=stop, **kw), report, "finetune")
    report(phase="measure")
    settings = {**settings, "finetune_epochs": epochs, "finetune_lr": lr}
    return measure_variant(model, technique, settings, parent, name=name, eval_set=eval_set, test_set=test_set,
                           latency=True)


def pruning_curve(model: nn.Module, eval_set: ImageSet, method: str, scope: str, exempt: tuple[str, ...],
                  report: Report, stop: Stop, data: ImageSet | None = None,
                  amounts: Iterable[float] = (0, .1, .2, .3, .4, .5, .6, .7, .8, .85, .9, .95, .99)) -> list:
    """Eval accuracy after one-shot pruning at each amount: the accuracy-against-ratio curve."""
    points = []
    for a in amounts:
        if stop():
            break
        points += accuracy_vs_amount(model, eval_set, [a], method, scope, exempt, data)
        report(done=len(points))
    return points


def structured_curve(model: nn.Module, eval_set: ImageSet, criterion: str, report: Report, stop: Stop,
                     calib: ImageSet | None = None,
                     ratios: Iterable[float] = (0, .1, .2, .3, .4, .5, .6, .7, .8, .9)) -> list:
    """Eval accuracy after removing each ratio of filters (no fine-tuning)."""
    from .structured import largest_ratio, prune_filters
    from .train import evaluate

    points = []
    for r in [r for r in ratios if r <= largest_ratio(model)]:
        if stop():
            break
        points.append((r, evaluate(prune_filters(model, r, criterion, calib=calib), eval_set).accuracy))
        report(done=len(points))
    return points


def sensitivity_curves(model: nn.Module, eval_set: ImageSet, report: Report, stop: Stop,
                       method: str = "magnitude") -> dict:
    return sensitivity(model, eval_set, method=method, progress=lambda i, n: report(done=i, total=n), stop=stop)


def distill_vs_plain(student_arch: str, student_width: float, start: Variant | None, teacher: Variant,
                     config: TrainConfig, T: float, alpha: float, train_set: ImageSet, eval_set: ImageSet,
                     report: Report, stop: Stop) -> list[Variant]:
    """Train the same student twice on the same budget, with and without distillation, stepping the two
    runs in turn so that both curves grow live side by side. Returns both variants (KD first)."""
    from .distill import distill

    def fresh() -> nn.Module:
        if start is not None:
            return copy_model(start.model)
        return create_model(student_arch, student_width)

    kd_model, plain_model = fresh(), fresh()
    runs = {"kd": distill(kd_model, teacher.model, train_set, config, T=T, alpha=alpha, test_set=eval_set,
                          stop=stop),
            "plain": train(plain_model, train_set, config, eval_set, stop=stop)}
    while runs:
        for name in list(runs):
            event = next(runs[name], None)
            if event is None:
                del runs[name]
            else:
                report(phase=name, **event.to_dict())
    report(phase="measure")
    label = start.name if start is not None else f"{student_arch} ×{student_width:g}"
    budget = {"epochs": config.epochs, "lr": config.lr, "data": train_set.name}
    kd = measure_variant(kd_model, "distilled", {"teacher": teacher.name, "T": T, "alpha": alpha, **budget},
                         start, name=f"{label} distilled (T={T:g}, α={alpha:g})", eval_set=eval_set, latency=True)
    plain = measure_variant(plain_model, "trained", {"kd": "none", **budget}, start,
                            name=f"{label} without KD (same budget)", eval_set=eval_set, latency=True)
    return [kd, plain]


def centroid_finetune(parent: Variant, k: int, epochs: float, train_set: ImageSet, eval_set: ImageSet,
                      report: Report, stop: Stop, lr: float = 0.005) -> Variant:
    """Share weights with k clusters, then fine-tune only the centroids (Deep Compression)."""
    from .share import bake_shared, cluster_weights, prepare_shared

    model = prepare_shared(cluster_weights(parent.model, k), k)
    report_events(finetune(model, train_set, epochs, eval_set, lr=lr, stop=stop, weight_decay=0.0), report,
                  "finetune")
    report(phase="measure")
    return measure_variant(bake_shared(model), "shared", {"clusters": k, "centroid_epochs": epochs}, parent,
                           name=f"{parent.name.split(' (')[0]} k={k} + centroid FT", eval_set=eval_set, latency=True)


def run_pipeline(steps, report: Report) -> list[Variant]:
    """Drain a pipelines generator: training events and stages go to `report`; returns the variants."""
    from .pipelines import Stage

    variants: list[Variant] = []
    for step in steps:
        if isinstance(step, Stage):
            if step.variant not in variants:
                variants.append(step.variant)
            report(phase="stage", stage=step.name, **{k: v for k, v in step.row().items() if k != "stage"})
        else:
            report(phase="train", **step.to_dict())
    return variants


def qat_variant(parent: Variant, bits: int, symmetric: bool, per_channel: bool, epochs: float,
                train_set: ImageSet, eval_set: ImageSet, report: Report, stop: Stop, a_bits: int | None = None,
                lr: float = 0.01) -> Variant:
    """Quantization-aware training: fine-tune with fake-quantized weights (straight-through estimator),
    then bake the weights onto the grid."""
    from .qat import convert_qat, prepare_qat

    model = prepare_qat(parent.model, bits, symmetric, per_channel, a_bits=a_bits,
                        calib=train_set if a_bits else None)
    report_events(finetune(model, train_set, epochs, eval_set, lr=lr, stop=stop), report, "finetune")
    report(phase="measure")
    settings = {"bits": bits, "symmetric": symmetric, "per_channel": per_channel, "a_bits": a_bits,
                "qat_epochs": epochs}
    return measure_variant(convert_qat(model), "QAT", settings, parent,
                           name=f"{parent.name.split(' (')[0]} QAT w{bits}" + (f"a{a_bits}" if a_bits else ""),
                           eval_set=eval_set, latency=True)


def int8_variant(parent: Variant, calib: ImageSet, eval_set: ImageSet, report: Report, stop: Stop,
                 test_set: ImageSet | None = None) -> Variant:
    """Real int8 (PT2E): compile, measure latency against fp32 in the same run, evaluate, and keep the
    .pt2 file as the variant's extra download. The variant's model holds the same 8-bit per-channel
    weights in float, so it can be packed, inspected and compressed further like any other."""
    from .int8 import int8_export_bytes, to_int8
    from .metrics import int8_speedup, measure
    from .quantize import quantize_weights
    from .train import evaluate

    report(phase="int8", step=1, total_steps=5, message="calibrating and converting")
    int8 = to_int8(parent.model, calib)
    report(phase="int8", step=2, total_steps=5, message="compiling and timing at batch 256")
    timing = int8_speedup(parent.model, int8, batch_size=256)
    report(phase="int8", step=3, total_steps=5, message="evaluating")
    accuracy = evaluate(int8, eval_set, batch_size=250).accuracy
    test_accuracy = evaluate(int8, test_set, batch_size=250).accuracy if test_set is not None else None
    report(phase="int8", step=4, total_steps=5, message="timing at batch 1")
    b1 = int8_speedup(parent.model, int8, batch_size=1, repeats=20)
    blob = int8_export_bytes(int8)
    weights = quantize_weights(parent.model, 8, symmetric=True, per_channel=True)
    metrics = measure(weights, reference_bytes=parent.metrics.reference_bytes or None)
    metrics.eval_accuracy, metrics.test_accuracy = accuracy, test_accuracy
    metrics.latency_b256_ms, metrics.latency_b1_ms = timing["int8_ms"], b1["int8_ms"]
    settings = {"engine": "PT2E X86Inductor", "int8_file_bytes": len(blob),
                "speedup_b256": round(timing["speedup"], 2), "fp32_b256_ms": round(timing["fp32_ms"], 1),
                "speedup_b1": round(b1["speedup"], 2)}
    report(phase="int8", step=5, total_steps=5, message="done")
    return Variant(f"{parent.name.split(' (')[0]} int8 (real)", weights, "int8", settings, parent.id, metrics,
                   artifacts={"int8": blob})


def bits_curve(model: nn.Module, eval_set: ImageSet, symmetric: bool, per_channel: bool, a_bits: bool,
               calib: ImageSet, report: Report, stop: Stop) -> list:
    """Eval accuracy at 1…8 weight bits (activations at the same bits when `a_bits`)."""
    from .activations import quantize_model
    from .train import evaluate

    points = []
    for bits in range(1, 9):
        if stop():
            break
        a = max(2, bits) if a_bits else None
        q = quantize_model(model, bits, a, calib if a else None, symmetric=symmetric, per_channel=per_channel,
                           batches=2)
        points.append((bits, evaluate(q, eval_set).accuracy))
        report(done=len(points))
    return points
