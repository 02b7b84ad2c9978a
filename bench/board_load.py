"""A class submits to its board: N students in real browsers submit within a minute while the board is projected.

Starts `streamlit run app.py` on a free port of 127.0.0.1 with a data folder of its own (bench/app_server.py),
then, through the library on the same folder (before any clock starts):

- seeds N student workspaces, each keeping one variant of its own (the shipped resnet8 or resnet20,
  alternately, magnitude-pruned by a different amount from 10 to 90 %: no two weights files alike, so the
  server's measurement cache never answers for another student) and joined to the class (the workspace
  remembers its class in the store, as when a student types the code on the Class board);
- creates the class as the teacher, with the built-in exercise "smallest-85" (starting model resnet20);
- warms the server up in a class of its own: one browser opens Compare & Download, submits (the server's
  first measurement loads the eval set and the models' code) and opens a presenter board; then quiet.

The class, in contexts of one Debian Chromium (separate cookies and sessions, as separate laptops):

1. The presenter board `/board?join=CODE&present=1` opens (the projector; it polls every 2 s).
2. The N students open Compare & Download with their workspace links (`/compare?ws=TOKEN`) together.
   A page load is *settled* (goto → settled) as in bench/class_load.py: no script runs, nothing is stale
   or a skeleton, every plotly chart has drawn, and here the submit form ("Display name on the board")
   is on the page.
3. Once every page has loaded, each student waits for a moment of its own, uniformly at random within
   `--spread` seconds (seeded), types a display name and clicks Submit. *Submit latency*: click → the
   page confirms ("Submitted…"; the server measures the variant on the 1,000-image eval subset first,
   one measurement at a time, so a burst queues). A refusal or error box counts as a page error.
4. *Board latency*: the k-th confirmed submission (in time order) → the presenter board's table first
   shows k entries (its DOM polled every 0.2 s). It includes the board's 2 s poll; an entry the board
   showed before the student's page confirmed counts 0 s.

Reports p50 / p95 / max of each, timeouts (--load-timeout per page, --submit-timeout per submission,
--board-timeout for the board after the last confirmation), page errors (stException,
stAlertContentError), entries on the board (the page's table and the library's board()), server CPU in
cores (loading, submitting, after close) and CPU s per page and per submission, browser CPU (Chromium,
Playwright and this script) in cores and CPU s per page, server RSS (warm, peak, 30 s after the class closed) and the 1-minute load average.
`--screenshot PATH` saves the presenter board of the largest class at the end.

    python bench/board_load.py --students 10 30 --spread 60 --out out/board_load.json \
        --markdown docs/CLASS_BOARD.md --screenshot docs/screenshots/board-presenter-30.png
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app_server import ROOT, TreeMonitor, start_server, stop_server, wait_quiet  # noqa: E402  (bench/ is no package)
import class_load  # noqa: E402
from class_load import BROWSER_ARGS, CHROMIUM, VIEWPORT, Student, cell, note_errors, percentiles  # noqa: E402

sys.path.insert(0, str(ROOT))
from compression.board import board  # noqa: E402
from compression.classes import create_class, join_class, list_challenges, resolve_start  # noqa: E402
from compression.files import load_model  # noqa: E402
from compression.metrics import measure  # noqa: E402
from compression.prune import prune  # noqa: E402
from compression.store import open_store  # noqa: E402
from compression.variant import Variant  # noqa: E402

EXERCISE = "smallest-85"
ARCHS = ("resnet8", "resnet20")
PRESENTER_VIEWPORT = {"width": 1600, "height": 1000}
SCREENSHOT_VIEWPORT = {"width": 1600, "height": 2900}      # Streamlit scrolls inside: full_page is not enough
SETTLED_JS = """(marker) => {
    if (document.querySelector('[data-testid=stStatusWidget], [data-testid=stSkeleton], [data-stale=true]'))
        return false;
    if (![...document.querySelectorAll('[data-testid=stPlotlyChart]')].every(c => c.querySelector('.main-svg')))
        return false;
    return document.body.innerText.includes(marker);
}"""
FORM_MARKER = "Display name on the board"
BOARD_MARKER = "Join code:"
CONFIRMED_JS = """() => {
    const alerts = [...document.querySelectorAll('[data-testid=stAlert]')].map(a => a.innerText);
    if (alerts.some(t => t.includes('Submitted'))) return 'ok';
    const bad = document.querySelector('[data-testid=stException], [data-testid=stAlertContentError]');
    return bad ? 'refused: ' + bad.innerText.trim().split('\\n')[0].slice(0, 200) : false;
}"""
ROWS_JS = "() => document.querySelectorAll('[data-testid=stTable] tbody tr').length"


@dataclass
class Submitter(Student):
    """One student on Compare & Download: its workspace link, display name, moment and timings."""
    token: str = ""
    name: str = ""
    at: float = 0.0                        # seconds after every page loaded
    submit_s: float | None = None
    confirmed: float | None = None         # time.time() when the page confirmed


# --- before the class: the library on the server's folder -------------------------------------------------

def seed(home: Path, n: int, tag: str) -> tuple[str, list[str]]:
    """A class with EXERCISE and n student workspaces, each with one pruned variant and joined to it:
    (join code, workspace tokens)."""
    store = open_store(home)
    try:
        _, _, code = create_class(store, f"{tag} class of {n}", exercises=[EXERCISE])
        shipped = {arch: load_model(ROOT / "assets" / f"{arch}.safetensors")[0] for arch in ARCHS}
        parents = {arch: resolve_start(store, arch) for arch in ARCHS}
        tokens = []
        for i in range(n):
            arch, amount = ARCHS[i % 2], round(0.1 + 0.8 * i / max(1, n - 1), 3)
            model = prune(shipped[arch], amount)
            ws, token = store.create_workspace()
            store.keep(ws, Variant(f"{arch} pruned {100 * amount:.1f} %", model, "pruned", {"amount": amount},
                                   parents[arch], measure(model)))
            join_class(store, code, ws)
            tokens.append(token)
        return code, tokens
    finally:
        store.close()


def board_entries(home: Path, code: str) -> int:
    store = open_store(home)
    try:
        [challenge] = list_challenges(store, code)
        return len(board(store, code, challenge.id).rows)
    finally:
        store.close()


# --- in the browser --------------------------------------------------------------------------------------

async def settled(page, marker: str, timeout_s: float) -> bool:
    try:
        await page.wait_for_function(SETTLED_JS, arg=marker, polling=100, timeout=max(1.0, timeout_s) * 1000)
        return True
    except Exception as exc:   # playwright's TimeoutError, or a page that crashed
        print(f"not settled ({marker}): {str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return False


async def open_page(browser, student: Student, url: str, marker: str, timeout_s: float,
                    viewport: dict = VIEWPORT) -> None:
    """class_load.open_page, settled when the page shows `marker`."""
    await class_load.open_page(browser, student, url, timeout_s, ready=lambda page, left: settled(page, marker, left),
                               viewport=viewport)


async def submit(student: Submitter, t_start: float, timeout_s: float) -> None:
    """At its moment: type the display name, click Submit, time until the page confirms."""
    await asyncio.sleep(max(0.0, t_start + student.at - time.time()))
    page = student.page
    try:
        form = page.locator('[data-testid=stForm]').filter(has_text=FORM_MARKER)
        await form.get_by_label(FORM_MARKER).fill(student.name)
        t0 = time.perf_counter()
        await form.get_by_role("button", name="Submit").click()
        answer = await page.wait_for_function(CONFIRMED_JS, polling=100, timeout=timeout_s * 1000)
        outcome = await answer.json_value()
    except Exception as exc:
        outcome = f"timeout: {str(exc).splitlines()[0][:120]}"
    if outcome == "ok":
        student.submit_s, student.confirmed = time.perf_counter() - t0, time.time()
    elif outcome.startswith("timeout"):
        student.timeouts += 1
        print(f"{student.name}: {outcome}", file=sys.stderr)
    else:
        student.errors.append(outcome)
    await note_errors(student)


async def watch_board(page, seen: list[float], stop: asyncio.Event) -> None:
    """seen[k - 1] = when the board's table first showed k rows."""
    while not stop.is_set():
        try:
            rows = await page.evaluate(ROWS_JS)
        except Exception:
            rows = 0
        now = time.time()
        while len(seen) < rows:
            seen.append(now)
        await asyncio.sleep(0.2)


