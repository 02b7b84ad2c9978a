"""The app server's memory with kept variants: does it stay within 300 MB of an idle server (issue 18)?

    python bench/app_memory.py [--workspaces 5] [--per-workspace 4] [--json]

App level: a real `streamlit run app.py` on a free port, with a fresh store in a temporary
PLAYGROUND_HOME, visited by Chromium (Playwright):

1. idle: one visit of the Overview page (the server has opened the store and loaded and measured the
   pretrained models), that tab closed — the server's RSS;
2. load: this script keeps 4 variants of the pretrained resnet20 (magnitude pruning at 20, 40, 60, 80 %)
   in each of 5 new workspaces, through the store library on the server's PLAYGROUND_HOME (as the
   server's own "Keep" would; making them in the browser costs minutes of CPU per variant on a busy
   machine and is not what is measured). Then 5 students, each in a browser context of their own, open
   their workspace link on Compare & Download, which lists the variants, and download each variant's
   safetensors file, which makes the server load its model through the store's model cache. The 5 tabs
   stay open. The server's RSS after, and its peak (VmHWM).

RSS is the resident memory of the server process and every process it started (none here: no job
runs, so the local cluster stays unstarted), read with psutil (a dependency of distributed). The
load average (/proc/loadavg) is printed before and after: the figures are memory, not time, but say how
busy the machine was.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
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
    page.goto(url, timeout=600_000)
    page.get_by_text(marker).first.wait_for(timeout=600_000)
    settle(page, timeout_s=600)
    return page


def keep_variants(home: str, workspaces: int, per: int) -> list[tuple[str, list[str]]]:
    """(token, names) of `workspaces` new workspaces, each keeping `per` pruned resnet20s."""
    from compression.files import load_model
    from compression.metrics import measure
    from compression.prune import prune
    from compression.store import open_store
    from compression.variant import Variant

    base, _ = load_model(ROOT / "assets" / "resnet20.safetensors")
    out = []
    with open_store(home) as store:
        parent = next(r for r in store.variants(store.create_workspace()[0]) if r.settings.get("arch") == "resnet20")
        for w in range(workspaces):
            workspace, token = store.create_workspace()
            names = []
            for ratio in RATIOS[:per]:
                model = prune(base, ratio / 100 + w / 1000)        # every variant different
                names.append(f"student {w} pruned {ratio}%")
                store.keep(workspace, Variant(names[-1], model, "pruned", {"amount": ratio / 100 + w / 1000},
                                              parent.id, measure(model)))
            out.append((token, names))
    return out


def student(browser, url: str, token: str, names: list[str]):
    """One student's tab: Compare & Download, then each variant's safetensors download (the server
    loads the model to write it). Returns the tab's context, left open."""
    context = browser.new_context(viewport={"width": 1400, "height": 1600}, accept_downloads=True)
    page = visit(context.new_page(), f"{url}/compare?ws={token}", "Upload a model")
    for name in names:
        card = page.locator('[data-testid="stVerticalBlock"]', has=page.get_by_text(name, exact=True)).filter(
            has=page.get_by_role("button", name="Weights (.safetensors)")).last      # the innermost: the variant's card
        with page.expect_download(timeout=600_000):
            card.get_by_role("button", name="Weights (.safetensors)").click()
    return context


def run(workspaces: int, per: int) -> dict:
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
            held = [student(browser, url, token, names) for token, names in keep_variants(home, workspaces, per)]
            time.sleep(5)
            out["rss_after_mb"], out["peak_mb"] = rss_mb(server.pid)
            out["sessions_open"] = len(held)
            browser.close()
    finally:
        server.terminate()
        server.wait(60)
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
    figures = run(args.workspaces, args.per_workspace)
    print(json.dumps(figures, indent=2) if args.json else report(figures))


if __name__ == "__main__":
    main()
