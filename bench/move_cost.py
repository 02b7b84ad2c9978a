"""CPU seconds of one slider move on the Prune page, in one process, without a browser: the app driven by
Streamlit's AppTest on the shipped models. A move reruns what the browser would ask for: the whole app
(`--rerun app`, as every move did before issue 19's fragments) or only the fragment holding the slider
(`--rerun fragment`). Process CPU time is counted (not wall time), so a busy machine slows the run but
hardly moves the figure; no background analysis runs while moves are counted.

Positions already visited ("warm": the pruned model and its accuracy are cached server-wide, as for a
class that follows a lesson) and new ones ("cold": pruning and evaluating the 1,000 eval images) are
counted apart. Run it from the checkout to measure (its `ui` and `compression` are imported):

    PYTHONPATH=. python bench/move_cost.py --rerun fragment --moves 20
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path.cwd()
WARM = (30, 40, 50, 60, 70)


def fragment_runner(at, widget):
    """Rerun only the fragment that draws `widget`, as the browser asks (tests/app_fixtures.fragment_run)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from app_fixtures import fragment_run
    return fragment_run(at, widget)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rerun", choices=["app", "fragment"], required=True)
    p.add_argument("--moves", type=int, default=20, help="warm moves counted (and a quarter as many cold)")
    args = p.parse_args(argv)
    os.environ.setdefault("PLAYGROUND_HOME", tempfile.mkdtemp(prefix="move-cost-"))
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.run()
    at.switch_page("app_pages/prune.py").run()
    from ui import analyses

    def move(ratio: int) -> float:
        slider = at.slider(key="prune_ratio").set_value(ratio)
        t0 = time.process_time()
        (fragment_runner(at, slider) if args.rerun == "fragment" else at.run())
        assert not at.exception, [e.value for e in at.exception]
        return time.process_time() - t0

    for ratio in WARM:                          # every warm position computed once, curves finished
        move(ratio)
    while analyses.pool().running() or any(t.active for t in analyses.pool().tasks.values()):
        time.sleep(1)
    at.run()
    warm = [move(WARM[i % len(WARM)]) for i in range(args.moves)]
    cold = [move(r) for r in range(81, 81 + max(1, args.moves // 4))]
    row = {"rerun": args.rerun, "checkout": str(ROOT), "warm_cpu_s": sorted(warm), "cold_cpu_s": sorted(cold),
           "warm_p50": round(sorted(warm)[len(warm) // 2], 3), "cold_p50": round(sorted(cold)[len(cold) // 2], 3),
           "load_average": os.getloadavg()[0]}
    print(json.dumps(row))
    analyses.pool().shutdown()
    return row


if __name__ == "__main__":
    main()
