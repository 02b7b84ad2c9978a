"""The app as a benchmark meets it: `streamlit run app.py` on a free port of 127.0.0.1 with a data folder
of its own, and the CPU and memory of a process tree (the server and its children, or a browser),
sampled from /proc through psutil. Used by bench/class_load.py and its CI test."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent


# --- the server -------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, options: dict[str, str] | None = None, log: Path | None = None,
                 timeout_s: float = 120, app_dir: Path = ROOT, env: dict[str, str] | None = None
                 ) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on 127.0.0.1 with PLAYGROUND_HOME=home; returns (process, base URL) once its
    health check answers. `options` are Streamlit config options (`runner.postScriptGC` → `false`);
    `app_dir` the checkout whose app.py runs (another one: a before/after in one run); `env` more
    environment variables (PLAYGROUND_COMPUTE_SLOTS, …)."""
    port = free_port()
    args = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
            "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none"]      # an edit of the checkout during a run must not reload the app
    for key, value in (options or {}).items():
        args += [f"--{key}", value]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PLAYGROUND_HOME": str(home), **(env or {})}
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(args, cwd=app_dir, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"streamlit did not answer within {timeout_s:.0f} s (log: {log})")


def start_proxied(home: Path, k: int, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """scripts/serve_class.sh: K app processes behind nginx, one Dask scheduler and worker (docs/PROXY.md),
    with PLAYGROUND_HOME=home. Returns (the script's process, the proxy's URL, each app process's URL)
    once every app process answers; stop_server stops them all."""
    port, first = free_port(), free_port()          # the app processes on first+1 … first+k
    env = {**os.environ, "PLAYGROUND_HOME": str(home), "RUN_DIR": str(home / "run"), "DASK_PORT": str(free_port()),
           "APP_PORT0": str(first), **(env or {})}
    env.pop("PLAYGROUND_SCHEDULER", None)
    proc = subprocess.Popen([str(ROOT / "scripts" / "serve_class.sh"), str(k), str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()                   # said once every app process answers (or nothing: failed)
    if "behind" not in line:
        stop_server(proc)
        raise RuntimeError(f"serve_class.sh did not start (logs: {home / 'run'})")
    return proc, f"http://127.0.0.1:{port}", [f"http://127.0.0.1:{first + i}" for i in range(1, k + 1)]


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- CPU and memory of a process tree ----------------------------------------------------------------------

class TreeMonitor:
    """Samples a process and its descendants (less the tree of `exclude`) every `every_s`: cumulated CPU
    seconds (children that ended keep counting), the summed RSS, and the 1-minute load average.
    `cores(t0, t1)` = CPU s / wall s."""

    def __init__(self, pid: int, every_s: float = 0.5, exclude: int | None = None) -> None:
        self.root, self.every_s, self.exclude = psutil.Process(pid), every_s, exclude
        self.samples: list[tuple[float, float, float, float]] = []     # (time, cpu s, rss bytes, load avg)
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        rss = 0.0
        skip = set()
        if self.exclude is not None and psutil.pid_exists(self.exclude):
            skip = {self.exclude, *(c.pid for c in psutil.Process(self.exclude).children(recursive=True))}
        for proc in [self.root, *self.root.children(recursive=True)]:
            if proc.pid in skip:
                continue
            try:
                times, mem = proc.cpu_times(), proc.memory_info()
            except psutil.Error:
                continue
            self._seen[proc.pid] = times.user + times.system
            rss += mem.rss
        self.samples.append((time.time(), sum(self._seen.values()), rss, os.getloadavg()[0]))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._sample()
            except psutil.Error:
                return
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _window(self, t0: float, t1: float) -> list[tuple[float, float, float, float]]:
        return [s for s in self.samples if t0 <= s[0] <= t1] or [min(self.samples, key=lambda s: abs(s[0] - t1))]

    def cores(self, t0: float, t1: float) -> float:
        w = self._window(t0, t1)
        return (w[-1][1] - w[0][1]) / max(1e-9, w[-1][0] - w[0][0])

    def rss_peak_mb(self, t0: float, t1: float) -> float:
        return max(s[2] for s in self._window(t0, t1)) / 2**20

    def rss_mb(self, t: float) -> float:
        return min(self.samples, key=lambda s: abs(s[0] - t))[2] / 2**20

    def load_max(self, t0: float, t1: float) -> float:
        return max(s[3] for s in self._window(t0, t1))


def wait_quiet(monitor: TreeMonitor, below: float = 0.15, for_s: float = 3.0, timeout_s: float = 180) -> bool:
    """Wait until the server uses less than `below` cores over `for_s` seconds (False on timeout)."""
    end = time.time() + timeout_s
    while time.time() < end:
        time.sleep(for_s)
        if monitor.cores(time.time() - for_s, time.time()) < below:
            return True
    return False
