"""End to end in a real browser: `streamlit run app.py` on a local port, Debian's Chromium driven by
Playwright. Visits every page, moves the pruning slider, starts and stops a training run, downloads a
compressed model and reloads it with the library, and saves a screenshot of every page
(to $SCREENSHOT_DIR, default out/screenshots)."""
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PAGES = [("overview", "The model in hand"), ("train", "Train a model"), ("prune", "How far can we go?"),
         ("quantize", "Keep it"), ("distill", "Train a student, with and without the teacher"),
         ("share", "Bits per nonzero weight, per layer"), ("pipeline", "Pick settings and run"),
         ("compare", "Upload a model")]
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env: dict | None = None) -> subprocess.Popen:
    """`streamlit run app.py` on 127.0.0.1:port, returned once it answers its health check."""
    if not Path(CHROMIUM).exists():
        pytest.skip("browser test: Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright")
    env = {**os.environ, "PYTHONUNBUFFERED": "1",          # a data folder of its own: nothing another test kept
           "PLAYGROUND_HOME": tempfile.mkdtemp(prefix="playground-e2e-"), **(env or {})}
    log = open(ROOT / "out" / f"streamlit-e2e-{port}.log", "w") if (ROOT / "out").is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                             "--server.port", str(port), "--server.address", "127.0.0.1"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("streamlit did not start within 60 s")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("SCREENSHOT_DIR", ROOT / "out" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(browser, url, wait_for, downloads=False):
    page = browser.new_page(viewport={"width": 1500, "height": 2400}, accept_downloads=downloads)
    page.goto(url)
    page.get_by_text(wait_for).first.wait_for(timeout=120_000)
    settle(page)
    return page


def settle(page, quiet_s=1.5, timeout_s=120):
    """Wait until Streamlit has finished: no script running (its status widget gone), no placeholder
    or stale element left, every chart drawn, for `quiet_s` in a row."""
    deadline = time.time() + timeout_s
    calm_since = None
    while time.time() < deadline:
        if not finished_drawing(page):
            calm_since = None
        elif calm_since is None:
            calm_since = time.time()
        elif time.time() - calm_since > quiet_s:
            return
        time.sleep(0.2)
    pytest.fail(f"{page.url} was still drawing after {timeout_s} s")


def finished_drawing(page) -> bool:
    """No script run in progress, no skeleton or stale element, and every plotly chart has its SVG
    (charts render a moment after the script ends)."""
    return page.evaluate("""() => !document.querySelector('[data-testid=stStatusWidget]')
        && !document.querySelector('[data-testid=stSkeleton], [data-stale=true]')
        && [...document.querySelectorAll('[data-testid=stPlotlyChart]')].every(c => c.querySelector('.main-svg'))""")


def no_exceptions(page):
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]').first.inner_text()


@pytest.mark.parametrize("path,marker", PAGES)
def test_every_page_opens_and_is_photographed(browser, server, shots, path, marker):
    page = open_page(browser, f"{server}/{'' if path == 'overview' else path}", marker)
    no_exceptions(page)
    page.screenshot(path=str(shots / f"{path}.png"))
    page.close()


def test_pruning_slider_moves_the_numbers(browser, server, shots):
    page = open_page(browser, f"{server}/prune", "How far can we go?")
    slider = page.get_by_role("slider").first
    slider.focus()
    metric = page.locator('[data-testid="stMetric"]', has_text="Sparsity (prunable layers)")
    before = metric.inner_text()
    for _ in range(20):              # 50 % -> 70 % with the keyboard, as a student would
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Tab")       # the slider commits its value when it loses focus
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMetric]')]"
                           ".some(m => m.innerText.includes('Sparsity') && m.innerText.includes('70.0 %'))",
                           timeout=60_000)
    settle(page)
    after = metric.inner_text()
    no_exceptions(page)
    assert "50.0 %" in before and "70.0 %" in after, (before, after)
    page.screenshot(path=str(shots / "prune-70.png"))
    page.close()


