"""A class on one server without browsers: N students as Streamlit sessions over the websocket, in one process.

bench/class_load.py drives Chromium contexts on the server's own two cores; from ten students on, the
browsers (Streamlit's frontend bundle, plotly drawing: about 9 CPU s a page) take the machine, and the
figures measure them, not the server. Here each student is what the browser is to the server and no
more: a websocket on /_stcore/stream speaking Streamlit's protobufs (BackMsg up, ForwardMsg down):

- it fetches the page, the health check and the host config as the browser does, connects, and asks for
  a run of the Prune page through its lesson link (`/prune?ratio=50`: `rerun_script` with page name and
  query string, as the frontend does before it knows the pages);
- it keeps the elements of the page by delta path (an element replaces what was at its path; at the end
  of a full run the elements that run did not send are dropped, at the end of a fragment run those of
  its fragments), the page's query string (`page_info_changed`: the workspace token the app adds) and
  every widget's value (the one the server set, else the one the client has, else the default), so a
  rerun carries the full widget state the browser would send;
- a move sets the pruning-ratio slider (found by its key `prune_ratio`) and sends one `rerun_script`,
  with the slider's `fragment_id` when the slider's delta carried one (a slider in an `st.fragment`);
- a page load is *settled* when a run of the page finished (`script_finished`, not "finished early
  for a rerun") and its metric "Sparsity (prunable layers)" reads "50.0 %"; a move when a run that
  started after the move was sent finished and the metric reads the new value. Errors are Exception
  elements, error alerts and `page_not_found`.
- `auto_rerun` (a polling fragment) is answered as the browser does: a fragment rerun every interval
  until `stop_auto_rerun`.

Cached messages: the server replaces a large element by a `ref_hash` reference only when the client's
`rerun_script` lists that hash in `cached_message_hashes` (streamlit/runtime/scriptrunner_utils/
script_run_context.py, `enqueue`); these clients list none, so every element comes whole (the browser
lists what it holds, and gets references instead of repeated elements: a little less to send).

The rows are class_load's (same keys, percentiles, table; `browser_cores` is this client's process),
with `client: protocol` and the variant labelled "(client: protocol)", so they go in one table with the
browser rows. `--watch K` adds K Chromium students of class_load alongside (their figures under
`watch`), and `--screenshots DIR` saves the first one's page after the moves:

    python bench/protocol_client.py --sessions 1 5 10 20 30 --mode lesson free --moves 5 \
        --out out/protocol.json --watch 1 --screenshots out/protocol

Traffic goes to 127.0.0.1 only; every wait is bounded (load and move timeouts as class_load's).
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
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

sys.path.insert(0, str(Path(__file__).resolve().parent))
import class_load as L  # noqa: E402  (bench/ is no package)
from app_server import ROOT, TreeMonitor, start_server, stop_server, wait_quiet  # noqa: E402

PAGE, SLIDER_KEY, METRIC = "prune", "prune_ratio", "Sparsity (prunable layers)"
CURVE_PENDING = "Computing the accuracy-against-ratio curve"      # the first visit's background curve
MAX_SESSIONS = 100
FINISHED = (ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY)


# --- what the browser keeps of a page --------------------------------------------------------------------

def widget_value(kind: str, el, held: WidgetState | None) -> WidgetState | None:
    """The state the frontend would send for widget `el` of type `kind`: what the server set
    (set_value), else what the client holds, else the widget's default. None: the widget has no state
    to send (a button is a trigger, sent only when clicked)."""
    if held is not None and not getattr(el, "set_value", False):
        return held
    ws = WidgetState(id=el.id)
    if kind == "slider":
        ws.double_array_value.data[:] = list(el.value if el.set_value else el.default)
    elif kind == "checkbox":
        ws.bool_value = el.value if el.set_value else el.default
    elif kind in ("radio", "selectbox"):
        if el.set_value and el.HasField("raw_value"):
            ws.string_value = el.raw_value
        elif el.HasField("default") and 0 <= el.default < len(el.options):
            ws.string_value = el.options[el.default]
        else:
            return None
    elif kind == "number_input":
        value = el.value if el.set_value else el.default
        if el.data_type == el.INT:
            ws.int_value = int(value)
        else:
            ws.double_value = value
    else:
        return None
    return ws


WIDGETS = ("slider", "checkbox", "radio", "selectbox", "number_input")
TRIGGERS = ("button", "download_button", "plotly_chart")    # no state (a chart without on_select is none)


@dataclass
class Node:
    kind: str            # element type ("metric", "slider", …) or "block"
    el: object           # the element's proto
    fragment: str        # the delta's fragment_id ("" outside fragments)
    run: int             # the run that sent it


@dataclass
class Session:
    """One student: a Streamlit session over the websocket, and what the page shows."""
    index: int
    base: str
    ws: object = None
    nodes: dict = field(default_factory=dict)            # delta path → Node
    widgets: dict = field(default_factory=dict)          # widget id → WidgetState
    query: str = f"ratio={L.START}"
    page_hash: str = ""
    started: int = 0            # runs started (new_session)
    finished: int = 0           # the run number of the last run that finished
    fragments_now: tuple = ()   # the fragments of the run going on ("": a full run)
    last_status: int | None = None      # the last script_finished (ForwardMsg.ScriptFinishedStatus)
    frames: int = 0             # ForwardMsgs received
    errors: list = field(default_factory=list)
    unsent: set = field(default_factory=set)             # widget types whose state is not modelled
    load_s: float | None = None
    moves_s: list = field(default_factory=list)
    timeouts: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list = field(default_factory=list)
    pollers: dict = field(default_factory=dict)          # fragment id → auto-rerun task

    # --- the page ---
    def metric(self, label: str) -> str | None:
        for node in self.nodes.values():
            if node.kind == "metric" and node.el.label == label:
                return node.el.body
        return None

    def widget(self, key: str) -> Node | None:
        """The widget whose user key is `key` (element ids end in "-<key>")."""
        for node in self.nodes.values():
            if node.kind in WIDGETS and node.el.id.endswith(f"-{key}"):
                return node
        return None

    def shows(self, text: str) -> bool:
        return any(node.kind == "alert" and text in node.el.body for node in self.nodes.values())

    def _note_error(self, text: str) -> None:
        text = text.strip().split("\n")[0][:200]
        if text not in self.errors:
            self.errors.append(text)

    # --- messages from the server ---
    def _element(self, path: tuple, fragment: str, element) -> None:
        kind = element.WhichOneof("type")
        el = getattr(element, kind)
        for p in [p for p in self.nodes if p[:len(path)] == path and p != path]:
            del self.nodes[p]                                  # an element has no children
        self.nodes[path] = Node(kind, el, fragment, self.started)
        if kind == "exception":
            self._note_error(f"{el.type}: {el.message}")
        elif kind == "alert" and el.format == Alert.ERROR:
            self._note_error(el.body)
        elif kind in WIDGETS:
            state = widget_value(kind, el, self.widgets.get(el.id))
            if state is not None:
                self.widgets[el.id] = state
        elif getattr(el, "id", "").startswith("$$ID") and kind not in TRIGGERS:
            self.unsent.add(kind)

    def _drop_stale(self, fragments: tuple) -> None:
        """What the frontend does when a run finishes: elements the run did not send go."""
        for path, node in list(self.nodes.items()):
            if node.run != self.started and (not fragments or node.fragment in fragments):
                del self.nodes[path]
        ids = {n.el.id for n in self.nodes.values() if n.kind in WIDGETS}
        self.widgets = {k: v for k, v in self.widgets.items() if k in ids}

    def handle(self, msg: ForwardMsg) -> None:
        self.frames += 1
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.started += 1
            self.page_hash = msg.new_session.page_script_hash
            self.fragments_now = tuple(msg.metadata.run.fragment_ids)
        elif kind == "navigation":          # st.navigation: the page that ran (new_session names app.py)
            self.page_hash = msg.navigation.page_script_hash or self.page_hash
        elif kind == "delta":
            delta, path = msg.delta, tuple(msg.metadata.delta_path)
            what = delta.WhichOneof("type")
            if what == "new_element":
                self._element(path, delta.fragment_id, delta.new_element)
            elif what == "add_block":
                self.nodes[path] = Node("block", delta.add_block, delta.fragment_id, self.started)
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "page_not_found":
            self._note_error(f"page not found: {msg.page_not_found.page_name}")
        elif kind == "script_finished":
            self.last_status = msg.script_finished
            if msg.script_finished in FINISHED:
                fragments = (tuple(msg.metadata.run.fragment_ids) or self.fragments_now
                             if msg.script_finished == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY else ())
                self._drop_stale(fragments)
                self.finished = self.started
            elif msg.script_finished == ForwardMsg.FINISHED_WITH_COMPILE_ERROR:
                self._note_error("the script did not compile")
                self.finished = self.started
        elif kind == "auto_rerun":
            self._poll(msg.auto_rerun.fragment_id, msg.auto_rerun.interval)
        elif kind == "stop_auto_rerun":
            for fid in msg.stop_auto_rerun.fragment_ids or list(self.pollers):
                task = self.pollers.pop(fid, None)
                if task is not None:
                    task.cancel()
        elif kind == "ref_hash":      # never asked for (no cached_message_hashes): a protocol change
            self._note_error(f"a cached-message reference the client cannot resolve: {msg.ref_hash}")
        self.changed.set()

    def _poll(self, fragment_id: str, interval: float) -> None:
        async def tick() -> None:
            try:
                while True:
                    await asyncio.sleep(max(0.1, interval))
                    await self.rerun(fragment_id, auto=True)
            except websockets.ConnectionClosed:
                pass
        old = self.pollers.pop(fragment_id, None)
        if old is not None:
            old.cancel()
        self.pollers[fragment_id] = asyncio.create_task(tick())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = ForwardMsg()
                msg.ParseFromString(raw)
                self.handle(msg)
        except websockets.ConnectionClosed:
            pass

    # --- messages to the server ---
    async def rerun(self, fragment_id: str = "", auto: bool = False) -> None:
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = self.query
        state.widget_states.widgets.extend(self.widgets.values())
        if self.page_hash:
            state.page_script_hash = self.page_hash
        else:
            state.page_name = PAGE                  # the frontend before it knows the pages: the URL's path
        state.fragment_id = fragment_id
        state.is_auto_rerun = auto
        state.context_info.url = f"{self.base}/{PAGE}?{self.query}"
        state.context_info.timezone, state.context_info.timezone_offset = "UTC", 0
        state.context_info.locale, state.context_info.is_embedded = "en-US", False
        await self.ws.send(msg.SerializeToString())

    async def until(self, target: int, after_run: int, timeout_s: float) -> bool:
        """Wait until a run started after run number `after_run` has finished and the page shows
        `target` % sparsity."""
        want, end = f"{target:.1f} %", time.monotonic() + timeout_s
        while not (self.finished > after_run and self.metric(METRIC) == want):
            left = end - time.monotonic()
            if left <= 0:
                print(f"student {self.index}: not settled at {target} (shows {self.metric(METRIC)})",
                      file=sys.stderr)
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        return True

    async def open(self, timeout_s: float) -> None:
        """What a browser does on the lesson link, timed to the first settled run (else a timeout)."""
        t0 = time.perf_counter()
        try:
            for path in (f"{PAGE}?{self.query}", "_stcore/health", "_stcore/host-config"):
                await asyncio.to_thread(lambda u: urllib.request.urlopen(u, timeout=timeout_s).read(),
                                        f"{self.base}/{path}")
            url = self.base.replace("http://", "ws://", 1) + "/_stcore/stream"
            self.ws = await websockets.connect(url, subprotocols=["streamlit"], origin=self.base,
                                               max_size=None, open_timeout=timeout_s)
            self.tasks.append(asyncio.create_task(self._read()))
            await self.rerun()
            ok = await self.until(L.START, 0, timeout_s - (time.perf_counter() - t0))
        except (OSError, websockets.WebSocketException, asyncio.TimeoutError) as exc:
            print(f"student {self.index}: no page: {exc}", file=sys.stderr)
            ok = False
        if ok:
            self.load_s = time.perf_counter() - t0
        else:
            self.timeouts += 1

    async def move(self, target: int, timeout_s: float) -> None:
        """The slider to `target` (one rerun, with the slider's fragment if it has one), timed until
        settled."""
        node = self.widget(SLIDER_KEY)
        if node is None:
            self._note_error(f"no slider with key {SLIDER_KEY}")
            self.timeouts += 1
            return
        state = WidgetState(id=node.el.id)
        state.double_array_value.data[:] = [float(target)]
        self.widgets[node.el.id] = state
        t0, asked = time.perf_counter(), self.started
        await self.rerun(node.fragment)
        if await self.until(target, asked, timeout_s):
            self.moves_s.append(time.perf_counter() - t0)
        else:
            self.timeouts += 1

    async def close(self) -> None:
        for task in [*self.pollers.values(), *self.tasks]:
            task.cancel()
        if self.ws is not None:
            await self.ws.close()


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
    students = [Session(i, base) for i in range(n)]
    watchers = [L.Student(n + i) for i in range(watch)]
    client = TreeMonitor(os.getpid(), exclude=monitor.root.pid)        # this process (and any Chromium)
    pw = browser = None
    if watch:
        from playwright.async_api import async_playwright
        pw = await async_playwright().start()
        browser = await pw.chromium.launch(executable_path=L.CHROMIUM, args=L.BROWSER_ARGS)
    try:
        t_load = time.time()
        await asyncio.gather(*(s.open(load_timeout_s) for s in students),
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
        "server_cores": {"loading": round(monitor.cores(t_load, t_idle), 2),
                         "idle": round(monitor.cores(t_idle, t_moves), 2),
                         "moving": round(monitor.cores(t_moves, t_close), 2),
                         "after_close": round(monitor.cores(t_closed, t_end), 2)},
        "server_cpu_s_per_load": round(monitor.cores(t_load, t_idle) * (t_idle - t_load) / (n + watch), 2),
        "server_cpu_s_per_move": round(monitor.cores(t_moves, t_close) * (t_close - t_moves)
                                       / (settled + sum(len(w.moves_s) for w in watchers)), 2)
        if settled else None,
        "browser_cores": {"loading": round(client.cores(t_load, t_idle), 2),      # the client's process
                          "idle": round(client.cores(t_idle, t_moves), 2),
                          "moving": round(client.cores(t_moves, t_close), 2)},
        "server_rss_mb": {"peak": round(monitor.rss_peak_mb(t_load, t_end)),
                          "after_close": round(monitor.rss_mb(t_end))},
        "load_average": {"start": round(monitor.load_max(t_load, t_load), 2),
                         "max": round(monitor.load_max(t_load, t_end), 2)},
        "wall_s": round(t_end - t_load, 1),
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
        student = Session(0, base)
        await student.open(max(10.0, end - time.time()))
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

def run_variant(label: str, options: dict[str, str], mode: str, args) -> list[dict]:
    """One fresh server with these options (class_load's variants) for one mode; every class size on it."""
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
            for n in args.sessions:
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
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 5], help="class sizes, run in turn")
    p.add_argument("--mode", choices=["lesson", "free"], nargs="+", default=["lesson"],
                   help="one fresh server per mode (as one class_load command per mode)")
    p.add_argument("--moves", type=int, default=5, help=f"moves per student (at most {len(L.LESSON)})")
    p.add_argument("--variant", action="append", default=[], metavar="LABEL=OPTION=VALUE,…",
                   help="a server with these options, as class_load's --variant (repeatable)")
    p.add_argument("--load-timeout", type=float, default=240, help="seconds a page may take to settle")
    p.add_argument("--move-timeout", type=float, default=30, help="seconds a move may take to settle")
    p.add_argument("--idle", type=float, default=10, help="seconds every session sits idle before moving")
    p.add_argument("--after", type=float, default=30, help="seconds measured after all sessions closed")
    p.add_argument("--think", type=float, default=1.0, help="seconds between a student's moves")
    p.add_argument("--watch", type=int, default=0, help="Chromium students (class_load's) alongside")
    p.add_argument("--screenshots", help="folder for a full-page screenshot of the first watching browser")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--markdown", help="append the table (with the command) to this file")
    args = p.parse_args(argv)
    if (max(args.sessions) > MAX_SESSIONS or min(args.sessions) < 1 or not 0 <= args.moves <= len(L.LESSON)
            or not 0 <= args.watch <= L.MAX_SESSIONS):
        p.error(f"sessions 1..{MAX_SESSIONS}, moves 0..{len(L.LESSON)}, watch 0..{L.MAX_SESSIONS}")
    if args.screenshots:
        Path(args.screenshots).mkdir(parents=True, exist_ok=True)
    rows = [row for mode in args.mode for text in (args.variant or ["app config="])
            for row in run_variant(*L.parse_variant(text), mode, args)]
    command = "python bench/protocol_client.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"command": command, "cpus": os.cpu_count(), "rows": rows}, indent=1))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(f"\n`{command}` ({os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M')})\n\n"
                    + L.markdown_table(rows))
    print(L.markdown_table(rows))
    return rows


if __name__ == "__main__":
    main()
