"""A class on one server without browsers: N students as Streamlit sessions over the websocket, in one process.

bench/class_load.py drives Chromium contexts on the server's own two cores; from ten students on, the
browsers (Streamlit's frontend bundle, plotly drawing: about 9 CPU s a page) take the machine, and the
figures measure them, not the server. Here each student is what the browser is to the server and no more
(bench/st_session.py: the websocket, Streamlit's protobufs, the page's elements and widget state): it
opens the Prune page's lesson link (/prune?ratio=50), sits idle, and moves the pruning ratio, in a
lesson (everyone to the same position at the same moment) or in free play (own positions, own pace),
as class_load's students do. A load or a move is settled when a run that started after it was asked for
has finished and the page's metric reads the new value ("Sparsity (prunable layers)  70.0 %").

The rows are class_load's (same keys, percentiles, server CPU and RSS sampling, idle phase, 30 s after
close, table; `browser_cores` is this client's process), with `client: protocol` and the variant
labelled "(client: protocol)", so they go in one table with the browser rows. `--watch K` adds K
Chromium students of class_load alongside, making the same moves (their figures under `watch`: a check
that the protocol students settle no later than a browser on the same server), and `--screenshots DIR`
saves the first one's full page after the moves:

    python bench/protocol_client.py --sessions 1 5 10 20 30 --mode lesson free --moves 5 \
        --out out/protocol.json --watch 1 --screenshots out/protocol

One fresh server per mode and variant (`--variant` as class_load's), every class size in turn on it, so
a lesson's positions computed by a smaller class are cached for the larger ones, as in class_load;
`--fresh` starts one per class size instead (a class of 30 that meets a server which has computed nothing
but the first visit's page). Traffic goes to 127.0.0.1 only; every wait is bounded (load and move
timeouts as class_load's).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import class_load as L  # noqa: E402  (bench/ is no package)
from app_server import ROOT, TreeMonitor, start_server, stop_server, wait_quiet  # noqa: E402
from st_session import PAGE, Session  # noqa: E402

CURVE_PENDING = "Computing the accuracy-against-ratio curve"      # the first visit's background curve
MAX_SESSIONS = 100


# --- one class -------------------------------------------------------------------------------------------

async def lesson_moves(players: list, k: int, timeout_s: float, think_s: float) -> None:
    """Everyone (protocol students and watching browsers) to the same position at the same moment."""
    for target in L.LESSON[:k]:
        await asyncio.gather(*(mover(target, timeout_s) for _, mover in players))
        await asyncio.sleep(think_s)


async def free_moves(players: list, k: int, timeout_s: float, think_s: float) -> None:
    """Each student their own positions and pace (class_load's: the same positions for the same index)."""
    async def play(index: int, mover) -> None:
        rng, here = random.Random(index), L.START
        for _ in range(k):
            target = rng.choice([p for p in range(1, 99) if p != here])
            await mover(target, timeout_s)
            here = target
            await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))
    await asyncio.gather(*(play(i, mover) for i, mover in players))


async def run_class(base: str, monitor: TreeMonitor, n: int, mode: str, k: int, *, load_timeout_s: float,
                    move_timeout_s: float, idle_s: float, after_s: float, think_s: float, watch: int = 0,
                    screenshot: Path | None = None) -> dict:
    """class_load.run_class with protocol students (and `watch` browsers alongside); the same row."""
    url = f"{base}/{PAGE}?ratio={L.START}"
    students = [Session(i, base, query=f"ratio={L.START}") for i in range(n)]
    watchers = [L.Student(n + i) for i in range(watch)]
    client = TreeMonitor(os.getpid(), exclude=monitor.root.pid)        # this process (and any Chromium)
    pw = browser = None
    if watch:
        from playwright.async_api import async_playwright
        pw = await async_playwright().start()
        browser = await pw.chromium.launch(executable_path=L.CHROMIUM, args=L.BROWSER_ARGS)
    try:
        t_load = time.time()
        await asyncio.gather(*(s.open(load_timeout_s, L.START) for s in students),
                             *(L.open_page(browser, w, url, load_timeout_s) for w in watchers))
        t_idle, frames = time.time(), sum(s.frames for s in students) + sum(w.frames for w in watchers)
        await asyncio.sleep(idle_s)
        t_moves = time.time()
        idle_frames = sum(s.frames for s in students) + sum(w.frames for w in watchers) - frames
        players = [(s.index, s.move) for s in students if s.load_s is not None]
        players += [(w.index, lambda t, left, w=w: L.move(w, t, left)) for w in watchers if w.load_s is not None]
        await (lesson_moves if mode == "lesson" else free_moves)(players, k, move_timeout_s, think_s)
        t_close = time.time()
        for w in watchers:
            await L.note_errors(w)
        if screenshot is not None and watchers:
            try:
                await watchers[0].page.screenshot(path=str(screenshot), full_page=True, timeout=120_000)
            except Exception as exc:        # a starved browser: the figures still count
                print(f"no screenshot: {exc}", file=sys.stderr)
    finally:
        await asyncio.gather(*(s.close() for s in students), return_exceptions=True)
        if browser is not None:
            await browser.close()
            await pw.stop()
    t_closed = time.time()
    client.stop()
    await asyncio.sleep(after_s)
    t_end = time.time()
    settled = sum(len(s.moves_s) for s in students)
    return {
        "client": "protocol", "sessions": n, "mode": mode, "moves_each": k,
        "page_load_s": L.percentiles([s.load_s for s in students if s.load_s is not None]),
        "move_settle_s": L.percentiles([t for s in students for t in s.moves_s]),
        "moves_tried": settled + sum(s.timeouts for s in students if s.load_s),
        "timeouts": sum(s.timeouts for s in students),
        "load_timeouts": sum(s.load_s is None for s in students),
        "page_errors": sorted({e for s in students for e in s.errors}),
        "idle_messages": idle_frames,
        "widget_types_not_sent": sorted({t for s in students for t in s.unsent}),
        **L.machine_figures(monitor, client, (t_load, t_idle, t_moves, t_close, t_closed, t_end),
                            pages=n + watch, moves=settled + sum(len(w.moves_s) for w in watchers)),
        "moves_by_student": [[round(t, 2) for t in s.moves_s] for s in students],
        "watch": {"browsers": watch, "moves_by_browser": [[round(t, 2) for t in w.moves_s] for w in watchers],
                  "page_load_s": L.percentiles([w.load_s for w in watchers if w.load_s is not None]),
                  "move_settle_s": L.percentiles([t for w in watchers for t in w.moves_s]),
                  "timeouts": sum(w.timeouts for w in watchers),
                  "page_errors": sorted({e for w in watchers for e in w.errors})} if watch else None,
    }