def test_a_move_in_the_pruning_panel_updates_the_link_and_a_kept_variant_reaches_the_sidebar(browser, server):
    """The panel reruns alone (a fragment): the URL still follows the slider, a reload comes back at the
    same position, and "Keep this variant" redraws the whole app, its sidebar included."""
    context = browser.new_context(viewport={"width": 1500, "height": 2400})
    page = context.new_page()
    page.goto(f"{server}/prune")
    page.get_by_text("How far can we go?").first.wait_for(timeout=120_000)
    settle(page)
    page.get_by_role("slider").first.focus()
    for _ in range(15):              # 50 % -> 65 %
        page.keyboard.press("ArrowRight")
    page.keyboard.press("Tab")
    page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stMetric]')]"
                           ".some(m => m.innerText.includes('Sparsity') && m.innerText.includes('65.0 %'))",
                           timeout=60_000)
    settle(page)
    assert "ratio=65" in page.url and "ws=" in page.url, page.url
    page.reload()
    page.get_by_text("How far can we go?").first.wait_for(timeout=120_000)
    settle(page)
    assert page.get_by_role("slider").first.get_attribute("aria-valuetext") == "65"
    page.get_by_role("button", name="Keep this variant").click()
    page.get_by_text("Kept “").first.wait_for(timeout=120_000)
    settle(page)
    no_exceptions(page)
    page.locator('[data-testid=stSidebar] [data-testid=stSelectbox]').first.click()
    assert any("pruned 65%" in o for o in page.get_by_role("option").all_inner_texts())
    context.close()


def test_training_starts_and_stops(browser, server, shots):
    page = open_page(browser, f"{server}/train", "Train a model")
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("Images / s").first.wait_for(timeout=120_000)
    page.locator(".js-plotly-plot").first.wait_for(timeout=120_000)      # the live curve has points
    time.sleep(2)
    page.screenshot(path=str(shots / "train-running.png"))
    page.get_by_role("button", name="Stop").click()
    page.get_by_text("Training was stopped").wait_for(timeout=120_000)
    no_exceptions(page)
    page.close()


def test_download_reloads_to_the_same_accuracy(browser, server, tmp_path):
    from compression.data import eval_subset, load_sample
    from compression.files import load_model
    from compression.train import evaluate

    page = open_page(browser, f"{server}/compare", "Upload a model", downloads=True)
    with page.expect_download() as info:
        page.get_by_role("button", name="Packed (.cmpk)").first.click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    model, meta = load_model(path)
    accuracy = evaluate(model, eval_subset(load_sample()[1])).accuracy
    assert f"{accuracy:.4f}" == meta["eval_accuracy"], "the download must reload to the accuracy it was listed with"
    page.close()


def test_a_lesson_link_opens_quantize_at_3_bits_per_channel(browser, server, shots):
    context = browser.new_context(viewport={"width": 1500, "height": 2400})     # a fresh browser profile
    page = context.new_page()
    page.goto(f"{server}/quantize?bits=3&granularity=per-channel&mode=symmetric")
    page.get_by_text("Keep it").first.wait_for(timeout=120_000)
    settle(page)
    no_exceptions(page)
    assert page.get_by_role("slider").first.get_attribute("aria-valuetext") == "3"
    checked = page.locator('[data-testid="stRadio"] input:checked').evaluate_all(
        "els => els.map(e => e.closest('label').innerText.trim())")
    assert "per-channel" in checked, checked
    metric = page.locator('[data-testid="stMetric"]', has_text="Distinct values per filter").inner_text()
    assert int(metric.split()[-1].replace(",", "")) <= 8
    page.screenshot(path=str(shots / "quantize-3bit-lesson-link.png"))
    context.close()


def test_a_lesson_link_is_the_first_request_a_fresh_server_gets(browser, shots):
    """Deep links work before anyone has opened `/`: the sidebar, the page titles and the safety net are
    there, the link's settings are applied, and link text that looks like Markdown stays text."""
    port = free_port()
    proc = start_server(port)
    try:
        context = browser.new_context(viewport={"width": 1500, "height": 2400})
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{port}/prune?ratio=70&method=%5Bx%5D(http://evil.example)"
                  f"&scope=!%5Bi%5D(http://evil.example/i.png)")
        page.get_by_text("How far can we go?").first.wait_for(timeout=120_000)
        settle(page)
        no_exceptions(page)
        sidebar = page.locator('[data-testid="stSidebar"]')
        assert sidebar.get_by_text("Model in hand").count() > 0, "the shared sidebar must be there"
        assert sidebar.get_by_text("Compare & Download").count() > 0, "the menu lists page titles, not file names"
        assert page.get_by_role("slider").first.get_attribute("aria-valuetext") == "70"
        assert page.locator('a[href*="evil"], img[src*="evil"]').count() == 0
        page.screenshot(path=str(shots / "prune-first-request.png"))
        context.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_huge_link_value_does_not_slow_the_page(browser, server):
    page = browser.new_page(viewport={"width": 1500, "height": 1500})
    page.goto(f"{server}/quantize?bits={'9' * 100_000}")
    page.get_by_text("Keep it").first.wait_for(timeout=120_000)
    settle(page)
    no_exceptions(page)
    assert page.get_by_role("slider").first.get_attribute("aria-valuetext") == "8"
    page.close()
