"""A class on one server: N students in real browsers on the Prune page, moving the pruning ratio.

Starts `streamlit run app.py` on a free port of 127.0.0.1 with a data folder of its own, then drives N
Playwright contexts (separate cookies and sessions) of one Debian Chromium process:

- lesson: everyone opens the same lesson link (/prune?ratio=50) and, move after move, everyone goes
  to the same position at the same moment, as a class does when the teacher says "now 70 %";
- free:   everyone opens the page and moves to positions of their own, at their own pace.

A move is one click on the slider's track (one rerun, as a mouse user makes). It is *settled* when the
page shows the new value ("Sparsity (prunable layers)  70.0 %"), no element is stale (Streamlit marks
the elements of the previous run `data-stale="true"` on their stElementContainer until the new run
replaces or drops them), no script runs (its status widget is gone) and every plotly chart has drawn.
A page load is settled the same way, counted from `goto`. Page errors are the tracebacks
(stException) and error boxes (stAlertContentError) on the page.

Server CPU and RSS are sampled (bench/app_server.py) on the server process and its children: CPU as
cores (CPU seconds / wall seconds) while pages load, while every session sits idle, during the moves
and after the sessions close; RSS warm (after one page was visited and the server went quiet), at its
peak, and 30 s after all sessions closed. The 1-minute load average is sampled with them.

    python bench/class_load.py --sessions 1 5 10 --mode lesson --moves 5 \
        --out out/class_load.json --markdown docs/LOAD.md

`--variant LABEL=OPTION=VALUE,...` runs the same sessions on a server started with Streamlit options
(e.g. `--variant gc=runner.postScriptGC=true --variant nogc=runner.postScriptGC=false`), one server per
variant, so a before/after is one command; `app=DIR` in the list runs the app of another checkout
(`git archive REV | tar -x -C DIR` makes one) — and keeps edits to this one out of a run; `env.NAME=VALUE` sets an environment
variable of the server (`env.PLAYGROUND_COMPUTE_SLOTS=0`); `serve=K` runs K app processes behind nginx
(scripts/serve_class.sh, docs/PROXY.md; each warmed up on its own port first); `jobs=K` starts
K long training runs (resnet8, 200 epochs on the bundled sample), each from a workspace of its own on the
Train page, after the warm-up and before the classes, so the class works while the job engine does
(issue 20: a 10-session lesson's p95 with 2 jobs against the same with none):

    python bench/class_load.py --sessions 10 --mode lesson --moves 5 \
        --variant no-jobs= --variant 2-jobs=jobs=2 --markdown docs/ENGINE.md

Every row also says how long the server took to answer its health check after `streamlit run` started
(`start_s`: the job engine's local cluster starts lazily, with the first job, so it is not in it) and how
long the first visit took to settle (`first_load_s`: loading the model, the data and the first charts).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_server import ROOT, TreeMonitor, start_proxied, start_server, stop_server, wait_quiet  # noqa: E402  (bench/ is no package)

CHROMIUM = "/usr/bin/chromium"
LESSON = (70, 30, 90, 60, 80, 40, 20, 95, 10, 75)      # the teacher's positions, in order
START = 50                                             # the lesson link's ratio
VIEWPORT = {"width": 1500, "height": 2400}
# every context draws as a visible tab would (no throttled timers in background contexts)
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-renderer-backgrounding",
                "--disable-background-timer-throttling", "--disable-backgrounding-occluded-windows"]

SETTLED_JS = """(target) => {
    if (document.querySelector('[data-testid=stStatusWidget], [data-testid=stSkeleton], [data-stale=true]'))
        return false;
    if (![...document.querySelectorAll('[data-testid=stPlotlyChart]')].every(c => c.querySelector('.main-svg')))
        return false;
    return [...document.querySelectorAll('[data-testid=stMetric]')]
        .some(m => m.innerText.includes('Sparsity') && m.innerText.includes(target + '.0 %'));
}"""
ERRORS_JS = """() => [...document.querySelectorAll('[data-testid=stException], [data-testid=stAlertContentError]')]
    .map(e => e.innerText.trim().split('\\n')[0].slice(0, 200))"""


# --- one student -------------------------------------------------------------------------------------------

@dataclass
class Student:
    """One browser context on the Prune page: its timings, timeouts and the errors its page showed."""
    index: int
    page: object = None
    load_s: float | None = None
    moves_s: list[float] = field(default_factory=list)
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)
    frames: int = 0             # websocket messages the server sent this page

    def count(self, websocket) -> None:
        websocket.on("framereceived", lambda _: setattr(self, "frames", self.frames + 1))


async def settled(page, target: int, timeout_s: float) -> bool:
    """Wait until the page shows `target` % sparsity with nothing stale and every chart drawn."""
    try:
        await page.wait_for_function(SETTLED_JS, arg=target, polling=100, timeout=timeout_s * 1000)
        return True
    except Exception as exc:   # playwright's TimeoutError, or a page that crashed
        print(f"not settled at {target}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return False


async def note_errors(student: Student) -> None:
    try:
        for text in await student.page.evaluate(ERRORS_JS):
            if text not in student.errors:
                student.errors.append(text)
    except Exception as exc:
        student.errors.append(f"page unreadable: {exc}")


async def open_page(browser, student: Student, url: str, timeout_s: float, ready=None,
                    viewport: dict = VIEWPORT) -> None:
    """A context of its own on `url`; student.load_s = goto → settled (else a timeout). `ready(page,
    seconds left)` says when the page has settled (default: the Prune page at START)."""
    context = await browser.new_context(viewport=viewport)
    student.page = await context.new_page()
    student.page.on("websocket", student.count)
    t0 = time.perf_counter()
    try:
        await student.page.goto(url, timeout=timeout_s * 1000)
        ok = await (ready or (lambda page, left: settled(page, START, left)))(
            student.page, timeout_s - (time.perf_counter() - t0))
    except Exception:
        ok = False
    if ok:
        student.load_s = time.perf_counter() - t0
    else:
        student.timeouts += 1
    await note_errors(student)


async def move(student: Student, target: int, timeout_s: float) -> None:
    """Click the slider's track where `target` lies (one commit, one rerun) and time until it settles."""
    page = student.page
    try:
        track = page.locator('[data-testid=stSlider] [data-orientation=horizontal][style*="relative"]').first
        box = await track.bounding_box()
        t0 = time.perf_counter()
        await page.mouse.click(box["x"] + box["width"] * target / 99, box["y"] + box["height"] / 2)
        ok = await settled(page, target, timeout_s)
    except Exception:
        ok = False
    if ok:
        student.moves_s.append(time.perf_counter() - t0)
    else:
        student.timeouts += 1
    await note_errors(student)


