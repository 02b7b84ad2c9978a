"""One student without a browser: a Streamlit session over the websocket /_stcore/stream, speaking
Streamlit's protobufs (BackMsg up, ForwardMsg down) as the frontend does, on the Prune page.

- `open` fetches the page, the health check and the host config as the browser does, connects, and asks
  for a run of the page through its lesson link (`rerun_script` with the page's name and the link's
  query string, as the frontend does before it knows the pages);
- it keeps the page's elements by delta path (an element replaces what was at its path; when a full run
  finishes, the elements it did not send go, when a fragment run finishes, those of its fragments), the
  page (`navigation`: the page that ran), the query string (`page_info_changed`: the workspace token
  the app adds) and every widget's value (what the server set, else what the client holds, else the
  default), so a rerun carries the full widget state the browser would send;
- `move` sets the pruning-ratio slider (found by its key `prune_ratio`) and sends one `rerun_script`,
  with the slider's `fragment_id` when the slider's delta carried one (a slider in an `st.fragment`);
- a load or a move is *settled* when a run that started after it was asked for has finished
  (`script_finished`, not "finished early for a rerun") and the metric "Sparsity (prunable layers)"
  reads the new value ("70.0 %"). Errors: Exception elements, error alerts, `page_not_found`.
- `auto_rerun` (a polling fragment) is answered as the browser does: a fragment rerun every interval
  until `stop_auto_rerun`.

Cached messages: the server replaces a large element by a `ref_hash` reference only when the client's
`rerun_script` lists that hash in `cached_message_hashes` (streamlit/runtime/scriptrunner_utils/
script_run_context.py, `enqueue`; Streamlit 1.67 has no /_stcore/message route to fetch one). These
clients list none, so every element comes whole; the browser lists what it holds and gets references
for elements it already has, a little less to send.
"""
from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import websockets
from streamlit.proto.Alert_pb2 import Alert
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

PAGE, SLIDER_KEY, METRIC = "prune", "prune_ratio", "Sparsity (prunable layers)"
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
    query: str = "ratio=50"            # the lesson link's
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
            self.fragments_now = tuple(msg.metadata.run.fragment_ids)
            if not self.fragments_now:      # a fragment run names the main script: keep the page
                self.page_hash = msg.new_session.page_script_hash
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
                print(f"student {self.index}: not settled at {target} in {timeout_s:.0f} s (shows "
                      f"{self.metric(METRIC)}, {'no run finished since' if self.finished <= after_run else 'a run finished'})",
                      file=sys.stderr)
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                pass
        return True

    async def open(self, timeout_s: float, start: int = 50) -> None:
        """What a browser does on the lesson link, timed until the page shows `start` % after a
        finished run (else a timeout)."""
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
            ok = await self.until(start, 0, timeout_s - (time.perf_counter() - t0))
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
