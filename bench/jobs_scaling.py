"""Does a class's line of jobs move faster with more Dask workers, and what does the engine cost the app
at start? Ten fine-tune jobs from ten workspaces, on one local worker and then on two workers of a
separately started `dask scheduler` + `dask worker --nworkers 2 --nthreads 1` (127.0.0.1), timed from
the first submit to the last result. The ratio of the two totals is the speedup.

    python bench/jobs_scaling.py [--jobs 10] [--epochs 1]

Each job: resnet20 from assets/ pruned 50 % (magnitude, global), fine-tuned --epochs on the bundled
sample (5,000 images) and measured as the app measures a variant (eval subset, packed size, latency).
App start: importing compression.engine in a fresh process, Engine() (the cluster starts lazily, so it
should cost nothing) and the first submit's wait until its job runs (cluster start, worker import).
The 1-minute load average is sampled every 5 s during each run: the machine may be shared.
"""
import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compression.engine import DONE, RUNNING, Engine  # noqa: E402
from compression.files import load_model  # noqa: E402
from compression.portable import model_payload, variant_payload  # noqa: E402
from compression.prune import prune  # noqa: E402
from compression.variant import measure_variant  # noqa: E402


class LoadSampler:
    """The 1-minute load average every `every` seconds while in use."""

    def __init__(self, every=5.0):
        self.samples, self._done, self._every = [], threading.Event(), every

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def _run(self):
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._done.wait(self._every):
                return

    def summary(self):
        return f"{statistics.mean(self.samples):.1f} mean, {max(self.samples):.1f} max"


def job_spec(epochs):
    model, _ = load_model(ROOT / "assets" / "resnet20.safetensors")
    parent = measure_variant(model, "pretrained", {"arch": "resnet20"}, name="resnet20 (pretrained)")
    return {"data": {"source": "sample"}, "parent": variant_payload(parent), "model": model_payload(prune(model, 0.5)),
            "technique": "pruned", "settings": {"method": "magnitude", "amount": 0.5}, "epochs": epochs,
            "name": "resnet20 pruned 50% + FT"}


def run_line(engine, spec, jobs):
    """Submit `jobs` fine-tunes from as many workspaces; (seconds from the first submit to the last
    result, seconds until the first job ran, seconds the first submit took, the jobs' views)."""
    start = time.perf_counter()
    ids = [engine.submit(f"workspace-{i}", "prune_ft", f"fine-tune {i}", "finetune", spec) for i in range(jobs)]
    submitted = time.perf_counter() - start
    while engine.job(ids[0]).status not in (RUNNING, DONE):
        time.sleep(0.05)
    first_running = time.perf_counter() - start
    views = [engine.wait(i) for i in ids]
    total = time.perf_counter() - start
    failed = [v for v in views if v.status != DONE]
    if failed:
        sys.exit(f"{len(failed)} jobs did not finish: {failed[0].error}")
    return total, first_running, submitted / jobs, views


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(workers):
    """A `dask scheduler` and a `dask worker --nworkers N --nthreads 1`, as a department would start them."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": ROOT, "env": env}
    processes = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                   "--no-dashboard"], **quiet),
                 subprocess.Popen(["dask", "worker", f"tcp://127.0.0.1:{port}", "--nworkers", str(workers),
                                   "--nthreads", "1", "--no-dashboard"], **quiet)]
    from distributed import Client

    with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
        client.wait_for_workers(workers, timeout=120)
    return f"tcp://127.0.0.1:{port}", processes


def import_seconds():
    code = "import time; t = time.perf_counter(); import compression.engine; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--epochs", type=float, default=1.0)
    args = parser.parse_args()
    spec = job_spec(args.epochs)
    rows = []

    imported = import_seconds()
    t = time.perf_counter()
    local = Engine(workers=1)
    constructed = time.perf_counter() - t
    with LoadSampler() as load:
        total, first_running, per_submit, views = run_line(local, spec, args.jobs)
    local.close()
    rows.append(("1 local worker (LocalCluster, 1 thread)", total, views, load.summary()))

    address, processes = start_cluster(2)
    try:
        cluster = Engine(scheduler=address)
        with LoadSampler() as load:
            total2, _, _, views2 = run_line(cluster, spec, args.jobs)
        cluster.close()
    finally:
        for p in processes:
            p.terminate()
            p.wait(30)
    rows.append(("2 workers (dask scheduler + dask worker --nworkers 2 --nthreads 1)", total2, views2, load.summary()))

    print(f"{args.jobs} fine-tune jobs, {args.epochs:g} epoch(s) each, resnet20 pruned 50 %, bundled sample; "
          f"{os.cpu_count()} cores\n")
    print("| cluster | total (first submit → last result) | mean job (start → end) | workers used | load average |")
    print("| --- | --- | --- | --- | --- |")
    for name, seconds, vs, load_text in rows:
        mean_job = statistics.mean(v.finished - v.started for v in vs)
        print(f"| {name} | {seconds:.1f} s | {mean_job:.1f} s | {len({v.worker for v in vs})} | {load_text} |")
    print(f"\nspeedup (1 worker / 2 workers): {total / total2:.2f}×\n")
    print("| app start | seconds |\n| --- | --- |")
    print(f"| import compression.engine (fresh process, torch included) | {imported:.2f} |")
    print(f"| Engine() | {constructed:.6f} |")
    print(f"| a submit (mean of {args.jobs}; the first one starts nothing) | {per_submit:.4f} |")
    print(f"| first submit → its job runs (local cluster start, worker start) | {first_running:.1f} |")


if __name__ == "__main__":
    main()
