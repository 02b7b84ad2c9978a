"""The app server's memory with kept variants: does it stay within 300 MB of an idle server (issue 18)?

    python bench/app_memory.py [--workspaces 5] [--per-workspace 4] [--json]

App level: a real `streamlit run app.py` on a free port, with a fresh store in a temporary
PLAYGROUND_HOME, driven by Chromium (Playwright) as students would drive it:

1. idle: one visit of the Overview page (the server has opened the store and loaded and measured the
   pretrained models), that tab closed — the server's RSS;
2. load: 5 students, each in a browser context of their own (so a workspace of their own): on the Prune
   page each keeps 4 variants of resnet20 (magnitude pruning at 20, 40, 60, 80 %, set by the page's
   lesson-link parameter `ratio`), then opens Compare & Download, which lists them with their downloads,
   all in one tab that stays open (5 live sessions at the end). The server's RSS after, and its peak
   (VmHWM).

RSS is the resident memory of the server process and of every process it started (none here: keeping
variants runs no job, so the local cluster stays unstarted), read from /proc. The load average
(/proc/loadavg) is printed before and after: the figures are memory, not time, but say how busy the
machine was.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_browser import CHROMIUM, free_port, settle, start_server  # noqa: E402

RATIOS = (20, 40, 60, 80, 90, 95)


def rss_mb(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB of `pid` and its children (peak: the server process's own VmHWM)."""
    server = psutil.Process(pid)
    procs = [server] + server.children(recursive=True)
    rss = sum(p.memory_info().rss for p in procs if p.is_running()) / 2 ** 20
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return rss, int(fields["VmHWM"].split()[0]) / 1024


def loadavg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def visit(page, url: str, marker: str):
    page.goto(url, timeout=300_000)
    page.get_by_text(marker).first.wait_for(timeout=300_000)
    settle(page, timeout_s=300)
    return page


def student(browser, url: str, ratios):
    """One student in one tab: a workspace of their own, a variant kept per ratio, then Compare &
    Download. Returns the tab's context, left open."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = visit(context.new_page(), f"{url}/prune?ratio={ratios[0]}", "How far can we go?")
    token = page.url.split("ws=")[1].split("&")[0]
    for i, ratio in enumerate(ratios):
        if i:
            visit(page, f"{url}/prune?ws={token}&ratio={ratio}", "How far can we go?")
        page.get_by_role("button", name="Keep this variant").click()
        page.get_by_text("Kept “").first.wait_for(timeout=300_000)
    visit(page, f"{url}/compare?ws={token}", "Upload a model")
    return context


def measure(workspaces: int, per: int) -> dict:
    from playwright.sync_api import sync_playwright

    home = tempfile.mkdtemp(prefix="app-memory-")
    port = free_port()
    server = start_server(port, {"PLAYGROUND_HOME": home})
    url = f"http://127.0.0.1:{port}"
    out = {"workspaces": workspaces, "per_workspace": per, "load_before": loadavg()}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            first = browser.new_context()
            visit(first.new_page(), url, "The model in hand")
            first.close()
            time.sleep(5)
            out["rss_idle_mb"], _ = rss_mb(server.pid)
            held = [student(browser, url, RATIOS[:per]) for _ in range(workspaces)]
            time.sleep(5)
            out["rss_after_mb"], out["peak_mb"] = rss_mb(server.pid)
            out["sessions_open"] = len(held)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    out["difference_mb"] = out["rss_after_mb"] - out["rss_idle_mb"]
    out["load_after"] = loadavg()
    return out


def report(r: dict) -> str:
    """The figures as the Markdown rows docs/STORE.md shows."""
    cells = (r["rss_idle_mb"], r["rss_after_mb"], r["difference_mb"], r["peak_mb"])
    return "\n".join([
        f"{r['workspaces'] * r['per_workspace']} variants kept in {r['workspaces']} workspaces ({r['sessions_open']} "
        f"sessions open); load average {r['load_before']} before, {r['load_after']} after",
        "| RSS idle (MB) | RSS after (MB) | difference (MB) | peak (MB) |",
        "|" + " ---: |" * len(cells),
        "| " + " | ".join(f"{c:.0f}" for c in cells) + " |"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspaces", type=int, default=5)
    parser.add_argument("--per-workspace", type=int, default=4, choices=range(1, len(RATIOS) + 1))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit("needs Debian's chromium (apt-get install chromium) and playwright (requirements-test.txt)")
    os.chdir(ROOT)
    figures = measure(args.workspaces, args.per_workspace)
    print(json.dumps(figures, indent=2) if args.json else report(figures))


if __name__ == "__main__":
    main()