async def lesson_moves(students: list[Student], k: int, timeout_s: float, think_s: float) -> None:
    """Everyone moves to the same position at the same moment; the next move when all have settled."""
    for target in LESSON[:k]:
        await asyncio.gather(*(move(s, target, timeout_s) for s in students if s.load_s is not None))
        await asyncio.sleep(think_s)


async def free_moves(students: list[Student], k: int, timeout_s: float, think_s: float) -> None:
    """Each student their own positions (no two alike at one step) and pace."""
    async def play(student: Student) -> None:
        rng, here = random.Random(student.index), START
        for _ in range(k):
            # not next to the thumb: a click there grabs the thumb and leaves the value (no rerun)
            target = rng.choice([p for p in range(1, 99) if abs(p - here) > 2])
            await move(student, target, timeout_s)
            here = target
            await asyncio.sleep(think_s * rng.uniform(0.5, 1.5))
    await asyncio.gather(*(play(s) for s in students if s.load_s is not None))


# --- one class ---------------------------------------------------------------------------------------------

def percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    a = np.asarray(values)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 2),
            "p95": round(float(np.percentile(a, 95)), 2), "max": round(float(a.max()), 2)}


def machine_figures(monitor: TreeMonitor, client: TreeMonitor, times: tuple, pages: int, moves: int) -> dict:
    """Server and client CPU, server RSS and load average over a class's phases, `times` = (pages opened,
    idle from, moves from, moves done, sessions closed, end): the part of a row this bench and
    bench/protocol_client.py share. CPU seconds per page and per settled move are the server's own work,
    whatever else runs."""
    t_load, t_idle, t_moves, t_close, t_closed, t_end = times
    return {
        "server_cores": {"loading": round(monitor.cores(t_load, t_idle), 2),
                         "idle": round(monitor.cores(t_idle, t_moves), 2),
                         "moving": round(monitor.cores(t_moves, t_close), 2),
                         "after_close": round(monitor.cores(t_closed, t_end), 2)},
        "server_cpu_s_per_load": round(monitor.cores(t_load, t_idle) * (t_idle - t_load) / pages, 2),
        "server_cpu_s_per_move": round(monitor.cores(t_moves, t_close) * (t_close - t_moves) / moves, 2)
        if moves else None,
        "browser_cores": {"loading": round(client.cores(t_load, t_idle), 2),
                          "idle": round(client.cores(t_idle, t_moves), 2),
                          "moving": round(client.cores(t_moves, t_close), 2)},
        "server_rss_mb": {"peak": round(monitor.rss_peak_mb(t_load, t_end)),
                          "after_close": round(monitor.rss_mb(t_end))},
        "load_average": {"start": round(monitor.load_max(t_load, t_load), 2),
                         "max": round(monitor.load_max(t_load, t_end), 2)},
        "wall_s": round(t_end - t_load, 1),
    }


