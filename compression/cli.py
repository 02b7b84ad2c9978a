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
from .models import ARCHS, create_model
from .train import TrainConfig, evaluate, hardware_name, pick_device, train


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
                         schedule=args.schedule, seed=args.seed, device=args.device)
    torch.manual_seed(config.seed)
    model = create_model(args.arch, args.width)
    log = open(args.log, "a") if args.log else None
    last = None
    for event in train(model, train_set, config, test_set, events_every=50):
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
        "arch": args.arch, "width": args.width, "weights": out.name,
        "recipe": {**config.to_dict(), "optimizer": "SGD (Nesterov)", "augmentation": "pad-4 random crop + flip",
                   "train_images": len(train_set)},
        "epochs": args.epochs, "seed": args.seed,
        "training_time_s": round(last.elapsed_s, 1),
        "hardware": hardware_name(pick_device(args.device)),
        "torch": torch.__version__,
        "test_set": test_set.name, "test_images": result.images, "test_accuracy": round(result.accuracy, 4),
        "sha256": sha256_file(out),
        "trained_on": time.strftime("%Y-%m-%d"),
    }
    Path(out).with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    if args.json:
        _print_json(card)
    else:
        print(f"saved {out} (test accuracy {result.accuracy:.4f})")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--limit", type=int, default=0, help="train on the first N images only")
    p.add_argument("--out", required=True, help="where to write the .safetensors (a .json card goes beside it)")
    p.add_argument("--log", help="append progress lines to this file")
    p.add_argument("--json", action="store_true")
    data_args(p)
    p.set_defaults(func=cmd_train)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (D.DataError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
