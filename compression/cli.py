"""Command line: `python -m compression VERB ...`. Every verb calls the library; none adds maths."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import data as D
from .files import ModelFileError, load_model, save_model, sha256_file
from .metrics import keep_freed_memory
from .models import ARCHS, create_model
from .train import CheckpointError, TrainConfig, evaluate, hardware_name, pick_device, train


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def load_splits(args) -> tuple[D.ImageSet, D.ImageSet]:
    if getattr(args, "sample", False):
        return D.load_sample()
    return D.load_cifar10(args.data, "train"), D.load_cifar10(args.data, "test")


def cmd_train(args) -> int:
    train_set, test_set = load_splits(args)
    if args.limit:
        train_set = train_set.subset(slice(0, args.limit))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, label_smoothing=args.label_smoothing,
                         schedule=args.schedule, seed=args.seed, device=args.device, cutout=args.cutout,
                         warmup=args.warmup, swa=args.swa)
    loss_fn = None
    if args.teacher:                   # distil from a trained model while training (e.g. born-again networks)
        from .distill import MeanLogits, distillation_loss_fn
        teachers = [load_model(path)[0] for path in args.teacher]
        names, hashes = [Path(p).name for p in args.teacher], [sha256_file(p) for p in args.teacher]
        if len(teachers) == 1:         # one teacher keeps the card (and checkpoint) format of single names
            teacher, names, hashes = teachers[0], names[0], hashes[0]
        else:
            teacher = MeanLogits(teachers)
        config.distill = {"teacher": names, "teacher_sha256": hashes, "T": args.temperature, "alpha": args.alpha}
        loss_fn = distillation_loss_fn(teacher, args.temperature, args.alpha, config.label_smoothing)
    torch.manual_seed(config.seed)
    previous, width = None, args.width
    if args.init:                      # continue from a saved model (a second training phase)
        model, meta = load_model(args.init)
        width = float(meta.get("width", width))
        card = Path(args.init).with_suffix(".json")
        previous = json.loads(card.read_text()) if card.exists() else {"weights": Path(args.init).name}
        previous["sha256"] = sha256_file(args.init)
        if model.arch != args.arch:
            raise ModelFileError(f"{args.init} holds a {model.arch}, not a {args.arch}")
    else:
        model = create_model(args.arch, args.width)
    log = open(args.log, "a") if args.log else None
    last = None
    for event in train(model, train_set, config, test_set, loss_fn=loss_fn, events_every=50,
                       checkpoint=args.checkpoint):
        last = event
        line = (f"[{event.kind}] step {event.step}/{event.total_steps} epoch {event.epoch:.2f} "
                f"loss {event.loss:.4f} train {event.train_acc:.4f} lr {event.lr:.4f} "
                f"{event.images_per_s:.0f} img/s eta {event.eta_s/60:.1f} min"
                + (f" test {event.test_acc:.4f}" if event.test_acc is not None else ""))
        if not args.json:
            print(line, flush=True)
        if log:
            log.write(line + "\n")
            log.flush()
    model = model.cpu().to(memory_format=torch.contiguous_format)
    result = evaluate(model, test_set)
    out = save_model(model, args.out)
    card = {
        "arch": args.arch, "width": width, "weights": out.name,
        "recipe": {**config.to_dict(), "optimizer": "SGD (Nesterov)", "augmentation": "pad-4 random crop + flip",
                   "train_images": len(train_set)},
        "epochs": args.epochs + (previous or {}).get("epochs", 0), "seed": args.seed,
        "training_time_s": round(last.elapsed_s + (previous or {}).get("training_time_s", 0), 1),
        "hardware": hardware_name(pick_device(args.device)),
        "torch": torch.__version__,
        "test_set": test_set.name, "test_images": result.images, "test_accuracy": round(result.accuracy, 4),
        "sha256": sha256_file(out),
        "trained_on": time.strftime("%Y-%m-%d"),
    }
    if previous:
        card["recipe"]["phase"] = previous.get("recipe", {}).get("phase", 1) + 1
        card["phase_epochs"] = args.epochs
        card["previous_phase"] = {k: previous[k] for k in ("recipe", "epochs", "phase_epochs", "training_time_s",
                                                           "hardware", "test_accuracy", "sha256", "trained_on",
                                                           "previous_phase") if k in previous}
    Path(out).with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    if args.json:
        _print_json(card)
    else:
        print(f"saved {out} (test accuracy {result.accuracy:.4f})")
    return 0


def cmd_download(args) -> int:
    root = D.resolve_root(args.data)
    if D.has_cifar10(root) and not args.force:
        print(f"CIFAR-10 is already in {D.batches_dir(root)}")
        return 0

    def progress(done: int, total: int) -> None:
        if total:
            print(f"\r{done / 1e6:6.1f} of {total / 1e6:.1f} MB", end="", file=sys.stderr, flush=True)

    folder = D.download_cifar10(root, progress)
    print(f"\nunpacked into {folder}")
    return 0


def cmd_evaluate(args) -> int:
    model, meta = load_model(args.model, args.arch)
    if args.sample:
        _, test_set = D.load_sample()
    else:
        test_set = D.load_cifar10(args.data, "test")
    result = evaluate(model, test_set)
    if args.json:
        _print_json({"model": str(args.model), "arch": meta.get("arch"), "data": test_set.name,
                     **result.to_dict(), "classes": list(D.CLASSES)})
    else:
        print(f"{args.model}: accuracy {result.accuracy:.4f} on {result.images} images ({test_set.name})")
        for name, acc in zip(D.CLASSES, result.per_class):
            print(f"  {name:>10}: {acc:.3f}")
    return 0


def cmd_info(args) -> int:
    from .metrics import measure

    model, meta = load_model(args.model, args.arch)
    m = measure(model)
    info = {"model": str(args.model), "arch": meta.get("arch"), "width": float(meta.get("width", 1.0)),
            "size_bytes": Path(args.model).stat().st_size, **m.to_dict(with_layers=args.layers)}
    if args.json:
        _print_json(info)
    else:
        for key, value in info.items():
            if key != "layers":
                print(f"{key:>18}: {value}")
    return 0


# --- compression verbs ---------------------------------------------------------------------------------

class Data:
    """The data a verb needs, loaded once: eval subset (bundled), training and test sets (full CIFAR-10
    when --data / CIFAR10_ROOT has it, else the bundled sample, said on stderr)."""

    def __init__(self, args):
        self.args = args
        self._splits = None

    @property
    def eval(self) -> D.ImageSet:
        return D.eval_subset(D.load_sample()[1])

    def splits(self) -> tuple[D.ImageSet, D.ImageSet]:
        if self._splits is None:
            if not getattr(self.args, "sample", False) and D.has_cifar10(self.args.data):
                self._splits = D.load_cifar10(self.args.data, "train"), D.load_cifar10(self.args.data, "test")
            else:
                print("note: full CIFAR-10 not found (--data / CIFAR10_ROOT); using the bundled sample",
                      file=sys.stderr)
                self._splits = D.load_sample()
        return self._splits

    @property
    def train(self) -> D.ImageSet:
        return self.splits()[0]

    @property
    def test(self) -> D.ImageSet | None:
        if getattr(self.args, "full_test", False):
            return self.splits()[1]
        return None


def load_variant(path: str, data: Data, arch: str | None = None):
    from .variant import measure_variant

    model, meta = load_model(path, arch)
    return measure_variant(model, meta.get("technique") or "loaded", {"file": Path(path).name},
                           name=meta.get("name") or Path(path).stem, eval_set=data.eval)


def finish(args, variant, data: Data, extra: dict | None = None) -> int:
    """Measure a new variant fully, save it (packed or safetensors by extension) and print its metrics
    (with `extra` fields, e.g. an automatic allocation, in the JSON)."""
    from .export import packed_bytes, safetensors_bytes
    from .metrics import measure

    variant.metrics = measure(variant.model, reference_bytes=variant.metrics.reference_bytes or None,
                              eval_set=data.eval, test_set=data.test, latency=args.latency)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(packed_bytes(variant) if out.suffix == ".cmpk" else safetensors_bytes(variant))
    result = {"name": variant.name, "technique": variant.technique, "settings": variant.settings,
              "recipe": variant.recipe, "out": args.out, **variant.metrics.to_dict(), **(extra or {})}
    if args.json:
        _print_json(result)
    else:
        m = variant.metrics
        print(f"{variant.recipe}\n  eval accuracy {m.eval_accuracy:.4f}"
              + (f", test accuracy {m.test_accuracy:.4f}" if m.test_accuracy is not None else "")
              + f"\n  sparsity {m.sparsity:.4f}, {m.nonzero_params:,} nonzero of {m.params:,} parameters, "
                f"{m.macs / 1e6:.2f} M MACs\n  {m.bytes_fp32:,} B fp32, {m.bytes_gzip:,} B gzip, "
                f"{m.bytes_packed:,} B packed ({m.compression_ratio:.1f}x)"
              + (f"\n  saved {args.out}" if args.out else ""))
    return 0


def run_quietly(events, args) -> None:
    for event in events:
        if getattr(event, "kind", "") == "epoch" and not args.json:
            acc = f" eval {event.test_acc:.4f}" if event.test_acc is not None else ""
            print(f"  epoch {event.epoch:.2f} loss {event.loss:.4f}{acc}", file=sys.stderr, flush=True)


def cmd_prune(args) -> int:
    from .variant import measure_variant

    data = Data(args)
    base = load_variant(args.model, data, args.arch)
    if args.structured:
        from .structured import prune_filters, prune_to_macs
        if args.target_macs:
            model = prune_to_macs(base.model, args.target_macs, args.criterion, calib=data.train,
                                  round_to=args.round_to)
        else:
            model = prune_filters(base.model, args.amount, args.criterion, calib=data.train, round_to=args.round_to)
        technique, settings = "filter-pruned", {"criterion": args.criterion, "ratio": args.amount,
                                                "target_macs": args.target_macs, "round_to": args.round_to}
    elif args.auto:
        return cmd_prune_auto(args, base, data)
    else:
        from .prune import FIRST_AND_LAST, prune
        exempt = FIRST_AND_LAST if args.keep_first_last else ()
        model = prune(base.model, args.amount, args.method, args.scope, exempt=exempt, data=data.train)
        technique, settings = "pruned", {"method": args.method, "scope": args.scope, "amount": args.amount}
    if args.finetune_epochs:
        from .schedule import finetune
        run_quietly(finetune(model, data.train, args.finetune_epochs, data.eval, lr=args.lr), args)
        settings["finetune_epochs"] = args.finetune_epochs
    return finish(args, measure_variant(model, technique, settings, base, name=f"{base.name} {technique}"), data)


def calibration_images(data: Data, n: int) -> D.ImageSet:
    """The last `n` training images: where automatic modes measure sensitivity (never test images)."""
    train = data.train
    return train.subset(slice(max(0, len(train) - n), len(train)), "calibration")


def sensitivity_progress(done: int, total: int) -> None:
    print(f"  sensitivity: layer {done}/{total}", file=sys.stderr, flush=True)


def print_allocation(rows: list[dict], columns: tuple[str, ...], fmt: str) -> None:
    """The per-layer allocation as a small table on stderr (stdout keeps the variant's summary)."""
    print(f"{'layer':>22} {'weights':>8} " + " ".join(f"{c:>8}" for c in columns), file=sys.stderr)
    for r in rows:
        cells = " ".join(f"{'—':>8}" if r[c] is None else f"{r[c]:>8{fmt}}" for c in columns)
        print(f"{r['layer']:>22} {r['params']:>8,} {cells}", file=sys.stderr)


def cmd_prune_auto(args, base, data: Data) -> int:
    """prune --auto: per-layer sparsities chosen from sensitivity curves (compression.auto_prune)."""
    from .auto_prune import AutoPruneConfig, auto_prune
    from .prune import FIRST_AND_LAST
    from .variant import measure_variant

    try:
        config = AutoPruneConfig(target_sparsity=None if args.budget_kib else args.amount,
                                 target_bytes=round(args.budget_kib * 1024) if args.budget_kib else None,
                                 method=args.method, exempt=FIRST_AND_LAST if args.keep_first_last else (),
                                 calib_images=args.calib_images)
        model, allocation = auto_prune(base.model, config, calibration_images(data, args.calib_images),
                                       None if args.json else sensitivity_progress)
    except ValueError as exc:        # a budget the model cannot meet, or a setting out of range
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print_allocation(allocation.rows(), ("auto", "uniform", "global"), ".3f")
    if args.finetune_epochs:
        from .schedule import finetune
        run_quietly(finetune(model, data.train, args.finetune_epochs, data.eval, lr=args.lr), args)
    settings = {"method": args.method, "allocation": "auto", "target": allocation.target, "rule": allocation.rule,
                "finetune_epochs": args.finetune_epochs}
    variant = measure_variant(model, "pruned", settings, base, name=f"{base.name} auto-pruned")
    extra = {"allocation": {"predicted_calib_loss": allocation.predicted,
                            "uniform_predicted_calib_loss": allocation.uniform_predicted,
                            "global_predicted_calib_loss": allocation.global_predicted, "layers": allocation.rows()}}
    return finish(args, variant, data, extra)


def cmd_quantize_auto(args, base, data: Data) -> int:
    """quantize --auto: per-layer bit widths under --budget-kib (compression.auto_quant)."""
    from .auto_quant import AutoQuantConfig, auto_quantize
    from .variant import measure_variant

    if not args.budget_kib:
        raise D.DataError("quantize --auto needs --budget-kib N: the packed size the model must fit in")
    try:
        config = AutoQuantConfig(round(args.budget_kib * 1024), criterion=args.criterion,
                                 symmetric=args.mode == "symmetric", per_channel=args.granularity == "per-channel",
                                 calib_images=args.calib_images)
        model, allocation = auto_quantize(base.model, config, calibration_images(data, args.calib_images),
                                          None if args.json else sensitivity_progress)
    except ValueError as exc:        # a budget below the narrowest widths, or a setting out of range
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.json:
        print_allocation(allocation.rows(), ("auto", "uniform"), "")
    settings = {"bits": "auto", "mean_bits": round(allocation.mean_bits, 3), "budget_bytes": config.budget_bytes,
                "criterion": args.criterion, "rule": allocation.rule}
    variant = measure_variant(model, "quantized", settings, base, name=f"{base.name} auto mixed precision")
    extra = {"allocation": {"packed_bytes": allocation.packed_bytes, "uniform_bits": allocation.uniform_bits,
                            "uniform_bytes": allocation.uniform_bytes, "predicted": allocation.predicted,
                            "uniform_predicted": allocation.uniform_predicted, "layers": allocation.rows()}}
    return finish(args, variant, data, extra)


def cmd_quantize(args) -> int:
    from . import quantize as Q
    from .variant import measure_variant

    data = Data(args)
    base = load_variant(args.model, data, args.arch)
    if args.auto:
        return cmd_quantize_auto(args, base, data)
    if args.int8:
        from .jobs import int8_variant
        variant = int8_variant(base, data.train, data.eval, lambda **kw: None, lambda: False, test_set=data.test)
        if args.out:
            Path(args.out).write_bytes(variant.artifacts["int8"])
        info = {"name": variant.name, "settings": variant.settings, "out": args.out, **variant.metrics.to_dict()}
        _print_json(info) if args.json else print(f"{variant.recipe}\n  eval accuracy "
                                                  f"{variant.metrics.eval_accuracy:.4f}" + (f"\n  saved {args.out}"
                                                                                          if args.out else ""))
        return 0
    symmetric, per_channel = args.mode == "symmetric", args.granularity == "per-channel"
    bits = args.bits if args.bits in Q.FLOAT_FORMATS else int(args.bits)
    if bits in Q.FLOAT_FORMATS:
        model = Q.to_reduced_float(base.model, bits, activations=args.activation_bits is not None)
        technique = "reduced-float"
    elif args.qat_epochs:
        from .schedule import finetune
        model = Q.prepare_qat(base.model, bits, symmetric, per_channel, a_bits=args.activation_bits,
                              calib=data.train if args.activation_bits else None, a_method=args.calibration)
        run_quietly(finetune(model, data.train, args.qat_epochs, data.eval, lr=args.lr), args)
        model, technique = Q.convert_qat(model), "QAT"
    else:
        model = Q.quantize_model(base.model, bits, args.activation_bits, data.train if args.activation_bits else None,
                                 symmetric=symmetric, per_channel=per_channel, a_method=args.calibration)
        technique = "quantized"
    settings = {"bits": bits, "mode": args.mode, "granularity": args.granularity, "a_bits": args.activation_bits,
                "calibration": args.calibration, "qat_epochs": args.qat_epochs}
    return finish(args, measure_variant(model, technique, settings, base, name=f"{base.name} {technique} w{bits}"),
                  data)


def cmd_distill(args) -> int:
    from .distill import distill
    from .models import create_model
    from .variant import measure_variant

    data = Data(args)
    teacher = load_variant(args.teacher, data, args.arch)
    student = load_model(args.student)[0] if args.student else create_model(args.student_arch, args.student_width)
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                         label_smoothing=0.0 if args.alpha > 0 else 0.1)
    run_quietly(distill(student, teacher.model, data.train, config, T=args.temperature, alpha=args.alpha,
                        test_set=data.eval), args)
    settings = {"teacher": teacher.name, "T": args.temperature, "alpha": args.alpha, "epochs": args.epochs}
    return finish(args, measure_variant(student, "distilled", settings, name=f"{args.student_arch} distilled"), data)


