"""Several app processes behind nginx, checked in a real browser (docs/PROXY.md).

Starts scripts/serve_class.sh (a Dask scheduler and worker, K app processes, nginx in front) on a fresh
data folder, then drives Debian's Chromium through the proxy. A student's browser gets nginx's sticky
cookie and so one app process; there it keeps a variant, joins a class and submits it, downloads the
packed weights (a /media file of that process), uploads them again (/_stcore/upload_file, XSRF cookie)
and starts a short training job. Then the same workspace link is opened in a second browser that is
sent to the other process (its cookie chosen so), where the running job must show its curve and finish,
and the kept, uploaded and trained variants must be listed; the teacher's board, opened on the other
process from the student's, must show the submission. A longer job started on the student's process
is stopped from the other one. Last, the student's process is killed: the same browser must reach
its workspace on the other process. Screenshots go to --shots.

    python bench/proxy_check.py [--processes 2] [--shots out/proxy]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_browser import CHROMIUM, finished_drawing  # noqa: E402

WAIT_MS = 600_000                  # hang guards on a busy two-core machine, not speed checks
CURVE = "() => { const c = document.querySelector('.js-plotly-plot'); return c && c.data ? c.data[0].x.length : 0 }"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settle(page, quiet_s: float = 1.5, timeout_s: float = 600) -> None:
    deadline, calm = time.time() + timeout_s, None
    while time.time() < deadline:
        if not finished_drawing(page):
            calm = None
        elif calm is None:
            calm = time.time()
        elif time.time() - calm > quiet_s:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{page.url} still drawing after {timeout_s} s")


def no_exceptions(page) -> None:
    errors = page.locator('[data-testid="stException"]')
    assert errors.count() == 0, errors.first.inner_text()


def backend_of(base: str, cookie: str) -> str:
    """The app process nginx sends a browser with this sticky cookie to."""
    request = urllib.request.Request(f"{base}/_stcore/health", headers={"Cookie": f"playground_backend={cookie}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return r.headers["X-Playground-Backend"]


def cookie_for(base: str, backend: str, avoid: bool = False) -> str:
    """A sticky cookie value that lands on `backend` (or, with avoid, anywhere else)."""
    for i in range(200):
        value = f"check{i}"
        if (backend_of(base, value) == backend) != avoid:
            return value
    raise RuntimeError(f"no cookie value lands {'off' if avoid else 'on'} {backend}")


def lan_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))                  # no packet is sent: only picks the outgoing address
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def context(browser, base: str, cookie: str | None = None):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1900}, accept_downloads=True)
    if cookie:
        ctx.add_cookies([{"name": "playground_backend", "value": cookie, "url": base}])
    return ctx


def visit(ctx, url: str, marker: str):
    """Open `url`; returns (page, the app process that served it)."""
    page = ctx.new_page()
    page.set_default_timeout(WAIT_MS)
    response = page.goto(url)
    page.get_by_text(marker).first.wait_for(timeout=WAIT_MS)
    settle(page)
    no_exceptions(page)
    return page, response.headers.get("x-playground-backend")


def step(message: str, t0: float) -> None:
    print(f"{time.time() - t0:6.0f} s  {message}", flush=True)


def check(base: str, shots: Path, home: Path, lan: str | None) -> None:
    from playwright.sync_api import sync_playwright

    from compression.files import load_model
    from compression.store import open_store

    t0 = time.time()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])

        # The student: no cookie, nginx picks the process.
        student = context(browser, base)
        page, first = visit(student, f"{base}/prune", "How far can we go?")
        cookie = next(c["value"] for c in student.cookies() if c["name"] == "playground_backend")
        here = backend_of(base, cookie)
        there = backend_of(base, cookie_for(base, here, avoid=True))
        assert here != there
        token = page.url.split("ws=")[1].split("&")[0]
        assert page.get_by_text("Local folder").count() == 1          # a visitor on the server's own machine
        if lan:             # nginx passes the visitor's address on: from another address, no server folders
            remote, _ = visit(context(browser, f"http://{lan}:{base.rsplit(':', 1)[1]}"),
                              f"http://{lan}:{base.rsplit(':', 1)[1]}/", "The model in hand")
            assert remote.get_by_text("Bundled sample (offline)").count() == 1
            assert remote.get_by_text("Local folder").count() == 0
            step(f"a visitor from {lan} is not local: no Local folder choice", t0)
            remote.context.close()
        step(f"student on {here} (first page from {first}), workspace {token[:6]}…", t0)
        page.get_by_role("button", name="Keep this variant").click()
        kept = page.get_by_text("Kept “").first
        kept.wait_for(timeout=WAIT_MS)
        name = kept.inner_text().split("“")[1].split("”")[0]
        settle(page)
        page.screenshot(path=str(shots / "proxy-1-kept.png"))
        step(f"kept “{name}”", t0)

        # The teacher on the other process creates a class.
        teacher = context(browser, base, cookie_for(base, there))
        tpage, served = visit(teacher, f"{base}/board", "Class name")
        assert served == there, served
        tpage.get_by_label("Class name").fill("Proxy lab")
        tpage.get_by_role("button", name="Create the class").click()
        tpage.get_by_text("Join code:").first.wait_for(timeout=WAIT_MS)
        code = re.search(r"Join code: ([A-Z0-9]{6})", tpage.get_by_text("Join code:").first.inner_text()).group(1)
        teacher_url = tpage.url
        step(f"teacher on {there} created class {code}", t0)

        # The student joins and submits on the student's process.
        page.goto(f"{base}/board?ws={token}")
        page.get_by_label("Join code").fill(code)
        page.get_by_role("button", name="Join").click()
        page.get_by_text(f"You joined with code {code}").wait_for(timeout=WAIT_MS)
        page.get_by_text("Go to Compare & Download").click()
        page.get_by_text("Submit to a class challenge").wait_for(timeout=WAIT_MS)
        settle(page)
        form = page.locator('[data-testid=stForm]').filter(has_text="Display name on the board")
        form.get_by_label("Display name on the board").fill("Ada")
        form.get_by_role("button", name="Submit").click()
        page.get_by_text(re.compile("Submitted")).first.wait_for(timeout=WAIT_MS)
        settle(page)
        step("submitted", t0)

        # Download the packed weights (a /media file in the student's process) and upload them again.
        card = page.locator('[data-testid="stVerticalBlock"]', has=page.get_by_text(name, exact=True)).filter(
            has=page.get_by_role("button", name="Packed (.cmpk)")).last
        with page.expect_download(timeout=WAIT_MS) as info:
            card.get_by_role("button", name="Packed (.cmpk)").click()
        path = shots / info.value.suggested_filename
        info.value.save_as(path)
        load_model(path)
        page.locator('[data-testid="stFileUploader"]').filter(has_text="Model file").locator(
            'input[type="file"]').set_input_files(str(path))
        added = page.get_by_text(re.compile(r"Added “.*\(uploaded\)”")).first
        added.wait_for(timeout=WAIT_MS)
        uploaded = added.inner_text().split("“")[1].split("”")[0]
        settle(page)
        no_exceptions(page)
        page.screenshot(path=str(shots / "proxy-2-downloaded-uploaded.png"), full_page=True)
        step(f"downloaded {path.name} ({path.stat().st_size} bytes), uploaded as “{uploaded}”", t0)

        # A short training job, started on the student's process.
        page.goto(f"{base}/train?ws={token}")
        page.get_by_text("Train a model").first.wait_for(timeout=WAIT_MS)
        settle(page)
        width = page.get_by_role("slider").first
        width.focus()
        for _ in range(3):
            page.keyboard.press("ArrowLeft")
        page.get_by_label("Epochs", exact=True).fill("1")
        page.get_by_role("button", name="Start training").click()
        page.wait_for_function(f"({CURVE})() >= 1", timeout=WAIT_MS)
        page.screenshot(path=str(shots / "proxy-3-training-on-first.png"))
        step("training job running, started from the student's process", t0)

        # The same workspace link in a second browser, sent to the other process.
        other = context(browser, base, cookie_for(base, there))
        opage, served = visit(other, f"{base}/train?ws={token}", "Train a model")
        assert served == there, served
        opage.wait_for_function(f"({CURVE})() >= 1", timeout=60_000)
        seen = opage.evaluate(CURVE)
        opage.screenshot(path=str(shots / "proxy-4-training-on-second.png"))
        step(f"the other process shows the job's curve ({seen} points)", t0)
        opage.get_by_text(re.compile("Finished: “")).first.wait_for(timeout=WAIT_MS)
        settle(opage)
        no_exceptions(opage)
        opage.screenshot(path=str(shots / "proxy-5-finished-on-second.png"))
        step("the job finished; the other process says so", t0)
        opage.goto(f"{base}/compare?ws={token}")
        opage.get_by_text("Upload a model").first.wait_for(timeout=WAIT_MS)
        settle(opage)
        with open_store(home) as store:
            ws = store.open_workspace(token)
            names = [v.name for v in store.variants(ws) if not v.builtin]
            job = store.jobs.list(ws)[0]
        assert name in names and uploaded in names and len(names) == 3, names
        missing = [n for n in names if opage.get_by_text(n, exact=True).count() == 0]
        assert not missing, missing
        opage.screenshot(path=str(shots / "proxy-6-variants-on-second.png"), full_page=True)
        step(f"the other process lists {names}; the job was queued by {job.server}, ran on {job.worker}", t0)

        # The teacher's board on the other process shows the submission made on the student's process.
        tpage.goto(teacher_url)
        tpage.wait_for_function("document.querySelectorAll('[data-testid=stTable] tbody tr').length === 1",
                                timeout=WAIT_MS)
        settle(tpage)
        assert "Ada" in tpage.locator('[data-testid=stTable]').inner_text()
        tpage.screenshot(path=str(shots / "proxy-7-board-on-other.png"), full_page=True)
        step(f"the teacher's board on {there} shows Ada's entry", t0)

        # A longer job started on the student's process and stopped from the other one: the student's
        # process sees the cancelled record and stops the job on the worker, which keeps what it made.
        page.goto(f"{base}/train?ws={token}")
        page.get_by_text("Train a model").first.wait_for(timeout=WAIT_MS)
        settle(page)
        page.get_by_label("Epochs", exact=True).fill("50")
        page.get_by_role("button", name="Start training").click()
        page.get_by_text(re.compile(r"step \d+ of")).first.wait_for(timeout=WAIT_MS)
        opage.goto(f"{base}/train?ws={token}")
        opage.get_by_role("button", name="Stop").click()
        opage.get_by_text("Training was stopped.").first.wait_for(timeout=WAIT_MS)
        step("a 50-epoch job started on the student's process, stopped on the other", t0)
        with open_store(home) as store:
            job = store.jobs.list(store.open_workspace(token))[0]
            deadline = time.time() + 300
            while not job.result and time.time() < deadline:
                time.sleep(2)
                job = store.jobs.get(store.open_workspace(token), job.id)
        assert job.status == "cancelled" and job.result, job
        opage.reload()
        opage.get_by_text("joined the").first.wait_for(timeout=WAIT_MS)
        settle(opage)
        opage.screenshot(path=str(shots / "proxy-8-stopped-on-other.png"))
        step(f"the worker stopped it; “{job.title}” kept what it made ({len(job.result)} variant)", t0)

        # The student's process dies: the browser's next connection goes to the other process, same work.
        page.goto(f"{base}/compare?ws={token}")
        page.get_by_text("Upload a model").first.wait_for(timeout=WAIT_MS)
        settle(page)
        port = int(here.rsplit(":", 1)[1])
        pid = next(c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN")
        os.kill(pid, signal.SIGKILL)
        time.sleep(5)
        page.get_by_role("link", name="Overview").click()          # a rerun: needs a live websocket
        try:
            page.get_by_text("The model in hand").first.wait_for(timeout=120_000)
            settle(page)
            reconnected = "reconnected by itself and went on to the Overview"
        except Exception:
            reconnected = "did not reconnect by itself within 2 minutes"
        page.screenshot(path=str(shots / "proxy-9-after-kill.png"))
        page.goto(f"{base}/compare?ws={token}")
        page.get_by_text("Upload a model").first.wait_for(timeout=WAIT_MS)
        settle(page)
        no_exceptions(page)
        missing = [n for n in names if page.get_by_text(n, exact=True).count() == 0]
        now = backend_of(base, cookie).split(", ")[-1]                  # nginx tried the dead one first
        assert not missing and now == there, (missing, now)
        page.screenshot(path=str(shots / "proxy-10-after-kill-reopened.png"), full_page=True)
        step(f"killed {here}: the open page {reconnected}; the workspace link opens the same work on {now}", t0)
        browser.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--shots", default=str(ROOT / "out" / "proxy"))
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))      # stop the servers on a timeout too
    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    home, run = Path(tempfile.mkdtemp(prefix="playground-proxy-")), Path(tempfile.mkdtemp(prefix="playground-run-"))
    port = free_port()
    env = {**os.environ, "PLAYGROUND_HOME": str(home), "RUN_DIR": str(run), "DASK_PORT": str(free_port())}
    env.pop("PLAYGROUND_SCHEDULER", None)
    lan = lan_address()
    if lan:
        env["LISTEN"] = "0.0.0.0"                       # also reached from this machine's own LAN address
    serve = subprocess.Popen([str(ROOT / "scripts" / "serve_class.sh"), str(args.processes), str(port)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        print(serve.stdout.readline().strip(), flush=True)      # once every app process answers
        check(f"http://127.0.0.1:{port}", shots, home, lan)
        print("all checks passed; logs in", run)
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        serve.wait(60)


if __name__ == "__main__":
    main()
