"""The verbs of `python -m compression`: each loads what it needs, calls the library and prints the
result (human lines, or JSON with --json). None adds maths; the parser is in cli.py."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from . import data as D
from .card import previous_card, training_card, write_card
from .files import ModelFileError, load_model, save_model, sha256_file
from .models import create_model
from .train import TrainConfig, evaluate, train


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
        previous = previous_card(args.init)
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
    card = training_card(out, args.arch, width, config, train_set, test_set, result, last.elapsed_s, previous)
    write_card(out, card)
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

    folder = D.download_cifar10(root, progress, url=args.url, md5=args.md5)
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
        self._eval = None

    @property
    def eval(self) -> D.ImageSet:
        if self._eval is None:
            self._eval = D.eval_subset(D.load_sample(splits=("test",)))
        return self._eval

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
            model = prune_filters(base.model, ratio=args.amount, criterion=args.criterion, calib=data.train,
                                  round_to=args.round_to)
        technique, settings = "filter-pruned", {"criterion": args.criterion, "ratio": args.amount,
                                                "target_macs": args.target_macs, "round_to": args.round_to}
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


def cmd_quantize(args) -> int:
    from .activations import quantize_model, to_reduced_float
    from .qat import convert_qat, prepare_qat
    from .quantize import FLOAT_FORMATS
    from .variant import measure_variant

    data = Data(args)
    base = load_variant(args.model, data, args.arch)
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
    bits = args.bits if args.bits in FLOAT_FORMATS else int(args.bits)
    if bits in FLOAT_FORMATS:
        model = to_reduced_float(base.model, bits, activations=args.activation_bits is not None)
        technique = "reduced-float"
    elif args.qat_epochs:
        from .schedule import finetune
        model = prepare_qat(base.model, bits, symmetric, per_channel, a_bits=args.activation_bits,
                              calib=data.train if args.activation_bits else None, a_method=args.calibration)
        run_quietly(finetune(model, data.train, args.qat_epochs, data.eval, lr=args.lr), args)
        model, technique = convert_qat(model), "QAT"
    else:
        model = quantize_model(base.model, bits, args.activation_bits, data.train if args.activation_bits else None,
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
        steps = deep_compression(base, data.train, data.eval, args.amount, args.clusters, args.finetune_epochs,
                                 args.centroid_epochs, args.lr, test_set=data.test)
    else:
        steps = spiral(base, data.train, data.eval, args.rounds, args.amount, args.epochs_per_round,
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
    if args.format == "int8":
        from .int8 import int8_export_bytes, to_int8
        blob = int8_export_bytes(to_int8(variant.model, data.train))
    else:
        blob = packed_bytes(variant) if args.format == "packed" else safetensors_bytes(variant)
    Path(args.out).write_bytes(blob)
    info = {"model": args.model, "format": args.format, "out": args.out, "bytes": len(blob)}
    _print_json(info) if args.json else print(f"wrote {args.out} ({len(blob):,} bytes, {args.format})")
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