def cmd_cluster(args) -> int:
    from .share import bake_shared, cluster_weights, prepare_shared
    from .variant import measure_variant

    data = Data(args)
    base = load_variant(args.model, data, args.arch)
    model = cluster_weights(base.model, args.clusters)
    if args.centroid_epochs:
        from .schedule import finetune
        model = prepare_shared(model, args.clusters)
        run_quietly(finetune(model, data.train, args.centroid_epochs, data.eval, lr=args.lr, weight_decay=0.0), args)
        model = bake_shared(model)
    settings = {"clusters": args.clusters, "centroid_epochs": args.centroid_epochs}
    return finish(args, measure_variant(model, "shared", settings, base, name=f"{base.name} k={args.clusters}"),
                  data)


def cmd_pipeline(args) -> int:
    from .pipelines import Stage, deep_compression, spiral

    data = Data(args)
    base = load_variant(args.model, data, args.arch)
    if args.kind == "deep-compression":
        steps = deep_compression(base, data.train, data.eval, args.sparsity, args.clusters, args.finetune_epochs,
                                 args.centroid_epochs, args.lr, test_set=data.test)
    else:
        steps = spiral(base, data.train, data.eval, args.rounds, args.sparsity, args.epochs_per_round,
                       args.temperature, args.alpha, args.lr, test_set=data.test)
    stages = []
    for step in steps:
        if isinstance(step, Stage):
            stages.append(step)
            if not args.json:
                r = step.row()
                print(f"{r['stage']:>18}: eval {r['eval_accuracy']:.4f}, {r['bytes']:,} B ({r['ratio']:.1f}x)",
                      flush=True)
        elif getattr(step, "kind", "") == "epoch" and not args.json:
            print(f"  epoch {step.epoch:.2f} loss {step.loss:.4f}", file=sys.stderr, flush=True)
    if args.out and stages:
        from .export import packed_bytes
        Path(args.out).write_bytes(packed_bytes(stages[-1].variant))
    if args.json:
        _print_json({"pipeline": args.kind, "out": args.out, "stages": [s.row() for s in stages],
                     "final": stages[-1].variant.metrics.to_dict() if stages else None})
    return 0


