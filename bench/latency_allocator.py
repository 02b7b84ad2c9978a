"""Why a structured-pruned model measures faster against the dense one in a fresh process with glibc's
default allocator settings than compression.metrics reports.

    python bench/latency_allocator.py [--runs 2] [--json]

The dense resnet20 and its structured-pruned copy (L1 filters, local, widths rounded to multiples of 8,
≤ 50 % of the MACs: the candidate docs/RESULTS.md kept) are timed in turn at batch 256 by
compression.metrics.compare_latency, each run in a fresh Python process, in two settings:

- glibc's defaults: compare_latency's call to keep_freed_memory is switched off for the run;
- freed memory kept: as compare_latency runs everywhere else (keep_freed_memory: blocks up to 32 MiB
  come from the heap and stay there when freed).

A forward pass of the dense model at batch 256 allocates activations of up to 16 MiB; with glibc's
defaults such blocks are mapped from the OS and page-faulted in again and again (how often depends on
what the process has allocated before), which costs the dense model (twice the activation bytes in its
first stage) more than the pruned one. The difference between the two settings is that cost: the
allocator's, not the convolutions'.
"""
import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys
import compression.metrics
if sys.argv[1] == "defaults":
    compression.metrics.keep_freed_memory = lambda: False
from compression.files import load_model
from compression.metrics import compare_latency
from compression.structured import prune_to_macs
base, _ = load_model("assets/resnet20.safetensors")
pruned = prune_to_macs(base, 0.5, "l1", round_to=8)
lat = compare_latency({"dense": base, "pruned": pruned}, batch_size=256, repeats=25)
print(json.dumps(lat))
"""
SETTINGS = {"glibc's defaults": "defaults", "freed memory kept (compare_latency)": "kept"}


def measure(setting: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, setting], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    lat = json.loads(out.stdout.strip().splitlines()[-1])
    return {"dense_ms": round(lat["dense"], 1), "pruned_ms": round(lat["pruned"], 1),
            "speedup": round(lat["dense"] / lat["pruned"], 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=2, help="processes per setting (settings interleaved)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    runs = {name: [] for name in SETTINGS}
    for _ in range(args.runs):
        for name, setting in SETTINGS.items():
            runs[name].append(measure(setting))
    result = {name: {"runs": r, "median_speedup": round(statistics.median(x["speedup"] for x in r), 2),
                     "median_dense_ms": round(statistics.median(x["dense_ms"] for x in r), 1)}
              for name, r in runs.items()}
    if args.json:
        print(json.dumps(result))
    else:
        for name, r in result.items():
            print(f"{name:36s} speedup {r['median_speedup']:.2f}×  dense {r['median_dense_ms']} ms  {r['runs']}")


if __name__ == "__main__":
    main()
