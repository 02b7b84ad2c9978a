"""Which fine-tuning recipe recovers a pruned resnet20 best, judged on training images only.

    python bench/finetune_heldout.py --data $CIFAR10_ROOT [--row prune50|prune90|structured] [--quick]

Prints a table and, unless --quick, writes it as the row's section of docs/HELDOUT.md (one section per
row and --epochs; the others stay as they are).

Builds a row's pruned model as bench/results.py does, fine-tunes a fresh copy per recipe on the first
45,000 training images and measures accuracy on the last 5,000:
- prune50: 50 % global magnitude sparsity, 1 epoch, recipes lr × label smoothing;
- prune90: AGP to 90 % over the first half of the epochs, distilling from the dense model, recipes lr;
- structured: L1 filters, local, widths multiples of 8, to ≤ half the MACs, after adaptive BN, distilling
  from the dense model, recipes lr.
The 90 % and structured rows fine-tune for far longer in the table than here (--epochs, 3 by default), and
a short run favours a small learning rate; read their ranking with that in mind. The teacher was trained on
the 5,000 held-out images too, so the figures show how much of the dense model's fit each recipe keeps,
not test accuracy; the test set plays no part.
"""
import argparse
import re
import time
from pathlib import Path

from compression import data as D
from compression.distill import distillation_loss_fn
from compression.files import load_model
from compression.metrics import keep_freed_memory
from compression.prune import prune
from compression.schedule import finetune, gradual_prune
from compression.structured import prune_to_macs, recalibrate_batchnorm
from compression.train import evaluate, run_to_end, threads_text
from compression.weights import copy_model

ROOT = Path(__file__).resolve().parent.parent

RECIPES = {   # (lr, label smoothing); the first of each is the fourth plan's
    "prune50": [(0.01, 0.0), (0.01, 0.1), (0.002, 0.1), (0.002, 0.0)],
    "prune90": [(0.05, 0.0), (0.02, 0.0), (0.01, 0.0)],
    "structured": [(0.05, 0.0), (0.02, 0.0), (0.01, 0.0)],
}
KD = {"T": 4.0, "alpha": 0.9}
FIT_IMAGES = 45000


def start(row, base, fit):
    """The row's model before fine-tuning (what bench/results.py starts from)."""
    if row == "prune50":
        return prune(base, 0.5, "magnitude", "global")
    if row == "prune90":
        return copy_model(base)
    small = prune_to_macs(base, 0.5, "l1", global_pruning=False, round_to=8)
    return recalibrate_batchnorm(small, fit.subset(slice(0, 2048)))


def fine_tune(row, model, base, fit, epochs, lr, smoothing):
    if row == "prune50":
        return finetune(model, fit, epochs, lr=lr, label_smoothing=smoothing)
    kd = distillation_loss_fn(base, **KD)
    if row == "prune90":
        return gradual_prune(model, 0.9, fit, epochs, lr=lr, end_fraction=0.5, loss_fn=kd)
    return finetune(model, fit, epochs, lr=lr, loss_fn=kd)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", help="CIFAR-10 folder (default $CIFAR10_ROOT or ./data)")
    p.add_argument("--model", default=str(ROOT / "assets" / "resnet20.safetensors"))
    p.add_argument("--row", choices=list(RECIPES), default="prune50")
    p.add_argument("--epochs", type=float, help="fine-tuning epochs (default: 1 for prune50, 3 otherwise)")
    p.add_argument("--quick", action="store_true", help="2,000 fit and 500 held-out images: checks the script runs")
    args = p.parse_args()
    epochs = args.epochs or (1 if args.row == "prune50" else 3)
    keep_freed_memory()
    train = D.load_cifar10(args.data, "train")
    fit, held = train.subset(slice(0, FIT_IMAGES), "fit"), train.subset(slice(FIT_IMAGES, None), "held-out")
    if args.quick:
        fit, held = fit.subset(slice(0, 2000)), held.subset(slice(0, 500))
    base, _ = load_model(args.model)
    lines = [f"{args.row}, {epochs:g} epochs; held-out images: {len(held.labels)}; dense "
             f"{100 * evaluate(base, held).accuracy:.2f} %; before fine-tuning "
             f"{100 * evaluate(start(args.row, base, fit), held).accuracy:.2f} %",
             f"| lr | label smoothing | held-out accuracy after {epochs:g} epochs (%) | seconds |",
             "| --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    for lr, smoothing in RECIPES[args.row]:
        model = start(args.row, base, fit)
        started = time.time()
        run_to_end(fine_tune(args.row, model, base, fit, epochs, lr, smoothing))
        lines.append(f"| {lr} | {smoothing} | {100 * evaluate(model, held).accuracy:.2f} | "
                     f"{time.time() - started:.0f} |")
        print(lines[-1], flush=True)
    if not args.quick:
        section = args.row if args.epochs is None else f"{args.row} --epochs {epochs:g}"
        write_section(ROOT / "docs" / "HELDOUT.md", section, [
            f"`python bench/finetune_heldout.py --row {section}` — {time.strftime('%Y-%m-%d')}, "
            f"{threads_text()}.", "", lines[0], "", *lines[1:]])


HEADER = """# Fine-tuning recipes scored on held-out training images

Each section is written by `python bench/finetune_heldout.py --data $CIFAR10_ROOT --row ROW` (the script's
docstring says what it measures). `bench/results.py` takes its learning rates from these tables; the test
set plays no part in them.
"""


def write_section(path: Path, row: str, body: list[str]):
    """Replace (or add) the `## row` section of `path`, keeping every other section."""
    text = path.read_text() if path.exists() else HEADER
    section = f"## {row}\n\n" + "\n".join(body) + "\n"
    pattern = re.compile(rf"^## {re.escape(row)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    path.write_text(text.rstrip() + "\n")


if __name__ == "__main__":
    main()
