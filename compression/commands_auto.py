"""The verbs where the tool chooses or exports for another runtime: `prune --auto`, `quantize --auto`
(per-layer settings under a budget, compression/auto_prune.py and auto_quant.py) and `export --format
onnx` (compression/onnx_export.py). Like commands.py, they call the library and print; cli.py picks
them when --auto or --format onnx is given."""
from __future__ import annotations

import sys
from pathlib import Path

from . import data as D
from .commands import Data, _print_json, finish, load_variant, run_quietly


def sensitivity_progress(done: int, total: int) -> None:
    print(f"  sensitivity: layer {done}/{total}", file=sys.stderr, flush=True)


def print_allocation(rows: list[dict], columns: tuple[str, ...], fmt: str) -> None:
    """The per-layer allocation as a small table on stderr (stdout keeps the variant's summary)."""
    print(f"{'layer':>22} {'weights':>8} " + " ".join(f"{c:>8}" for c in columns), file=sys.stderr)
    for r in rows:
        cells = " ".join(f"{'—':>8}" if r[c] is None else f"{r[c]:>8{fmt}}" for c in columns)
        print(f"{r['layer']:>22} {r['params']:>8,} {cells}", file=sys.stderr)


def cmd_prune_auto(args) -> int:
    """prune --auto: per-layer sparsities chosen from sensitivity curves (compression.auto_prune)."""
    from .auto_prune import AutoPruneConfig, auto_prune
    from .prune import FIRST_AND_LAST
    from .variant import measure_variant

    if args.structured:
        raise ValueError("prune --auto chooses each layer's unstructured sparsity; it cannot be combined with "
                         "--structured (drop one of the two)")
    data = Data(args)
    base = load_variant(args.model, data, args.arch)
    # A budget the model cannot meet, or a setting out of range, raises ValueError: cli.main prints its message.
    config = AutoPruneConfig(target_sparsity=None if args.budget_kib else args.amount,
                             target_bytes=round(args.budget_kib * 1024) if args.budget_kib else None,
                             method=args.method, exempt=FIRST_AND_LAST if args.keep_first_last else (),
                             calib_images=args.calib_images)
    model, allocation = auto_prune(base.model, config, D.calibration_set(data.train, args.calib_images),
                                   None if args.json else sensitivity_progress)
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


def cmd_quantize_auto(args) -> int:
    """quantize --auto: per-layer bit widths under --budget-kib (compression.auto_quant)."""
    from .auto_quant import AutoQuantConfig, auto_quantize
    from .variant import measure_variant

    if not args.budget_kib:
        raise D.DataError("quantize --auto needs --budget-kib N: the packed size the model must fit in")
    data = Data(args)
    base = load_variant(args.model, data, args.arch)
    config = AutoQuantConfig(round(args.budget_kib * 1024), criterion=args.criterion,   # ValueError: as above
                             symmetric=args.mode == "symmetric", per_channel=args.granularity == "per-channel",
                             calib_images=args.calib_images)
    model, allocation = auto_quantize(base.model, config, D.calibration_set(data.train, args.calib_images),
                                      None if args.json else sensitivity_progress)
    if not args.json:
        print_allocation(allocation.rows(), ("auto", "uniform"), "")
    settings = {"bits": "auto", "mean_bits": round(allocation.mean_bits, 3), "budget_bytes": config.budget_bytes,
                "criterion": args.criterion, "rule": allocation.rule}
    variant = measure_variant(model, "quantized", settings, base, name=f"{base.name} auto mixed precision")
    extra = {"allocation": {"packed_bytes": allocation.packed_bytes, "uniform_bits": allocation.uniform_bits,
                            "uniform_bytes": allocation.uniform_bytes, "predicted": allocation.predicted,
                            "uniform_predicted": allocation.uniform_predicted, "layers": allocation.rows()}}
    return finish(args, variant, data, extra)


def cmd_export_onnx(args) -> int:
    """export --format onnx [--int8]: write the .onnx and compare it, run in ONNX Runtime, with the
    PyTorch model(s) on the eval subset (or the full test set with --full-test)."""
    from .export import variant_metadata
    from .onnx_export import export_and_verify

    data = Data(args)
    variant = load_variant(args.model, data, args.arch)
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
