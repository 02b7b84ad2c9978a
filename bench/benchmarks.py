"""docs/BENCHMARKS.md: the speed figures of the project, measured in one run.

    python bench/benchmarks.py

1. Training data path: images/s of the real training loop against a bare forward+backward+step of the
   same model and batch (bench/train_throughput.py). Goal: ratio ≥ 0.9.
2. Slider moves: median and p95 time of what each live slider triggers (bench/sliders.py).
   Goal: median ≤ 1 s.
3. App start: the first run of app.py in a fresh process (imports, bundled sample, pretrained models
   measured), through Streamlit's AppTest. Goal: ≤ 5 s.
4. Structured-pruning speedup and the memory allocator (bench/latency_allocator.py): why the pruned
   model measures faster with glibc's default allocator settings than with freed memory kept.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

STARTUP = """
import time, sys
start = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file("app.py", default_timeout=120)
at.run()
assert not at.exception, [e.value for e in at.exception]
print(time.perf_counter() - start)
"""


def speedups(runs: list[dict]) -> str:
    return ", ".join(f"{run['speedup']:.2f}×" for run in runs)


def run_json(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout[out.stdout.index("{"):])


def main():
    started = time.time()
    train = run_json(["bench/train_throughput.py"])
    sliders = run_json(["bench/sliders.py", "--moves", "20"])
    starts = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", STARTUP], cwd=ROOT, capture_output=True, text=True, check=True)
        starts.append(float(out.stdout.strip().splitlines()[-1]))
    startup = sorted(starts)[1]
    alloc = run_json(["bench/latency_allocator.py", "--runs", "2"])
    lines = [
        "# Benchmarks",
        "",
        "Made by one command, which rewrites this file (figures differ a little from run to run: the machine",
        "is shared and noisy, so each goal is checked as a ratio or a median measured within one run):",
        "",
        "    python bench/benchmarks.py",
        "",
        f"Measured on {time.strftime('%Y-%m-%d')}, {sliders['meta']['hardware']}, torch {sliders['meta']['torch']}; "
        f"took {(time.time() - started) / 60:.1f} minutes.",
        "",
        "## Training data path (issue 2)",
        "",
        f"`python bench/train_throughput.py` — {train['arch']}, batch {train['batch_size']}, {train['steps']} "
        f"steps × {train['rounds']} rounds, interleaved, data: {train['data']}.",
        "",
        "| | images/s |",
        "| --- | --- |",
        f"| bare forward + backward + SGD step on a fixed tensor | {train['bare_images_per_s']} |",
        f"| the real training loop (`compression.train.train`: shuffle, crop + flip, uint8 → float, "
        f"bookkeeping) | {train['loop_images_per_s']} |",
        f"| **ratio** (goal ≥ 0.9) | **{train['ratio']}** |",
        "",
        "## Slider moves (issues 4 and 5)",
        "",
        f"`python bench/sliders.py --moves 20` — {sliders['meta']['model']}, accuracy on the "
        f"{sliders['meta']['eval_images']}-image eval subset; each move to a fresh position (the app caches "
        "positions already seen, so this is the slow case).",
        "",
        "| slider | what one move runs | median (s) | p95 (s) | goal |",
        "| --- | --- | --- | --- | --- |",
    ]
    what = {"pruning ratio": "prune a copy + eval + histograms + sparsity per layer",
            "quantization bits": "quantize a copy + eval + histograms + grid + error per layer",
            "temperature": "teacher's softened probabilities for one image + entropy",
            "clusters": "k-means sharing of a copy + eval + packed-size breakdown"}
    for name, r in sliders["sliders"].items():
        ok = "met" if r["p50_s"] <= 1.0 else "**missed**"
        lines.append(f"| {name} | {what[name]} | {r['p50_s']} | {r['p95_s']} | ≤ 1 s median: {ok} |")
    lines += [
        "",
        "## App start (issue 4)",
        "",
        f"First run of `app.py` in a fresh Python process (AppTest; imports, decoding the bundled sample, "
        f"measuring the pretrained models), median of 3: **{startup:.1f} s** (goal ≤ 5 s; runs: "
        f"{', '.join(f'{s:.1f}' for s in starts)}). A browser adds its own page load on top.",
        "",
        "## Structured-pruning speedup and the memory allocator (issue 3)",
        "",
        "`python bench/latency_allocator.py --runs 2` — dense resnet20 against its structured-pruned copy "
        "(L1, local, widths multiples of 8, ≤ 50 % of the MACs), batch 256, timed in turn 25 times by "
        "`compression.metrics.compare_latency`, each run in a fresh process. A dense forward pass allocates "
        "activations of up to 16 MiB; with glibc's default settings such blocks are mapped from the OS and "
        "page-faulted in again at many passes, which costs the dense model more than the pruned one. Every "
        "latency in the project is measured with freed memory kept in the process "
        "(`compression.metrics.keep_freed_memory`), so the ratio is the convolutions' own:",
        "",
        "| process | dense (ms, median) | speedup (median) | runs |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {r['median_dense_ms']} | **{r['median_speedup']:.2f}×** | {speedups(r['runs'])} |"
          for name, r in alloc.items()],
        "",
    ]
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
