"""Command line: `python -m compression VERB ...`. Every verb calls the library; none adds maths."""
from __future__ import annotations

import argparse
import os
import sys

from . import data as D
from .commands import (cmd_cluster, cmd_distill, cmd_download, cmd_evaluate, cmd_export, cmd_info, cmd_pipeline,
                       cmd_prune, cmd_quantize, cmd_report, cmd_train)
from .commands_auto import cmd_export_onnx, cmd_prune_auto, cmd_quantize_auto
from .files import ModelFileError
from .metrics import keep_freed_memory
from .models import ARCHS
from .train import CheckpointError

# This module is the parser and the entry point; the verbs themselves are in commands.py (and, where the tool
# chooses per-layer settings or writes ONNX, in commands_auto.py: see chosen_verb).


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
    p.add_argument("--url", default=D.ARCHIVE_URL, help="fetch the archive from here instead (a mirror on the class "
                   "network, say); its md5 is checked all the same")
    p.add_argument("--md5", default=D.ARCHIVE_MD5, help="the md5 the archive must have (default: the official one)")
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

    def calib_images(p):
        p.add_argument("--calib-images", type=int, default=1024,
                       help="--auto: training images the sensitivity is measured on")

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
    p.add_argument("--amount", type=float, default=0.5,
                   help="fraction of the weights to remove; with --structured, of each layer's filters (the ratio)")
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
    calib_images(p)
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
    calib_images(p)
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
    p.add_argument("--amount", "--sparsity", dest="amount", type=float, default=0.9,
                   help="fraction of the weights to prune (--sparsity is its former name)")
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


def chosen_verb(args):
    """The function that runs the parsed command: `prune --auto`, `quantize --auto` and `export --format
    onnx` go to commands_auto.py, every other command to the verb its subparser named."""
    if getattr(args, "auto", False):
        return {"prune": cmd_prune_auto, "quantize": cmd_quantize_auto}[args.verb]
    if args.verb == "export" and args.format == "onnx":
        return cmd_export_onnx
    if args.verb == "export" and args.int8:
        raise ValueError("export --int8 makes an int8 ONNX file: add --format onnx (for the PT2E program, "
                         "use --format int8)")
    return args.func


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Whatever goes wrong ends in one line on stderr and exit status 2, never a traceback:
    errors the user can cause say what to do; anything else names itself as a bug (set
    PLAYGROUND_DEBUG=1 to see the traceback)."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()     # training and timing need not page-fault their activations in at every step
    try:
        return chosen_verb(args)(args)
    except (D.DataError, ModelFileError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
        return 130
    except BrokenPipeError:            # the reader went away: __main__ stops quietly
        raise
    except Exception as exc:
        if os.environ.get("PLAYGROUND_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__} ({exc}); this is a bug: please report it with the "
              f"command you ran (PLAYGROUND_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2
