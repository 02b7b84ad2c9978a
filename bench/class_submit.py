"""30 students submit to one class within a minute: how long does a submission take, and the board?

    python bench/class_submit.py [--students 30] [--spread 60] [--arch resnet8] [--width 0.5] [--json]

Library level (no Streamlit), one process standing for one app server, on a fresh store in a temporary
folder (SQLite; PostgreSQL when PLAYGROUND_DB_URL is set):

1. The teacher creates a class with the built-in exercise "smallest-85" (compression.classes.create_class),
   which registers and measures the shipped resnet20 as the starting model (before the clock starts).
2. Each student is a thread. At its moment — spread evenly at random over `--spread` seconds (seeded;
   0 = all at once) — it creates a workspace, makes a variant of its own (a fresh `--arch` at `--width`
   with its own seed, magnitude-pruned to 30–90 %), keeps it (Store.keep) and submits it
   (compression.classes.submit: the server loads the stored weights, measures them on the 1,000-image
   eval subset, judges and records the entry). Submit latency is the time of submit() alone.
   Measurements run one at a time in a process (compression/remeasure.py), so a burst queues.
3. With every entry in, board() (the ranked table, points, frontier, regions, references) is timed as
   the median of 20 calls, and board_version() (what a page polls every second) of 200.

Prints wall time (first keep to last submit), submit latency p50 / p95 / max, keep latency p50, the
board timings, and the 1-minute load average before and after (the machine is shared).
"""
import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from compression.board import board, board_version  # noqa: E402
from compression.classes import create_class, list_challenges, submit  # noqa: E402
from compression.metrics import Metrics  # noqa: E402
from compression.models import create_model  # noqa: E402
from compression.prune import prune  # noqa: E402
from compression.store import open_store  # noqa: E402
from compression.variant import Variant  # noqa: E402


def student(store, code, challenge_id, seed, at, t0, args, out, errors):
    """One student: wait for its moment, keep a variant of its own, submit it."""
    time.sleep(max(0.0, t0 + at - time.perf_counter()))
    try:
        torch.manual_seed(seed)
        model = prune(create_model(args.arch, width=args.width), random.Random(seed).uniform(0.3, 0.9)).eval()
        start = time.perf_counter()
        ws, _ = store.create_workspace()
        vid = store.keep(ws, Variant(f"student {seed}", model, "pruned", {"seed": seed}, None, Metrics()))
        kept = time.perf_counter()
        entry = submit(store, code, challenge_id, ws, vid, f"Student {seed:02d}")
        end = time.perf_counter()
        out.append({"seed": seed, "keep_s": kept - start, "submit_s": end - kept, "start": start - t0,
                    "end": end - t0, "passed": entry.verdict.passed})
    except Exception as exc:                      # reported, and the run counts as failed
        errors.append(f"student {seed}: {type(exc).__name__}: {exc}")


def percentile(values, q):
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def timed(call, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--students", type=int, default=30)
    parser.add_argument("--spread", type=float, default=60.0, help="seconds the submissions are spread over")
    parser.add_argument("--arch", default="resnet8")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as home:
        store = open_store(home)
        _, token, code = create_class(store, "Bench class", exercises=["smallest-85"], rate_limit=3)
        [challenge] = list_challenges(store, code)
        rng = random.Random(args.seed)
        moments = sorted(rng.uniform(0, args.spread) for _ in range(args.students))
        out, errors, threads = [], [], []
        load_before = os.getloadavg()[0]
        t0 = time.perf_counter()
        for i, at in enumerate(moments):
            thread = threading.Thread(target=student, args=(store, code, challenge.id, 100 + i, at, t0, args, out,
                                                            errors))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        wall = max(r["end"] for r in out) - min(r["start"] for r in out) if out else 0.0
        load_after = os.getloadavg()[0]
        rows = len(board(store, code, challenge.id).rows)
        board_s = timed(lambda: board(store, code, challenge.id), 20)
        version_s = timed(lambda: board_version(store, code, challenge.id), 200)
        store.close()

    submits = [r["submit_s"] for r in out]
    result = {
        "students": args.students, "spread_s": args.spread, "arch": args.arch, "width": args.width,
        "database": "postgresql" if os.environ.get("PLAYGROUND_DB_URL") else "sqlite",
        "torch_threads": torch.get_num_threads(), "errors": errors, "entries_on_board": rows,
        "wall_s": round(wall, 2),
        "submit_p50_s": round(percentile(submits, 50), 3) if len(submits) > 1 else None,
        "submit_p95_s": round(percentile(submits, 95), 3) if len(submits) > 1 else None,
        "submit_max_s": round(max(submits), 3) if submits else None,
        "keep_p50_s": round(statistics.median(r["keep_s"] for r in out), 3) if out else None,
        "board_ms": round(1000 * board_s, 2), "board_version_ms": round(1000 * version_s, 3),
        "load_avg_1min_before": load_before, "load_avg_1min_after": load_after,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")
    return 1 if errors or rows != args.students else 0


if __name__ == "__main__":
    sys.exit(main())
