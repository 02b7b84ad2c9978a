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


def auto_prune_variants(parent: Variant, config, calib: ImageSet, eval_set: ImageSet, report: Report,
                        stop: Stop, sensitivity=None) -> tuple[list[Variant], object]:
    """Prune mode "Auto": auto_prune.auto_prune (config an AutoPruneConfig; `sensitivity` from an earlier
    run on the same variant skips the measuring), and the uniform model at the same overall sparsity
    for comparison. Returns ([auto variant, uniform variant], the PruneAllocation: its rows() are the
    bar chart, its curves the sensitivity). The auto variant's history holds the allocation as plain
    data (`allocation_record`), so a page shows it again after a reload."""
    from .auto_prune import auto_prune
    from .prune import prune

    model, allocation = auto_prune(parent.model, config, calib, lambda i, n: report(done=i, total=n), stop,
                                   sensitivity)
    report(phase="measure")
    label = parent.name.split(" (")[0]
    settings = {"allocation": "auto", "target": allocation.target, "method": config.method, "rule": allocation.rule}
    auto = measure_variant(model, "pruned", settings, parent, name=f"{label} auto {allocation.sparsity:.0%}",
                           eval_set=eval_set, latency=True)
    uniform = measure_variant(prune(parent.model, allocation.sparsity, config.method, "layer", exempt=config.exempt,
                                    data=calib), "pruned",
                              {"method": config.method, "scope": "layer", "amount": round(allocation.sparsity, 4)},
                              parent, name=f"{label} uniform {allocation.sparsity:.0%}", eval_set=eval_set, latency=True)
    auto.history = [allocation_record("sparsity", parent, auto, uniform, eval_set, layers=allocation.rows(),
                                      target=allocation.target, rule=allocation.rule, sparsity=allocation.sparsity,
                                      calib_images=config.calib_images)]
    return [auto, uniform], allocation


def auto_quantize_variants(parent: Variant, config, calib: ImageSet, eval_set: ImageSet, report: Report,
                           stop: Stop, sensitivity=None) -> tuple[list[Variant], object]:
    """Quantize mode "Auto": auto_quant.auto_quantize (config an AutoQuantConfig), and the widest uniform
    width that fits the same budget. Returns ([auto variant, uniform variant if one fits], the
    BitAllocation: its rows() are the bar chart); the auto variant's history holds the allocation
    (`allocation_record`)."""
    from .auto_quant import auto_quantize
    from .quantize import quantize_weights

    model, allocation = auto_quantize(parent.model, config, calib, lambda i, n: report(done=i, total=n), stop,
                                      sensitivity)
    report(phase="measure")
    label = parent.name.split(" (")[0]
    settings = {"bits": "auto", "mean_bits": round(allocation.mean_bits, 2), "budget_bytes": config.budget_bytes,
                "criterion": config.criterion, "rule": allocation.rule}
    variants = [measure_variant(model, "quantized", settings, parent, name=f"{label} auto {allocation.mean_bits:.1f}-bit",
                                eval_set=eval_set, latency=True)]
    if allocation.uniform_bits is not None:
        uniform = quantize_weights(parent.model, allocation.uniform_bits, config.symmetric, config.per_channel)
        variants.append(measure_variant(uniform, "quantized", {"bits": allocation.uniform_bits}, parent,
                                        name=f"{label} uniform w{allocation.uniform_bits}", eval_set=eval_set,
                                        latency=True))
    variants[0].history = [allocation_record(
        "bits", parent, variants[0], variants[1] if len(variants) > 1 else None, eval_set, layers=allocation.rows(),
        budget_bytes=config.budget_bytes, packed_bytes=allocation.packed_bytes, uniform_bits=allocation.uniform_bits,
        uniform_bytes=allocation.uniform_bytes, mean_bits=allocation.mean_bits, rule=allocation.rule,
        criterion=config.criterion, calib_images=config.calib_images)]
    return variants, allocation


def allocation_record(kind: str, parent: Variant, auto: Variant, uniform: Variant | None, eval_set: ImageSet,
                      **fields) -> dict:
    """What the Auto mode of a page draws, as plain data kept in the auto variant's history: {"allocation":
    kind ("sparsity" or "bits"), "layers": one row per layer (auto and uniform setting), "accuracy": {"auto",
    "uniform" (None when no uniform model fits), "parent"} on `eval_set`, "images", and the allocation's
    figures (target, rule, sizes, ...)}."""
    from .train import evaluate

    before = parent.metrics.eval_accuracy
    if before is None:
        before = evaluate(parent.model, eval_set).accuracy
    return {"allocation": kind, **fields, "images": len(eval_set),
            "accuracy": {"auto": auto.metrics.eval_accuracy, "parent": before,
                         "uniform": None if uniform is None else uniform.metrics.eval_accuracy}}


ONNX_FORMATS = ("fp32", "int8")


def onnx_file(model: nn.Module, fmt: str, calib: ImageSet, metadata: dict | None = None) -> bytes:
    """The .onnx file Compare & Download offers: "fp32" (the model as it computes) or "int8" (QDQ,
    calibrated on the first 4 × 128 images of `calib`, as int8.to_int8)."""
    from .onnx_export import export_fp32, export_int8

    if fmt not in ONNX_FORMATS:
        raise ValueError(f"ONNX format must be one of {ONNX_FORMATS}, got {fmt!r}")
    return export_fp32(model, metadata) if fmt == "fp32" else export_int8(model, calib, metadata=metadata)


def check_onnx_files(parent: Variant, eval_set: ImageSet, calib: ImageSet, report: Report, stop: Stop,
               keep: Callable[[str, bytes], None] | None = None) -> dict:
    """Compare & Download's ONNX check (a short analysis): both .onnx files of `parent` (onnx_file), each
    run in ONNX Runtime on `eval_set` against the model in PyTorch: {fmt: {"bytes": file size,
    "onnx": accuracy, "pytorch": accuracy, "agreement": same top-1, "max_abs_diff", "latency_ms": {"batch 1":
    {"onnx": ms, "pytorch": ms}, "batch 256": …}}} (CPU, timed alternately: compare within a row).
    `keep(fmt, data)` receives each file (the page keeps them for its downloads)."""
    from .export import variant_metadata
    from .onnx_export import OnnxModel, exportable, verify
    from .weights import plain_model

    out = {}
    for i, fmt in enumerate(ONNX_FORMATS):
        if stop():
            break
        report(done=i, total=len(ONNX_FORMATS), message=f"exporting {fmt}")
        data = onnx_file(parent.model, fmt, calib, variant_metadata(parent))
        reference = exportable(parent.model) if fmt == "fp32" else plain_model(parent.model).eval()
        result = verify(OnnxModel(data), {"pytorch": reference}, eval_set, repeats=3)
        out[fmt] = {"bytes": len(data), "onnx": result["onnx"]["accuracy"], "images": result["images"],
                    **{k: result["pytorch"][k] for k in ("agreement", "max_abs_diff")},
                    "pytorch": result["pytorch"]["accuracy"], "latency_ms": result["latency_ms"]}
        if keep is not None:
            keep(fmt, data)
    report(done=len(out), total=len(ONNX_FORMATS))
    return out
