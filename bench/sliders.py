"""How long does one slider move take? The work each of the app's live sliders triggers, on the
pretrained resnet20, timed over many moves to fresh positions (the app caches positions already seen, so
this is the slow case):

- pruning ratio:      prune a copy (magnitude, global) + accuracy on the 1,000-image eval subset
                      + the chosen layer's histograms before/after + sparsity per layer
- quantization bits:  quantize a copy (weights, symmetric, per-channel) + eval accuracy + histograms
                      + the grid of one filter + quantization error per layer
- temperature:        the teacher's softened probabilities for one image + their entropy
- clusters:           k-means weight sharing of a copy + eval accuracy + packed-size breakdown

    python bench/sliders.py [--moves 15] [--json]

Goal (issues 4 and 5): median ≤ 1 s per move on 2 cores.
"""
import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from compression.activations import quantize_model
from compression.data import eval_subset, load_sample
from compression.distill import entropy, softened_probabilities
from compression.files import load_model
from compression.packed_sizes import packed_breakdown
from compression.prune import layer_sparsity, prune
from compression.quantize import quant_grid
from compression.share import cluster_weights
from compression.train import cpu_model, evaluate
from compression.views import histogram, layer_quant_error, layer_weight, weight_range

ROOT = Path(__file__).resolve().parent.parent

LAYER = "layer1.1.conv2"


def prune_move(model, ev, ratio):
    pruned = prune(model, ratio / 100, "magnitude", "global")
    evaluate(pruned, ev)
    lo_hi = weight_range(model, LAYER)
    histogram(layer_weight(model, LAYER), value_range=lo_hi)
    histogram(layer_weight(pruned, LAYER), value_range=lo_hi, drop_zeros=True)
    layer_sparsity(pruned)


def bits_move(model, ev, bits):
    q = quantize_model(model, bits, symmetric=True, per_channel=True)
    evaluate(q, ev)
    lo_hi = weight_range(model, LAYER)
    histogram(layer_weight(model, LAYER), value_range=lo_hi)
    histogram(layer_weight(q, LAYER), value_range=lo_hi, bins=200)
    quant_grid(layer_weight(model, LAYER), bits, True, True, channel=0)
    layer_quant_error(model, q)


def temperature_move(model, image, t):
    entropy(softened_probabilities(model, image, t))


def clusters_move(model, ev, k):
    shared = cluster_weights(model, k)
    evaluate(shared, ev)
    packed_breakdown(shared)


def timed(fn, values):
    times = []
    for v in values:
        start = time.perf_counter()
        fn(v)
        times.append(time.perf_counter() - start)
    return times


def summary(times):
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"moves": len(times), "p50_s": round(statistics.median(times), 3), "p95_s": round(p95, 3)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=str(ROOT / "assets" / "resnet20.safetensors"))
    p.add_argument("--moves", type=int, default=15)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    model, _ = load_model(args.model)
    _, test = load_sample()
    ev = eval_subset(test)
    rng = random.Random(0)
    prune_move(model, ev, 50)                       # warm-up: first-call allocations
    results = {
        "pruning ratio": summary(timed(lambda r: prune_move(model, ev, r), rng.sample(range(1, 100), args.moves))),
        "quantization bits": summary(timed(lambda b: bits_move(model, ev, b),
                                           [rng.randint(1, 8) for _ in range(args.moves)])),
        "temperature": summary(timed(lambda t: temperature_move(model, ev.images[0], t),
                                     [rng.uniform(1, 20) for _ in range(args.moves)])),
        "clusters": summary(timed(lambda k: clusters_move(model, ev, k),
                                  [rng.choice([2, 4, 8, 16, 32, 64, 128, 256]) for _ in range(args.moves)])),
    }
    meta = {"model": Path(args.model).name, "eval_images": len(ev),
            "hardware": f"{cpu_model()}, {torch.get_num_threads()} threads", "torch": torch.__version__}
    if args.json:
        print(json.dumps({"meta": meta, "sliders": results}, indent=2))
    else:
        print(f"{meta['model']} on {meta['hardware']}, eval subset of {meta['eval_images']} images")
        for name, r in results.items():
            print(f"{name:>18}: p50 {r['p50_s']:.3f} s, p95 {r['p95_s']:.3f} s over {r['moves']} moves")


if __name__ == "__main__":
    main()
