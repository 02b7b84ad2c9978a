"""The class board end to end in a real browser: a fresh `streamlit run app.py` with its own PLAYGROUND_HOME,
one teacher and three student browser contexts (separate cookies and sessions, as separate laptops).

The teacher creates a class on the Class board page (the built-in "smallest-85" exercise on the shipped
resnet20); each student opens their own workspace, joins by typing the code, and submits a variant from
Compare & Download. The students' variants (the shipped resnet8 magnitude-pruned by different amounts)
are kept in their workspaces through the library beforehand: making them in the browser is the other
browser tests' job. The teacher's board, live, shows three points and the library's ranking; a
resubmission moves its student's point; a hostile display name shows as text (no <img> element, no
dialog). Then more students are added through the library for a screenshot of a busy board, in
presenter mode. Screenshots go to $SCREENSHOT_DIR (default out/screenshots)."""
import re
import subprocess
import tempfile
import time

import pytest

from compression.board import board
from compression.classes import list_challenges, open_class, resolve_start, submit
from compression.files import load_model
from compression.prune import prune
from compression.store import open_store
from compression.metrics import measure
from compression.variant import Variant
from test_browser import ROOT, free_port, settle, shots, start_server  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.slow]
HOSTILE = "<img src=x onerror=alert(1)>"
STUDENTS = [("Ada", 0.3), ("Grace", 0.5), (HOSTILE, 0.7)]         # display name, pruned amount
WAIT_MS = 240_000                # the server measures each submission: minutes on a busy 2-core machine
T0 = time.perf_counter()


@pytest.fixture(scope="module")
def home():
    with tempfile.TemporaryDirectory(prefix="board-e2e-") as folder:
        yield folder


@pytest.fixture(scope="module")
def server(home):
    port = free_port()
    proc = start_server(port, {"PLAYGROUND_HOME": home, "PLAYGROUND_DB_URL": ""})
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def store(home, server):
    s = open_store(home)
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def pruned_variant(store, ws, amount: float, name: str, arch: str = "resnet8") -> str:
    """A shipped model pruned by `amount`, kept in workspace `ws` with the pretrained one as parent."""
    model, _ = load_model(ROOT / "assets" / f"{arch}.safetensors")
    parent = resolve_start(store, arch)
    pruned = prune(model, amount)
    return store.keep(ws, Variant(name, pruned, "pruned", {"amount": amount}, parent, measure(pruned)))


