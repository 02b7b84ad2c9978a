"""Time to a target test accuracy with the app's own training loop (compression.train.train).

Trains a fresh model on full CIFAR-10 (CIFAR10_ROOT), evaluates all 10,000 test images after every
epoch and stops at the first epoch at or above --target. Reports wall time with and without the
evaluations, epochs, training images/s and the 1-minute load average (start, end, max over epochs).

    CIFAR10_ROOT=/path/to/cifar10 python bench/time_to_accuracy.py [--recipe fast] [--threads 2]
        [--epochs E --batch-size B --lr LR ...] [--out result.json] [--no-stop]

The epochs a recipe needs do not depend on the machine's load; its images/s do. Goal (issue 19):
resnet8 at 80 % within 5 minutes on 2 cores.
"""
import argparse
import json
import os
import time

import torch

from compression.data import load_cifar10
from compression.models import create_model
from compression.train import TrainConfig, evaluate, hardware_name, pick_device, train

# Named recipes (TrainConfig fields); command-line options override them.
RECIPES = {
    "results": dict(epochs=12, batch_size=128, lr=0.2),           # docs/RESULTS.md: 79.17 % (seeds 0, 1)
    "fast": dict(epochs=15, batch_size=128, lr=0.2),              # docs/SPEED.md: 80.28 % after epoch 14 (seed 0)
}


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet8")
    p.add_argument("--recipe", default="fast", choices=sorted(RECIPES))
    p.add_argument("--target", type=float, default=0.80)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-stop", action="store_true", help="train the whole schedule, reporting every epoch")
    p.add_argument("--progress-every", type=int, default=100, help="print a line every this many steps")
    p.add_argument("--checkpoint", help="resumable: a file saved at every epoch's end (times then span sittings)")
    p.add_argument("--out", help="write the JSON result here as well (rewritten after every epoch)")
    for field in ("epochs", "lr", "weight_decay", "label_smoothing", "warmup", "momentum"):
        p.add_argument("--" + field.replace("_", "-"), type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--cutout", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--schedule", choices=("onecycle", "cosine", "constant"))
    p.add_argument("--no-augment", action="store_true")
    return p.parse_args()


def table(result: dict) -> str:
    rows = ["| epoch | test acc | wall s | wall s without evals | eval s | images/s | load 1 min |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for e in result["epochs"]:
        rows.append(f"| {e['epoch']:g} | {100 * e['test_acc']:.2f} % | {e['wall_s']:.0f} | {e['train_s']:.0f} | "
                    f"{e['eval_s']:.1f} | {e['images_per_s']:.0f} | {e['load1']} |")
    return "\n".join(rows)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(RECIPES[args.recipe])
    for field in ("epochs", "lr", "weight_decay", "label_smoothing", "warmup", "momentum", "batch_size",
                  "cutout", "seed", "schedule"):
        if getattr(args, field) is not None:
            settings[field] = getattr(args, field)
    if args.no_augment:
        settings["augment"] = False
    config = TrainConfig(**settings, eval_every_epoch=False)
    train_set, test_set = load_cifar10(split="train"), load_cifar10(split="test")
    model = create_model(args.arch)
    result = {"arch": args.arch, "recipe": args.recipe, "config": config.to_dict(), "target": args.target,
              "threads": torch.get_num_threads(), "hardware": hardware_name(pick_device(config.device)),
              "torch": torch.__version__, "load1_start": load1(), "epochs": [], "reached": None}
    eval_s = 0.0
    start = time.perf_counter()
    events = train(model, train_set, config, events_every=args.progress_every, checkpoint=args.checkpoint)
    for event in events:                # the loop's own evaluation is off: timed here instead
        if event.kind == "step":
            print(f"  step {event.step}/{event.total_steps}  {event.images_per_s:.0f} images/s  load {load1()}",
                  flush=True)
            continue
        if event.kind != "epoch":
            continue
        t = time.perf_counter()
        acc = evaluate(model, test_set).accuracy
        eval_s += time.perf_counter() - t
        wall = time.perf_counter() - start
        result["epochs"].append({"epoch": round(event.epoch, 3), "test_acc": acc, "wall_s": round(wall, 1),
                                 "train_s": round(wall - eval_s, 1), "eval_s": round(eval_s, 1),
                                 "images_per_s": round(event.step * config.batch_size / (wall - eval_s), 1),
                                 "load1": load1()})
        print(f"epoch {event.epoch:5.2f}  test {100 * acc:6.2f} %  wall {wall:6.0f} s  "
              f"without evals {wall - eval_s:6.0f} s  load {load1()}", flush=True)
        if acc >= args.target and result["reached"] is None:
            result["reached"] = result["epochs"][-1]
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
        if result["reached"] is not None and not args.no_stop:
            events.close()
            break
    result["load1_end"] = load1()
    result["load1_max"] = max([result["load1_start"]] + [e["load1"] for e in result["epochs"]])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps({k: v for k, v in result.items() if k != "epochs"}, indent=2))
    print(table(result))
    r = result["reached"]
    print(f"\n{args.arch}, {config.epochs:g}-epoch schedule, batch {config.batch_size}, lr {config.lr:g}: " +
          (f"{100 * r['test_acc']:.2f} % after epoch {r['epoch']:g}, {r['wall_s']:.0f} s "
           f"({r['train_s']:.0f} s without evals, {r['images_per_s']:.0f} images/s)" if r else
           f"never reached {100 * args.target:.0f} %") + f"; load {result['load1_start']} to {result['load1_end']}")


if __name__ == "__main__":
    main()