async def warm_up(base: str, code: str, token: str, timeout_s: float) -> None:
    """One student submits in a class of its own, then a presenter board opens: the server's first
    measurement (eval set, model code) and first board are behind the class."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        student = Submitter(0, token=token, name="Warm-up")
        await open_page(browser, student, f"{base}/compare?ws={token}", FORM_MARKER, timeout_s)
        await submit(student, time.time(), timeout_s)
        presenter = Student(-1)
        await open_page(browser, presenter, f"{base}/board?join={code}&present=1", BOARD_MARKER, timeout_s,
                        PRESENTER_VIEWPORT)
        await browser.close()
    if student.submit_s is None or presenter.load_s is None:
        raise RuntimeError(f"the warm-up did not finish within {timeout_s:.0f} s: "
                           f"{student.errors + presenter.errors}")


async def run_class(base: str, monitor: TreeMonitor, code: str, tokens: list[str], args,
                    screenshot: Path | None) -> dict:
    from playwright.async_api import async_playwright

    rng = random.Random(args.seed)
    n = len(tokens)
    students = [Submitter(i, token=t, name=f"Student {i + 1:02d}", at=rng.uniform(0, args.spread))
                for i, t in enumerate(tokens)]
    client = TreeMonitor(os.getpid(), exclude=monitor.root.pid)        # this script, Playwright, Chromium
    seen: list[float] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        presenter = Student(-1)
        await open_page(browser, presenter, f"{base}/board?join={code}&present=1", BOARD_MARKER,
                        args.load_timeout, PRESENTER_VIEWPORT)
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_board(presenter.page, seen, stop))
        t_load = time.time()
        await asyncio.gather(*(open_page(browser, s, f"{base}/compare?ws={s.token}", FORM_MARKER,
                                         args.load_timeout) for s in students))
        t_submit = time.time()
        await asyncio.gather(*(submit(s, t_submit, args.submit_timeout) for s in students if s.load_s is not None))
        t_submitted = time.time()
        confirmed = sorted(s.confirmed for s in students if s.confirmed is not None)
        end = time.time() + args.board_timeout
        while len(seen) < len(confirmed) and time.time() < end:
            await asyncio.sleep(0.2)
        stop.set()
        await watcher
        t_board = time.time()
        await note_errors(presenter)
        if screenshot is not None:
            try:
                await presenter.page.set_viewport_size(SCREENSHOT_VIEWPORT)     # the whole table in one picture
                await asyncio.sleep(3)
                await settled(presenter.page, BOARD_MARKER, 60)
                await presenter.page.screenshot(path=str(screenshot), full_page=True, timeout=120_000)
            except Exception as exc:        # a starved browser: the figures still count
                print(f"no screenshot: {exc}", file=sys.stderr)
        await browser.close()
    t_closed = time.time()
    client.stop()
    await asyncio.sleep(args.after)
    t_end = time.time()
    board_s = [max(0.0, seen[k] - c) for k, c in enumerate(confirmed) if k < len(seen)]
    submits = [s.submit_s for s in students if s.submit_s is not None]
    return {
        "students": n, "spread_s": args.spread,
        "presenter_load_s": round(presenter.load_s, 2) if presenter.load_s is not None else None,
        "page_load_s": percentiles([s.load_s for s in students if s.load_s is not None]),
        "submit_s": percentiles(submits),
        "board_s": percentiles(board_s),
        "timeouts": {"loads": sum(s.load_s is None for s in students) + (presenter.load_s is None),
                     "submits": sum(s.timeouts for s in students) - sum(s.load_s is None for s in students),
                     "board": len(confirmed) - len(board_s)},
        "page_errors": sorted({e for s in [presenter, *students] for e in s.errors}),
        "confirmed": len(confirmed), "entries_on_board_page": len(seen),
        "first_to_last_confirmation_s": round(confirmed[-1] - t_submit, 1) if confirmed else None,
        "server_cores": {"loading": round(monitor.cores(t_load, t_submit), 2),
                         "submitting": round(monitor.cores(t_submit, t_board), 2),
                         "after_close": round(monitor.cores(t_closed, t_end), 2)},
        # CPU seconds per page opened: the server's, and the browser's (one Chromium draws every student's page)
        "server_cpu_s_per_load": round(monitor.cores(t_load, t_submit) * (t_submit - t_load) / n, 2),
        "browser_cpu_s_per_load": round(client.cores(t_load, t_submit) * (t_submit - t_load) / n, 2),
        "server_cpu_s_per_submit": round(monitor.cores(t_submit, t_board) * (t_board - t_submit) / len(confirmed), 2)
        if confirmed else None,
        "browser_cores": {"loading": round(client.cores(t_load, t_submit), 2),
                          "submitting": round(client.cores(t_submit, t_board), 2)},
        "server_rss_mb": {"peak": round(monitor.rss_peak_mb(t_load, t_end)),
                          "after_close": round(monitor.rss_mb(t_end))},
        "load_average": {"start": round(monitor.load_max(t_load, t_load), 2),
                         "max": round(monitor.load_max(t_load, t_end), 2)},
        "wall_s": {"loading": round(t_submit - t_load, 1), "submitting": round(t_submitted - t_submit, 1),
                   "board_after_last": round(t_board - t_submitted, 1), "all": round(t_end - t_load, 1)},
    }


# --- the command -------------------------------------------------------------------------------------------

def run(args) -> list[dict]:
    """One server (its own data folder); a warm-up, then each class size in turn, each a class of its own."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="board-load-") as folder:
        home = Path(folder)
        proc, base = start_server(home, log=home / "server.log")
        monitor = TreeMonitor(proc.pid)
        try:
            warm_code, [warm_token] = seed(home, 1, "Warm-up")
            asyncio.run(warm_up(base, warm_code, warm_token, args.load_timeout))
            for n in args.students:
                code, tokens = seed(home, n, "Bench")
                wait_quiet(monitor, timeout_s=60)
                warm_rss = round(monitor.rss_mb(time.time()))
                shot = Path(args.screenshot) if args.screenshot and n == max(args.students) else None
                row = asyncio.run(run_class(base, monitor, code, tokens, args, shot))
                row.update(rss_warm_mb=warm_rss, entries_on_board=board_entries(home, code), cpus=os.cpu_count())
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            monitor.stop()
            stop_server(proc)
    return rows