def cmd_export(args) -> int:
    from .export import packed_bytes, safetensors_bytes

    data = Data(args)
    variant = load_variant(args.model, data, args.arch)
    if args.format == "onnx":
        return cmd_export_onnx(args, variant, data)
    if args.format == "int8":
        from .int8 import int8_export_bytes, to_int8
        blob = int8_export_bytes(to_int8(variant.model, data.train))
    else:
        blob = packed_bytes(variant) if args.format == "packed" else safetensors_bytes(variant)
    Path(args.out).write_bytes(blob)
    info = {"model": args.model, "format": args.format, "out": args.out, "bytes": len(blob)}
    _print_json(info) if args.json else print(f"wrote {args.out} ({len(blob):,} bytes, {args.format})")
    return 0


def cmd_export_onnx(args, variant, data: Data) -> int:
    """export --format onnx [--int8]: write the .onnx and compare it, run in ONNX Runtime, with the
    PyTorch model(s) on the eval subset (or the full test set with --full-test)."""
    from .export import variant_metadata
    from .onnx_export import export_and_verify

    eval_set = data.test or data.eval
    blob, report = export_and_verify(variant.model, eval_set, int8=args.int8, calib=data.train if args.int8 else None,
                                     metadata=variant_metadata(variant))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(blob)
    if args.json:
        _print_json({"model": args.model, "format": "onnx", "out": args.out, "bytes": len(blob), "data": eval_set.name,
                     **report})
        return 0
    print(f"wrote {args.out} ({len(blob):,} bytes, ONNX {report['format']}); on {report['images']} images "
          f"({eval_set.name}):")
    latency = report["latency_ms"]
    print(f"{'':>14} {'accuracy':>9} {'same top-1':>10} {'batch 1 ms':>11} {'batch 256 ms':>13}")
    for name in ("onnx", *(k for k in report if k not in ("onnx", "latency_ms", "images", "format"))):
        same = "" if name == "onnx" else f"{100 * report[name]['agreement']:9.2f}%"
        print(f"{name:>14} {100 * report[name]['accuracy']:8.2f}% {same:>10} {latency['batch 1'][name]:11.2f} "
              f"{latency['batch 256'][name]:13.1f}")
    return 0