async def run_class(base: str, monitor: TreeMonitor, n: int, mode: str, k: int, *, load_timeout_s: float,
                    move_timeout_s: float, idle_s: float, after_s: float, think_s: float,
                    screenshot: Path | None = None) -> dict:
    """N students open the page together, sit idle `idle_s`, make `k` moves, close; then `after_s` of
    quiet. Returns the figures of this class (see the module docstring)."""
    from playwright.async_api import async_playwright

    url = f"{base}/prune?ratio={START}"
    students = [Student(i) for i in range(n)]
    client = TreeMonitor(os.getpid(), exclude=monitor.root.pid)        # this script, Playwright, Chromium
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        t_load = time.time()
        await asyncio.gather(*(open_page(browser, s, url, load_timeout_s) for s in students))
        t_idle, frames = time.time(), sum(s.frames for s in students)
        await asyncio.sleep(idle_s)
        t_moves, idle_frames = time.time(), sum(s.frames for s in students) - frames
        await (lesson_moves if mode == "lesson" else free_moves)(students, k, move_timeout_s, think_s)
        t_close = time.time()
        if screenshot is not None:
            try:
                await students[-1].page.screenshot(path=str(screenshot), full_page=True, timeout=120_000)
            except Exception as exc:        # a starved browser: the figures still count
                print(f"no screenshot: {exc}", file=sys.stderr)
        await browser.close()
    t_closed = time.time()
    client.stop()
    await asyncio.sleep(after_s)
    t_end = time.time()
    return {
        "sessions": n, "mode": mode, "moves_each": k,
        "page_load_s": percentiles([s.load_s for s in students if s.load_s is not None]),
        "move_settle_s": percentiles([t for s in students for t in s.moves_s]),
        "moves_tried": sum(len(s.moves_s) for s in students) + sum(s.timeouts for s in students if s.load_s),
        "timeouts": sum(s.timeouts for s in students),
        "load_timeouts": sum(s.load_s is None for s in students),
        "page_errors": sorted({e for s in students for e in s.errors}),
        "idle_messages": idle_frames,        # websocket messages to all idle sessions (0: nothing polls)
        **machine_figures(monitor, client, (t_load, t_idle, t_moves, t_close, t_closed, t_end), pages=n,
                          moves=sum(len(s.moves_s) for s in students)),
    }