def markdown_table(rows: list[dict]) -> str:
    head = ("| students | page load p50 / p95 / max (s) | submit p50 / p95 / max (s) | board p50 / p95 / max (s) "
            "| timed out: loads, submits, board | page errors | entries on the board | server cores: loading / "
            "submitting / after close | server CPU s per page, per submit | browser cores: loading / submitting, "
            "CPU s per page "
            "| RSS warm / peak / 30 s after close (MB) | load avg start / max |\n" + "| --- " * 12 + "|\n")
    return head + "".join(
        f"| {r['students']} | {cell(r['page_load_s'])} | {cell(r['submit_s'])} | {cell(r['board_s'])} "
        f"| {r['timeouts']['loads']}, {r['timeouts']['submits']}, {r['timeouts']['board']} | {len(r['page_errors'])} "
        f"| {r['entries_on_board']} of {r['students']} | {r['server_cores']['loading']} / "
        f"{r['server_cores']['submitting']} / {r['server_cores']['after_close']} | {r['server_cpu_s_per_load']}, "
        f"{r['server_cpu_s_per_submit']} | {r['browser_cores']['loading']} / {r['browser_cores']['submitting']}, "
        f"{r['browser_cpu_s_per_load']} | {r['rss_warm_mb']} / "
        f"{r['server_rss_mb']['peak']} / {r['server_rss_mb']['after_close']} | {r['load_average']['start']} / "
        f"{r['load_average']['max']} |\n" for r in rows)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", type=int, nargs="+", default=[30], help="class sizes, run in turn")
    p.add_argument("--spread", type=float, default=60.0, help="seconds the submissions are spread over")
    p.add_argument("--seed", type=int, default=0, help="of the students' moments")
    p.add_argument("--load-timeout", type=float, default=240, help="seconds a page may take to settle")
    p.add_argument("--submit-timeout", type=float, default=240, help="seconds a submission may take to confirm")
    p.add_argument("--board-timeout", type=float, default=60,
                   help="seconds the board may take to show every confirmed entry after the last one")
    p.add_argument("--after", type=float, default=30, help="seconds measured after the class closed")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--markdown", help="append the table (with the command, date and load average) to this file")
    p.add_argument("--screenshot", help="PNG of the presenter board at the end of the largest class")
    args = p.parse_args(argv)
    if min(args.students) < 1 or max(args.students) > 40:
        p.error("students 1..40 (one Chromium on two cores: more contexts measure the browser, not the server)")
    rows = run(args)
    command = "python bench/board_load.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    table = markdown_table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps({"command": command, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\n`{command}` ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')}, 1-minute load "
                    f"average {', '.join(str(r['load_average']['start']) for r in rows)} at the start)\n\n" + table)
    print(table)
    return rows


if __name__ == "__main__":
    main()