def cmd_report(args) -> int:
    from .metrics import measure
    from .variant import report_csv, report_json

    data = Data(args)
    rows = []
    reference = None
    for path in args.models:
        variant = load_variant(path, data, args.arch)
        variant.metrics = measure(variant.model, reference_bytes=reference, eval_set=data.eval,
                                  test_set=data.test, latency=args.latency)
        reference = reference or variant.metrics.bytes_fp32     # ratios against the first model
        rows.append(variant.row())
    if args.json:
        print(report_json(rows))
    elif args.csv:
        print(report_csv(rows), end="")
    else:
        cols = ["name", "eval_accuracy", "test_accuracy", "sparsity", "bytes_packed", "compression_ratio"]
        print("  ".join(f"{c:>16}" for c in cols))
        for r in rows:
            print("  ".join(f"{r[c]:>16.4f}" if isinstance(r[c], float) else f"{str(r[c]):>16}" for c in cols))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m compression", description=__doc__)
    sub = parser.add_subparsers(dest="verb", required=True)

    def data_args(p):
        p.add_argument("--data", help="folder holding cifar-10-batches-py/ (default: $CIFAR10_ROOT or ./data)")
        p.add_argument("--sample", action="store_true", help="use the bundled offline sample instead")

    p = sub.add_parser("train", help="train a CIFAR ResNet from scratch")
    p.add_argument("--arch", choices=ARCHS, default="resnet20")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--epochs", type=float, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], default="onecycle")
    p.add_argument("--warmup", type=float, default=0.15, help="fraction of steps warming up (onecycle)")
    p.add_argument("--cutout", type=int, default=0, help="cutout square side in pixels (0: none)")
    p.add_argument("--swa", action="store_true", help="stochastic weight averaging: keep the mean of every epoch's "
                   "weights (with its own batch-norm statistics) instead of the last ones")
    p.add_argument("--init", help="continue training from this model file (a second phase)")
    p.add_argument("--teacher", nargs="+", metavar="FILE",
                   help="distil from this model file while training: loss α·T²·KL + (1 − α)·CE; with several "
                        "files, from their ensemble (the mean of their logits)")
    p.add_argument("--temperature", "-T", type=float, default=4.0, help="distillation temperature (with --teacher)")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the teacher's soft targets (with --teacher)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    p.add_argument("--out", required=True, help="where to write the .safetensors (a .json card goes beside it)")
    p.add_argument("--log", help="append progress lines to this file")
    p.add_argument("--checkpoint", help="save the run here at every epoch's end; if the file exists, resume "
                   "from it (same settings) and end with the same weights as an unbroken run")
    p.add_argument("--json", action="store_true")
    data_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("download", help="download the official CIFAR-10 archive, check its md5 and unpack it")
    p.add_argument("--data", help="folder to put cifar-10-batches-py/ in (default: $CIFAR10_ROOT or ./data)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("evaluate", help="accuracy of a model file on the CIFAR-10 test set")
    p.add_argument("model", help="a .safetensors or packed model file")
    p.add_argument("--arch", choices=ARCHS, help="architecture, when the file does not say")
    p.add_argument("--json", action="store_true")
    data_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="parameters, nonzeros, MACs and sizes of a model file")
    p.add_argument("model")
    p.add_argument("--arch", choices=ARCHS)
    p.add_argument("--layers", action="store_true", help="include the per-layer table")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    def common(p, out=True):
        p.add_argument("--arch", choices=ARCHS, help="architecture, when the file does not say")
        if out:
            p.add_argument("--out", help="write the result: .cmpk (packed) or .safetensors")
        p.add_argument("--json", action="store_true", help="print the variant's metrics as JSON")
        p.add_argument("--full-test", action="store_true", help="also measure accuracy on the full test set")
        p.add_argument("--latency", action="store_true", help="also measure CPU latency at batch 1 and 256")
        p.add_argument("--lr", type=float, default=0.02, help="fine-tuning learning rate")
        data_args(p)

    p = sub.add_parser("prune", help="unstructured or structured (filter) pruning")
    p.add_argument("model")
    p.add_argument("--amount", type=float, default=0.5, help="fraction of weights (or filters) to remove")
    p.add_argument("--method", choices=["magnitude", "random", "gradient"], default="magnitude")
    p.add_argument("--scope", choices=["global", "layer"], default="global")
    p.add_argument("--keep-first-last", action="store_true", help="keep the stem conv and classifier dense")
    p.add_argument("--structured", action="store_true", help="remove whole filters (a smaller dense model)")
    p.add_argument("--criterion", choices=["l1", "bn_scale", "activation", "random"], default="l1")
    p.add_argument("--target-macs", type=float, help="structured: prune until MACs <= this fraction")
    p.add_argument("--round-to", type=int, help="structured: keep channel counts multiples of this")
    p.add_argument("--finetune-epochs", type=float, default=0)
    p.add_argument("--auto", action="store_true", help="choose each layer's sparsity from its measured sensitivity, "
                   "reaching --amount overall exactly (or --budget-kib)")
    p.add_argument("--budget-kib", type=float, help="--auto: prune until the packed file fits in this many KiB")
    p.add_argument("--calib-images", type=int, default=1024, help="--auto: training images the sensitivity is measured on")
    common(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("quantize", help="k-bit (1-8) or fp16/bf16 quantization, QAT, or real int8")
    p.add_argument("model")
    p.add_argument("--bits", default="8", choices=[str(b) for b in range(1, 9)] + ["fp16", "bf16"])
    p.add_argument("--mode", choices=["symmetric", "asymmetric"], default="symmetric")
    p.add_argument("--granularity", choices=["per-channel", "per-tensor"], default="per-channel")
    p.add_argument("--activation-bits", type=int, help="also quantize activations (calibrated) to this many bits")
    p.add_argument("--calibration", choices=["minmax", "percentile", "mse"], default="minmax")
    p.add_argument("--qat-epochs", type=float, default=0, help="quantization-aware training epochs")
    p.add_argument("--int8", action="store_true", help="real int8 (PT2E); --out writes the .pt2 program")
    p.add_argument("--auto", action="store_true", help="mixed precision: a width from 2 to 8 bits per layer, "
                   "chosen from its measured sensitivity so that the packed file fits --budget-kib")
    p.add_argument("--budget-kib", type=float, help="--auto: the packed size to fit in, in KiB")
    p.add_argument("--criterion", choices=["loss", "sqnr"], default="loss",
                   help="--auto: sensitivity as calibration loss, or as weight SQNR (data-free)")
    p.add_argument("--calib-images", type=int, default=1024, help="--auto: training images the sensitivity is measured on")
    common(p)
    p.set_defaults(func=cmd_quantize, lr=0.01)

    p = sub.add_parser("distill", help="train a student to mimic a teacher (knowledge distillation)")
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", help="a model file to start the student from")
    p.add_argument("--student-arch", choices=ARCHS, default="resnet8")
    p.add_argument("--student-width", type=float, default=1.0)
    p.add_argument("--temperature", "-T", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    p.add_argument("--epochs", type=float, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    common(p)
    p.set_defaults(func=cmd_distill, lr=0.1)

    p = sub.add_parser("cluster", help="k-means weight sharing")
    p.add_argument("model")
    p.add_argument("--clusters", "-k", type=int, default=16)
    p.add_argument("--centroid-epochs", type=float, default=0)
    common(p)
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("pipeline", help="deep-compression or the prune-distill spiral")
    p.add_argument("kind", choices=["deep-compression", "spiral"])
    p.add_argument("model")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--clusters", type=int, default=16)
    p.add_argument("--finetune-epochs", type=float, default=2)
    p.add_argument("--centroid-epochs", type=float, default=0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs-per-round", type=float, default=1)
    p.add_argument("--temperature", "-T", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.9)
    common(p)
    p.set_defaults(func=cmd_pipeline)

    p = sub.add_parser("export", help="write a model as packed, safetensors, real int8 (.pt2) or ONNX")
    p.add_argument("model")
    p.add_argument("--format", choices=["packed", "safetensors", "int8", "onnx"], default="packed")
    p.add_argument("--int8", action="store_true", help="--format onnx: an int8 QDQ model (onnxruntime static "
                   "quantization, calibrated on training images) instead of fp32")
    common(p, out=False)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="metrics of several model files side by side")
    p.add_argument("models", nargs="+")
    p.add_argument("--csv", action="store_true")
    common(p, out=False)
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()     # training and timing need not page-fault their activations in at every step
    try:
        return args.func(args)
    except (D.DataError, ModelFileError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