async def first_visit(base: str, timeout_s: float) -> float:
    """Open the page, then reload it until the background accuracy curve it starts has been drawn (a
    one-off per server): the class meets a warm server. Returns the first load's seconds."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        student, end = Student(0), time.time() + timeout_s
        await open_page(browser, student, f"{base}/prune?ratio={START}", timeout_s)
        while time.time() < end and await student.page.get_by_text("Computing the accuracy").count():
            await asyncio.sleep(5)
            await student.page.reload()
            await settled(student.page, START, timeout_s)
        await browser.close()
    if student.load_s is None:
        raise RuntimeError(f"the first visit did not settle within {timeout_s:.0f} s: {student.errors}")
    return student.load_s


async def start_jobs(base: str, k: int, timeout_s: float) -> list[str]:
    """K students (workspaces of their own) each start a long training run on the Train page and close
    the tab: the jobs go on without it. Returns what each page said once its job was accepted."""
    from playwright.async_api import async_playwright

    said = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(k):
            context = await browser.new_context(viewport=VIEWPORT)
            page = await context.new_page()
            await page.goto(f"{base}/train", timeout=timeout_s * 1000)
            await page.get_by_label("Epochs", exact=True).fill("200")
            await page.get_by_role("button", name="Start training").click()
            status = page.get_by_text("waiting for a worker").or_(page.get_by_text("step ")).first
            await status.wait_for(timeout=timeout_s * 1000)
            said.append((await status.inner_text()).strip()[:120])
            await context.close()
        await browser.close()
    return said


def warm_up(base: str, monitor: TreeMonitor, timeout_s: float) -> dict:
    """One visit, so that the models, data and caches a first visitor loads are in; then quiet."""
    first = asyncio.run(first_visit(base, timeout_s))
    wait_quiet(monitor, timeout_s=60)
    return {"first_load_s": round(first, 2), "rss_warm_mb": round(monitor.rss_mb(time.time()))}


# --- the command -------------------------------------------------------------------------------------------

MAX_SESSIONS = 40          # one Chromium on two cores: more contexts measure the browser, not the server


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """`nogc=runner.postScriptGC=false,app=/tmp/old` → ("nogc", {"runner.postScriptGC": "false", "app": …})."""
    label, _, spec = text.partition("=")
    return label, dict(item.split("=", 1) for item in spec.split(",") if item)


def profile(pid: int, out: Path) -> subprocess.Popen:
    """py-spy sampling the server's Python stacks (50 a second, every thread) into `out`, one line per
    stack ("frame;frame;… count", py-spy's raw format) until interrupted."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "50", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_variant(label: str, options: dict[str, str], args) -> list[dict]:
    """One fresh server (its own data folder) with these options; every class size in turn on it."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="class-load-") as home:
        app_dir = Path(options.get("app", ROOT))
        t_start = time.time()
        env = {k[4:]: v for k, v in options.items() if k.startswith("env.")}
        if "serve" in options:          # serve=K: K app processes behind nginx (scripts/serve_class.sh)
            proc, base, backends = start_proxied(Path(home), int(options["serve"]), env)
        else:
            proc, base = start_server(Path(home), {k: v for k, v in options.items()
                                                   if k not in ("app", "jobs") and not k.startswith("env.")},
                                      log=Path(home) / "server.log", app_dir=app_dir, env=env)
            backends = [base]
        start_s = round(time.time() - t_start, 2)
        monitor = TreeMonitor(proc.pid)
        try:
            warms = [warm_up(b, monitor, args.load_timeout) for b in backends]     # every app process warm
            warm = {"start_s": start_s, "first_load_s": warms[0]["first_load_s"], "rss_warm_mb": warms[-1]["rss_warm_mb"]}
            if int(options.get("jobs", 0)):
                warm["jobs_started"] = asyncio.run(start_jobs(base, int(options["jobs"]), args.load_timeout))
                time.sleep(10)          # the local cluster has started and the first job is training
            for n in args.sessions:
                shot = Path(args.screenshots) / f"prune-{label}-{args.mode}-{n}.png" if args.screenshots else None
                spy = profile(proc.pid, Path(args.py_spy) / f"{label}-{args.mode}-{n}.txt") if args.py_spy else None
                row = asyncio.run(run_class(base, monitor, n, args.mode, args.moves,
                                            load_timeout_s=args.load_timeout, move_timeout_s=args.move_timeout,
                                            idle_s=args.idle, after_s=args.after, think_s=args.think,
                                            screenshot=shot))
                if spy is not None:
                    spy.send_signal(signal.SIGINT)        # py-spy writes its file when interrupted
                    spy.wait(60)
                row.update(variant=label, options=options, **warm)
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            monitor.stop()
            stop_server(proc)
    return rows


def cell(stats: dict) -> str:
    return "—" if not stats["n"] else f"{stats['p50']} / {stats['p95']} / {stats['max']}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| variant | mode | sessions | page load p50 / p95 / max (s) | move settle p50 / p95 / max (s) "
            "| timed out: loads, moves | page errors | server cores: loading / idle / moving / after close "
            "| server CPU s per page, per move | browser cores loading | RSS warm / peak / 30 s after close (MB) "
            "| load avg start / max | server start, first page (s) |\n" + "| --- " * 13 + "|\n")
    return head + "".join(
        f"| {r['variant']} | {r['mode']} | {r['sessions']} | {cell(r['page_load_s'])} | {cell(r['move_settle_s'])} "
        f"| {r['load_timeouts']} of {r['sessions']}, {r['timeouts'] - r['load_timeouts']} of {r['moves_tried']} "
        f"| {len(r['page_errors'])} | {r['server_cores']['loading']} / {r['server_cores']['idle']} / "
        f"{r['server_cores']['moving']} / {r['server_cores']['after_close']} | {r['server_cpu_s_per_load']}, "
        f"{r['server_cpu_s_per_move'] or '—'} | {r['browser_cores']['loading']} | {r['rss_warm_mb']} / "
        f"{r['server_rss_mb']['peak']} / {r['server_rss_mb']['after_close']} | {r['load_average']['start']} / "
        f"{r['load_average']['max']} | {r.get('start_s', '—')}, {r.get('first_load_s', '—')} |\n" for r in rows)


def class_options(p: argparse.ArgumentParser) -> None:
    """The options this bench and bench/protocol_client.py share."""
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 5], help="class sizes, run in turn")
    p.add_argument("--moves", type=int, default=5, help=f"moves per student (at most {len(LESSON)})")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=OPTION=VALUE,…",
                   help="a server with these Streamlit options (repeatable; default: the app's config)")
    p.add_argument("--load-timeout", type=float, default=240, help="seconds a page may take to settle")
    p.add_argument("--move-timeout", type=float, default=30, help="seconds a move may take to settle")
    p.add_argument("--idle", type=float, default=10, help="seconds every session sits idle before moving")
    p.add_argument("--after", type=float, default=30, help="seconds measured after all sessions closed")
    p.add_argument("--think", type=float, default=1.0, help="seconds between a student's moves")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--markdown", help="append the table (with the command and load average) to this file")


def write_rows(script: str, argv: list[str] | None, args, rows: list[dict]) -> None:
    """--out (JSON with the command) and --markdown (the table appended, after the command)."""
    command = f"python bench/{script} " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": command, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\n`{command}` ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})\n\n"
                    + markdown_table(rows))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["lesson", "free"], default="lesson")
    class_options(p)
    p.add_argument("--py-spy", help="folder for a py-spy profile of the server during each class")
    p.add_argument("--screenshots", help="folder for a full-page screenshot of one student after the moves")
    args = p.parse_args(argv)
    if max(args.sessions) > MAX_SESSIONS or min(args.sessions) < 1 or not 0 <= args.moves <= len(LESSON):
        p.error(f"sessions 1..{MAX_SESSIONS}, moves 0..{len(LESSON)}")
    if args.screenshots:
        Path(args.screenshots).mkdir(parents=True, exist_ok=True)
    rows = [row for text in (args.variant or ["app config="]) for row in run_variant(*parse_variant(text), args)]
    write_rows("class_load.py", argv, args, rows)
    print(markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
