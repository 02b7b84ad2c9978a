"""Which fine-tuning recipe recovers the 50 %-pruned resnet20 best, judged on training images only.

    python bench/finetune_heldout.py --data $CIFAR10_ROOT [--quick]

Prunes the pretrained resnet20 to 50 % global magnitude sparsity (as bench/results.py does), then
fine-tunes a fresh copy per recipe (lr × label smoothing) for one epoch on the first 45,000 training
images and measures accuracy on the last 5,000. The teacher was trained on those 5,000 too, so this
shows how much of the dense model's fit each recipe keeps, not test accuracy; the test set plays no part.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compression import data as D  # noqa: E402
from compression.files import load_model  # noqa: E402
from compression.metrics import keep_freed_memory  # noqa: E402
from compression.prune import prune  # noqa: E402
from compression.schedule import finetune  # noqa: E402
from compression.train import evaluate, run_to_end  # noqa: E402

RECIPES = [(0.01, 0.0), (0.01, 0.1), (0.002, 0.1), (0.002, 0.0)]   # (lr, label smoothing); the first is the table's
FIT_IMAGES = 45000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", help="CIFAR-10 folder (default $CIFAR10_ROOT or ./data)")
    p.add_argument("--model", default=str(ROOT / "assets" / "resnet20.safetensors"))
    p.add_argument("--quick", action="store_true", help="2,000 fit and 500 held-out images: checks the script runs")
    args = p.parse_args()
    keep_freed_memory()
    train = D.load_cifar10(args.data, "train")
    fit, held = train.subset(slice(0, FIT_IMAGES), "fit"), train.subset(slice(FIT_IMAGES, None), "held-out")
    if args.quick:
        fit, held = fit.subset(slice(0, 2000)), held.subset(slice(0, 500))
    base, _ = load_model(args.model)
    print(f"held-out images: {len(held.labels)}; dense {100 * evaluate(base, held).accuracy:.2f} %; "
          f"one-shot 50 % {100 * evaluate(prune(base, 0.5, 'magnitude', 'global'), held).accuracy:.2f} %")
    print("| lr | label smoothing | held-out accuracy after 1 epoch (%) | seconds |")
    print("| --- | --- | --- | --- |")
    for lr, smoothing in RECIPES:
        model = prune(base, 0.5, "magnitude", "global")
        started = time.time()
        run_to_end(finetune(model, fit, 1, lr=lr, label_smoothing=smoothing))
        print(f"| {lr} | {smoothing} | {100 * evaluate(model, held).accuracy:.2f} | {time.time() - started:.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
