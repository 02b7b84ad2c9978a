"""Nothing is lost (issue 18), end to end: a real `streamlit run app.py` with its own PLAYGROUND_HOME (a
real SQLite store) and the Dask LocalCluster the app starts, driven by Debian's Chromium.

Keep two variants (Prune, Quantize), reload: both on Compare & Download. Open the workspace link in a
new browser context (another device): both there. Restart the server on the same data folder: both
there, and a download reloads to the accuracy it is listed with. Start a 1-epoch training run, reload
during it: its live curve is redrawn from the store and keeps growing, and its model arrives as a
variant. A screenshot of each step goes to $SCREENSHOT_DIR (default out/screenshots), workspace-*.png."""
import subprocess
from pathlib import Path

import pytest

from test_browser import CHROMIUM, free_port, no_exceptions, settle, shots, start_server  # noqa: F401 (shots)

pytestmark = [pytest.mark.browser, pytest.mark.slow]
PAGE_MS = 300_000                # hang guards on a busy machine, not speed checks
JOB_MS = 900_000                 # a hang guard for the training job on a busy machine, not a speed check
CURVE_POINTS = "() => { const c = document.querySelector('.js-plotly-plot'); return c && c.data ? c.data[0].x.length : 0 }"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("browser test: Debian's chromium is not installed (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        yield b
        b.close()


class Server:
    """`streamlit run app.py` on one port and one data folder, restartable."""

    def __init__(self, home: Path):
        self.port, self.env, self.proc = free_port(), {"PLAYGROUND_HOME": str(home)}, None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_server(self.port, self.env)

    def stop(self) -> None:
        """Ctrl-C's signal; a server still finishing its background work a minute later is killed (a
        restart must keep everything either way)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
            self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "home")
    s.start()
    yield s
    s.stop()


def visit(context, url: str, marker: str):
    page = context.new_page()
    page.goto(url)
    page.get_by_text(marker).first.wait_for(timeout=PAGE_MS)
    settle(page, timeout_s=300)
    no_exceptions(page)
    return page


def keep(page) -> str:
    """Press "Keep this variant"; returns the name the page says it kept."""
    page.get_by_role("button", name="Keep this variant").click()
    kept = page.get_by_text("Kept “").first
    kept.wait_for(timeout=PAGE_MS)
    settle(page, timeout_s=300)
    return kept.inner_text().split("“")[1].split("”")[0]


def workspace_link(page) -> str:
    page.get_by_role("button", name="Your workspace link").click()
    link = page.locator('[data-testid="stPopoverBody"] code').first
    link.wait_for(timeout=30_000)
    text = link.inner_text().strip()
    page.keyboard.press("Escape")
    return text


def listed(page, names: list[str]) -> list[str]:
    """Which of `names` the Compare page lists (each variant's card under Downloads)."""
    return [n for n in names if page.get_by_text(n, exact=True).count() > 0]


def test_kept_variants_and_jobs_survive_reloads_new_devices_and_restarts(browser, server, shots, tmp_path):
    from compression.data import eval_subset, load_sample
    from compression.files import load_model
    from compression.store import open_store
    from compression.train import evaluate

    # Keep two variants; the first visit put the workspace token in the URL.
    context = browser.new_context(viewport={"width": 1500, "height": 2000}, accept_downloads=True)
    page = visit(context, f"{server.url}/prune", "How far can we go?")
    token = page.url.split("ws=")[1].split("&")[0]
    names = [keep(page)]
    page.screenshot(path=str(shots / "workspace-1-kept-on-prune.png"))
    page.goto(f"{server.url}/quantize?ws={token}")
    page.get_by_text("Keep it").first.wait_for(timeout=PAGE_MS)
    settle(page, timeout_s=300)
    names.append(keep(page))
    page.screenshot(path=str(shots / "workspace-2-kept-on-quantize.png"))
    assert len(set(names)) == 2, names

    # Reload (F5) on Compare & Download: both are there.
    page.goto(f"{server.url}/compare?ws={token}")
    page.get_by_text("Upload a model").first.wait_for(timeout=PAGE_MS)
    page.reload()
    page.get_by_text("Upload a model").first.wait_for(timeout=PAGE_MS)
    settle(page, timeout_s=300)
    assert listed(page, names) == names
    link = workspace_link(page)
    assert link.endswith(f"?ws={token}") and link.startswith(server.url)
    page.screenshot(path=str(shots / "workspace-3-after-reload.png"))
    context.close()

    # The workspace link in a new browser context (another device): both are there.
    other = browser.new_context(viewport={"width": 1500, "height": 2000})
    page = visit(other, link, "Upload a model")
    assert listed(page, names) == names
    page.screenshot(path=str(shots / "workspace-4-link-in-a-new-context.png"))
    other.close()

    # Restart the server on the same data folder: both are there, and a download reloads to its accuracy.
    server.stop()
    server.start()
    again = browser.new_context(viewport={"width": 1500, "height": 2000}, accept_downloads=True)
    page = visit(again, link, "Upload a model")
    assert listed(page, names) == names
    card = page.locator('[data-testid="stVerticalBlock"]', has=page.get_by_text(names[0], exact=True)).filter(
            has=page.get_by_role("button", name="Packed (.cmpk)")).last      # the innermost: the variant's card
    with page.expect_download() as info:
        card.get_by_role("button", name="Packed (.cmpk)").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    model, _ = load_model(path)
    with open_store(tmp_path / "home") as store:
        record = next(r for r in store.variants(store.open_workspace(token)) if r.name == names[0])
    assert evaluate(model, eval_subset(load_sample()[1])).accuracy == record.metrics.eval_accuracy
    page.screenshot(path=str(shots / "workspace-5-after-restart.png"))

    # A 1-epoch training run (resnet8 at width 0.25 on the bundled sample), reloaded while it runs.
    page.goto(f"{server.url}/train?ws={token}")
    page.get_by_text("Train a model").first.wait_for(timeout=PAGE_MS)
    settle(page, timeout_s=300)
    width = page.get_by_role("slider").first              # 1.0 -> 0.25, as a student would with the keyboard
    width.focus()
    for _ in range(3):
        page.keyboard.press("ArrowLeft")
    assert width.get_attribute("aria-valuetext") == "0.25"
    page.get_by_label("Epochs", exact=True).fill("1")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_function(f"({CURVE_POINTS})() >= 1", timeout=JOB_MS)
    page.screenshot(path=str(shots / "workspace-6-training.png"))
    page.reload()
    page.get_by_text("Train a model").first.wait_for(timeout=PAGE_MS)
    page.wait_for_function(f"({CURVE_POINTS})() >= 1", timeout=60_000)       # redrawn from the store
    seen = page.evaluate(CURVE_POINTS)
    page.screenshot(path=str(shots / "workspace-7-training-after-reload.png"))
    page.wait_for_function(f"({CURVE_POINTS})() > {seen} || document.body.innerText.includes('Finished: “')",
                           timeout=JOB_MS)
    finished = page.get_by_text("Finished: “resnet8 trained (1 ep)” joined the variants")
    finished.wait_for(timeout=JOB_MS)
    assert page.evaluate(CURVE_POINTS) > seen, "the curve kept growing after the reload"
    settle(page, timeout_s=300)
    no_exceptions(page)
    page.screenshot(path=str(shots / "workspace-8-training-finished.png"))
    page.goto(f"{server.url}/compare?ws={token}")
    page.get_by_text("Upload a model").first.wait_for(timeout=PAGE_MS)
    settle(page, timeout_s=300)
    assert listed(page, names + ["resnet8 trained (1 ep)"]) == names + ["resnet8 trained (1 ep)"]
    page.screenshot(path=str(shots / "workspace-9-trained-variant-on-compare.png"), full_page=True)
    again.close()
