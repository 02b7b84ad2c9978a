"""Server memory with kept variants: does it stay within 300 MB of an idle server (issue 18)?

    python bench/store_memory.py [--workspaces 5] [--per-workspace 4] [--json]

Library level (no Streamlit), in two fresh processes on a fresh store in a temporary PLAYGROUND_HOME:

1. "keep": a process opens the store, registers the pretrained resnet20 and loads it (a server at
   start) — RSS idle; then makes 4 variants in each of 5 workspaces from resnet20 (magnitude pruning at
   20 … 86 %, every second one also quantized to 6 bits), measures them (compression.metrics.measure),
   keeps each (compression.store.Store.keep), drops them, and loads every one back through the store's
   model cache — RSS after. This is the server that did the work itself.
2. "restart": a new process opens the same store, loads the pretrained model — RSS idle; then opens
   each workspace and loads each of its variants through the cache — RSS after. This is a server after
   a restart serving the same 20 variants.

RSS is the process's resident memory (VmRSS in /proc/self/status), peak is VmHWM. The model cache
bound is PLAYGROUND_MODEL_CACHE_MB (default 256 MB); a resnet20 takes 1.1 MB in it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import gc, json, sys
sys.path.insert(0, ".")
import torch
torch.set_num_threads(1)
from compression.files import load_model
from compression.prune import prune
from compression.quantize import quantize_weights
from compression.store import open_store
from compression.variant import Variant, measure_variant

def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

phase, home, workspaces, per = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = open_store(home)
base, _ = load_model("assets/resnet20.safetensors")
pretrained = store.register_pretrained(Variant("resnet20 (pretrained)", base, "pretrained", {"arch": "resnet20"}))
del base
ws0, _ = store.create_workspace()
store.model(ws0, pretrained)
gc.collect()
idle = rss()
tokens_file = home + "/tokens.json"
if phase == "keep":
    tokens, n = [], workspaces * per
    for w in range(workspaces):
        ws, token = store.create_workspace()
        tokens.append(token)
        for j in range(per):
            i = w * per + j
            amount = round(0.2 + 0.66 * i / max(1, n - 1), 3)
            model = prune(store.model(ws, pretrained), amount)
            settings = {"amount": amount}
            if i % 2:
                model = quantize_weights(model, 6)
                settings["bits"] = 6
            variant = measure_variant(model, "pruned", settings, name=f"ws{w} v{j}")
            variant.parent = pretrained
            store.keep(ws, variant)
            del model, variant
    json.dump(tokens, open(tokens_file, "w"))
    gc.collect()
    kept = rss()
else:
    tokens = json.load(open(tokens_file))
    kept = None
loaded = 0
for token in tokens:
    ws = store.open_workspace(token)
    for record in store.variants(ws):
        if not record.builtin:
            store.model(ws, record.id)
            loaded += 1
gc.collect()
after = rss()
print(json.dumps({"idle_mb": idle["VmRSS"], "after_keeping_mb": kept and kept["VmRSS"], "after_mb": after["VmRSS"],
                  "peak_mb": after["VmHWM"], "loaded": loaded, "cache_mb": store.cache.total_bytes / 2**20,
                  "cache_bound_mb": store.cache.max_bytes / 2**20}))
"""


def run(phase: str, home: str, workspaces: int, per: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, phase, home, str(workspaces), str(per)], cwd=ROOT,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workspaces", type=int, default=5)
    p.add_argument("--per-workspace", type=int, default=4)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as home:
        results = {phase: run(phase, home, args.workspaces, args.per_workspace) for phase in ("keep", "restart")}
    load_after = os.getloadavg()
    for r in results.values():
        r["difference_mb"] = r["after_mb"] - r["idle_mb"]
    report = {"workspaces": args.workspaces, "variants": args.workspaces * args.per_workspace, "results": results,
              "load_average_1min": [round(load_before[0], 2), round(load_after[0], 2)]}
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{report['variants']} variants of resnet20 in {args.workspaces} workspaces; load average (1 min) "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print("| process | RSS idle (MB) | RSS after (MB) | difference (MB) | peak (MB) | models in cache (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for phase, r in results.items():
        print(f"| {phase} | {r['idle_mb']:.0f} | {r['after_mb']:.0f} | {r['difference_mb']:.0f} | {r['peak_mb']:.0f} "
              f"| {r['cache_mb']:.1f} |")


if __name__ == "__main__":
    main()