def tab(browser, url: str, dialogs: list):
    context = browser.new_context(viewport={"width": 1500, "height": 1900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)                # a fresh server measures the shipped models first
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(url)
    return page


def board_points(page) -> dict[str, tuple[float, float]]:
    """The teacher's chart as drawn: label -> (x, y) of each entry's point (read from plotly's own data)."""
    traces = page.evaluate("""() => [...document.querySelectorAll('[data-testid=stPlotlyChart] .js-plotly-plot')]
        .flatMap(div => div.data.map(t => ({name: t.name, x: t.x, y: t.y, text: t.text})))""")
    return {text: (x, y) for t in traces if t["name"] in ("meets every constraint", "misses a constraint")
            for text, x, y in zip(t["text"], t["x"], t["y"])}


def table_names(page) -> list[str]:
    return [c.inner_text().strip() for c in page.locator('[data-testid=stTable] tbody tr td:nth-child(2)').all()]


def wait_rows(page, n: int):
    page.wait_for_function(f"document.querySelectorAll('[data-testid=stTable] tbody tr').length === {n}",
                           timeout=WAIT_MS)
    settle(page)


def submit_from_compare(page, challenge: str, variant: str, name: str):
    """On the board, follow the link to Compare & Download (the session keeps its class), and submit."""
    page.get_by_text("Go to Compare & Download").click()
    page.get_by_text("Submit to a class challenge").wait_for(timeout=WAIT_MS)
    settle(page)
    form = page.locator('[data-testid=stForm]').filter(has_text="Display name on the board")
    pick = form.locator('[data-testid=stSelectbox]').filter(has_text="Your variant")
    if variant not in pick.inner_text():                  # the only variant of one's own is picked already
        pick.click()
        page.get_by_role("option", name=re.compile(re.escape(variant))).click()
    form.get_by_label("Display name on the board").fill(name)
    form.get_by_role("button", name="Submit").click()
    try:
        page.get_by_text(re.compile("Submitted")).first.wait_for(timeout=WAIT_MS)
    finally:
        page.screenshot(path=str(ROOT / "out" / "board-submit-last.png"), full_page=True)
    print(f"{time.perf_counter() - T0:.0f}s submitted {name}", flush=True)


def test_a_class_joins_by_code_submits_and_watches_the_board(browser, server, store, shots):
    dialogs: list[str] = []
    teacher = tab(browser, f"{server}/board", dialogs)
    teacher.get_by_label("Class name").fill("Monday lab")
    teacher.get_by_role("button", name="Create the class").click()
    teacher.get_by_text("Join code:").first.wait_for(timeout=WAIT_MS)
    code = re.search(r"Join code: ([A-Z0-9]{6})", teacher.get_by_text("Join code:").first.inner_text()).group(1)
    token = re.search(r"teacher=([\w-]+)", teacher.url).group(1)
    assert open_class(store, token).join_code == code and "ws=" not in teacher.get_by_text(
        f"join={code}").first.inner_text()
    settle(teacher)
    teacher.screenshot(path=str(shots / "board-teacher-empty.png"))

    students = []
    for name, amount in STUDENTS:
        ws, ws_token = store.create_workspace()
        variant = f"resnet8 pruned {int(100 * amount)} %"
        vid = pruned_variant(store, ws, amount, variant)
        page = tab(browser, f"{server}/board?ws={ws_token}", dialogs)
        page.get_by_label("Join code").fill(f"{code[:3].lower()} {code[3:]}")
        page.get_by_role("button", name="Join").click()
        page.get_by_text(f"You joined with code {code}").wait_for(timeout=WAIT_MS)
        submit_from_compare(page, "Smallest model above 85 %", variant, name)
        students.append((ws, vid, page))
    page.screenshot(path=str(shots / "board-student-submitted.png"))

    wait_rows(teacher, 3)
    [challenge] = list_challenges(store, token)
    rows = board(store, token, challenge.id).rows
    expected = [r["name"] for r in rows]
    assert sorted(expected) == sorted(n for n, _ in STUDENTS) and table_names(teacher) == expected
    # resnet8 (84.2 % on the eval subset) misses 85 % however it is pruned: all three miss one rule, so the
    # ranking is by the objective, fewest packed bytes first, i.e. most pruned first
    assert [r["failed"] for r in rows] == [1, 1, 1] and expected == [HOSTILE, "Grace", "Ada"]
    points = board_points(teacher)
    assert len(points) == 3
    assert teacher.locator("img[src=x]").count() == 0 and "&lt;img src=x onerror=alert(1)&gt;" in points
    teacher.screenshot(path=str(shots / "board-teacher-three.png"))

    ws, old, page = students[0]                                  # Ada resubmits a smaller variant
    store.delete(ws, old)                     # her only variant then, picked as the form opens (the entry stays)
    pruned_variant(store, ws, 0.6, "resnet8 pruned 60 %")
    page.get_by_text("Class board").first.click()
    page.get_by_text(f"You joined with code {code}").wait_for(timeout=WAIT_MS)
    before = next(xy for label, xy in points.items() if label.endswith("Ada"))
    submit_from_compare(page, "Smallest model above 85 %", "resnet8 pruned 60 %", "Ada")
    teacher.wait_for_function("""(before) => [...document.querySelectorAll('[data-testid=stPlotlyChart] .js-plotly-plot')]
        .some(div => div.data.some(t => (t.text || []).some((s, i) => s.endsWith('Ada') && t.x[i] !== before)))""",
                              arg=before[0], timeout=WAIT_MS)
    settle(teacher)
    moved = board_points(teacher)
    after = next(xy for label, xy in moved.items() if label.endswith("Ada"))
    assert len(moved) == 3 and after[0] < before[0]                 # more zeros: fewer packed bytes
    assert table_names(teacher) == [r["name"] for r in board(store, token, challenge.id).rows]

    for i, amount in enumerate((0.1, 0.2, 0.4, 0.45, 0.55, 0.65, 0.75, 0.8)):   # a busy board, for the screenshot
        ws, _ = store.create_workspace()
        vid = pruned_variant(store, ws, amount, f"pruned {amount}")
        submit(store, code, challenge.id, ws, vid, f"Student {i + 4:02d}")
    teacher.get_by_text("Presenter mode", exact=True).click()
    wait_rows(teacher, 11)
    assert teacher.locator('[data-testid=stSidebar]').is_hidden()
    teacher.screenshot(path=str(shots / "board-presenter-eleven.png"), full_page=True)
    assert dialogs == [] and teacher.locator("img[src=x]").count() == 0
    assert HOSTILE in teacher.locator('[data-testid=stTable]').inner_text()