async def first_visit(base: str, timeout_s: float) -> float:
    """class_load.first_visit over the protocol: open the page, and open it again until the background
    accuracy curve of the first visit has been drawn. Returns the first load's seconds."""
    first, end = None, time.time() + timeout_s
    while True:
        student = Session(0, base, query=f"ratio={L.START}")
        await student.open(max(10.0, end - time.time()), L.START)
        await student.close()
        if first is None:
            if student.load_s is None:
                raise RuntimeError(f"the first visit did not settle within {timeout_s:.0f} s: {student.errors}")
            first = student.load_s
        if not student.shows(CURVE_PENDING) or time.time() > end:
            return first
        await asyncio.sleep(5)


def warm_up(base: str, monitor: TreeMonitor, timeout_s: float) -> dict:
    first = asyncio.run(first_visit(base, timeout_s))
    wait_quiet(monitor, timeout_s=60)
    return {"first_load_s": round(first, 2), "rss_warm_mb": round(monitor.rss_mb(time.time()))}


# --- the command -----------------------------------------------------------------------------------------

def run_variant(label: str, options: dict[str, str], mode: str, sizes: list[int], args) -> list[dict]:
    """One fresh server with these options (class_load's variants) for one mode; these class sizes on it."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="protocol-load-") as home:
        t_start = time.time()
        proc, base = start_server(Path(home), {k: v for k, v in options.items()
                                               if k not in ("app", "jobs") and not k.startswith("env.")},
                                  log=Path(home) / "server.log", app_dir=Path(options.get("app", ROOT)),
                                  env={k[4:]: v for k, v in options.items() if k.startswith("env.")})
        start_s = round(time.time() - t_start, 2)
        monitor = TreeMonitor(proc.pid)
        try:
            warm = {"start_s": start_s, **warm_up(base, monitor, args.load_timeout)}
            if int(options.get("jobs", 0)):
                warm["jobs_started"] = asyncio.run(L.start_jobs(base, int(options["jobs"]), args.load_timeout))
                time.sleep(10)
            for n in sizes:
                shot = (Path(args.screenshots) / f"prune-{label}-protocol-{mode}-{n}.png"
                        if args.screenshots and args.watch else None)
                row = asyncio.run(run_class(base, monitor, n, mode, args.moves, load_timeout_s=args.load_timeout,
                                            move_timeout_s=args.move_timeout, idle_s=args.idle,
                                            after_s=args.after, think_s=args.think, watch=args.watch,
                                            screenshot=shot))
                row.update(options=options, **warm, variant=f"{label} (client: protocol)")
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            monitor.stop()
            stop_server(proc)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["lesson", "free"], nargs="+", default=["lesson"],
                   help="one fresh server per mode (as one class_load command per mode)")
    L.class_options(p)
    p.add_argument("--fresh", action="store_true",
                   help="a fresh server for every class size: no class meets positions an earlier one computed")
    p.add_argument("--watch", type=int, default=0, help="Chromium students (class_load's) alongside")
    p.add_argument("--screenshots", help="folder for a full-page screenshot of the first watching browser")
    args = p.parse_args(argv)
    if (max(args.sessions) > MAX_SESSIONS or min(args.sessions) < 1 or not 0 <= args.moves <= len(L.LESSON)
            or not 0 <= args.watch <= L.MAX_SESSIONS):
        p.error(f"sessions 1..{MAX_SESSIONS}, moves 0..{len(L.LESSON)}, watch 0..{L.MAX_SESSIONS}")
    if args.screenshots:
        Path(args.screenshots).mkdir(parents=True, exist_ok=True)
    groups = [[n] for n in args.sessions] if args.fresh else [args.sessions]
    rows = [row for mode in args.mode for text in (args.variant or ["app config="]) for sizes in groups
            for row in run_variant(*L.parse_variant(text), mode, sizes, args)]
    L.write_rows("protocol_client.py", argv, args, rows)
    print(L.markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
