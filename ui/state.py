"""What the pages share: cached data and models (server-wide, read-only), the session's variants and
model in hand, the data in use, and the background jobs. Streamlit lives here and in pages/ only."""
from __future__ import annotations

import ipaddress
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from compression import data as D
from compression.files import ModelFileError, load_model
from compression.metrics import measure
from compression.variant import Variant, VariantBook
from compression.worker import CANCELLED, DONE, Job, JobQueue

ASSETS = Path(os.environ.get("PLAYGROUND_ASSETS") or Path(__file__).resolve().parent.parent / "assets")
PRETRAINED = ("resnet20", "resnet8")
SAMPLE, FULL, FOLDER = "Bundled sample (offline)", "Full CIFAR-10", "Local folder"


# --- server-wide, shared by every session (read-only) ---------------------------------------------------

@st.cache_resource(show_spinner=False)
def job_queue() -> JobQueue:
    """Training, fine-tuning and distillation: one at a time on a small machine, in order."""
    return JobQueue(workers=int(os.environ.get("PLAYGROUND_WORKERS", "1")))


@st.cache_resource(show_spinner=False)
def analysis_queue() -> JobQueue:
    """Short analyses (accuracy curves, sensitivity) and downloads: never stuck behind training."""
    return JobQueue(workers=1)


def job_threads() -> int:
    """Torch threads for background jobs: leave one core to the page so sliders stay quick."""
    return max(1, (os.cpu_count() or 2) - 1)


@st.cache_resource(show_spinner=False)
def sample_test() -> D.ImageSet:
    return D.load_sample(splits=("test",))


@st.cache_resource(show_spinner="Loading the bundled training images…")
def sample_train() -> D.ImageSet:
    return D.load_sample(splits=("train",))


@st.cache_resource(show_spinner=False)
def eval_set() -> D.ImageSet:
    return D.eval_subset(sample_test())


@st.cache_resource(show_spinner="Reading CIFAR-10…", max_entries=2)
def full_splits(folder: str) -> tuple[D.ImageSet, D.ImageSet]:
    """Keyed by the folder's resolved real path (call through data_in_use): `data`, `data/` and
    `./data//` are one folder, read once. At most two folders (180 MB each) stay in memory."""
    return D.load_cifar10(folder, "train"), D.load_cifar10(folder, "test")


@st.cache_resource(show_spinner="Loading the pretrained models…")
def pretrained_variants() -> dict[str, Variant]:
    """The shipped models as variants. Their models are shared by every session: never modify them."""
    import json

    out = {}
    for name in PRETRAINED:
        path = ASSETS / f"{name}.safetensors"
        if not path.exists():
            continue
        model, _ = load_model(path)
        card = json.loads(path.with_suffix(".json").read_text())
        metrics = measure(model, eval_set=eval_set())
        metrics.test_accuracy = card.get("test_accuracy")
        out[name] = Variant(f"{name} (pretrained)", model, "pretrained",
                            {"arch": name, "epochs": card.get("epochs"), "card": f"assets/{name}.json"},
                            metrics=metrics, id=f"pretrained-{name}")
    return out


# --- per session ---------------------------------------------------------------------------------------

def book() -> VariantBook:
    if "book" not in st.session_state:
        b = VariantBook()
        for v in pretrained_variants().values():
            b.add(v)
        st.session_state.book = b
        st.session_state.current = next(iter(b)).id if len(b) else None
    return st.session_state.book


def owner() -> str:
    if "owner" not in st.session_state:
        st.session_state.owner = uuid.uuid4().hex[:12]
    return st.session_state.owner


def current() -> Variant | None:
    b = book()
    v = b.get(st.session_state.get("current"))
    if v is None and len(b):
        v = next(iter(b))
        st.session_state.current = v.id
    return v


def require_current() -> Variant:
    """The model in hand; without one, the page says what to do and stops."""
    variant = current()
    if variant is None:
        st.error("No model in hand. Train one on the Train page or upload one on Compare & Download.")
        st.stop()
    return variant


def set_current(variant_id: str) -> None:
    st.session_state.current = variant_id


def add_variant(variant: Variant, make_current: bool = False) -> Variant:
    book().add(variant)
    if make_current:
        set_current(variant.id)
    return variant


# --- data in use -----------------------------------------------------------------------------------------

@dataclass
class DataInUse:
    label: str
    test: D.ImageSet          # the test split in use (sample: 2,000 images; full: 10,000)
    full: bool                # full test set available
    _train: D.ImageSet | None = None

    @property
    def train(self) -> D.ImageSet:
        """Training images: loaded only when a page needs them (the sample's are decoded on first use)."""
        return self._train if self._train is not None else sample_train()

    @property
    def eval(self) -> D.ImageSet:
        return eval_set()


def data_choice() -> str:
    return st.session_state.get("data_choice", SAMPLE)


def data_root() -> str:
    if data_choice() == FOLDER:
        return st.session_state.get("data_folder", "")
    return str(D.resolve_root())


def folder_policy() -> tuple[bool, list[str] | None]:
    """(may this visitor read a folder of the server's disk, the folders it is confined to or None).

    PLAYGROUND_DATA_ROOTS unset: visitors on this machine may use any folder, visitors from elsewhere none
    (a server's paths are not theirs to browse); "off": nobody; a list of folders (separated by
    os.pathsep): everybody, inside those folders only. Behind a reverse proxy every visitor seems local:
    set PLAYGROUND_DATA_ROOTS there."""
    roots = os.environ.get("PLAYGROUND_DATA_ROOTS")
    if roots is None:
        return visitor_is_local(), None
    roots = [r for r in roots.split(os.pathsep) if r.strip()]
    if not roots or roots == ["off"]:
        return False, None
    return True, roots


def data_in_use() -> DataInUse:
    """The data the session picked, falling back to the bundled sample (with a message) if it fails."""
    choice = data_choice()
    if choice in (FULL, FOLDER) and data_root().strip():
        root = data_root()
        try:
            allowed, roots = folder_policy() if choice == FOLDER else (True, None)
            if not allowed:
                raise D.DataError("reading a folder of the server is switched off for visitors "
                                  "(the operator can allow some with PLAYGROUND_DATA_ROOTS).")
            train, test = full_splits(str(D.checked_folder(root, roots)))
            return DataInUse(f"CIFAR-10 ({root})", test, True, train)
        except D.DataError as exc:
            st.session_state.data_error = str(exc)
    return DataInUse("bundled sample", sample_test(), False)


def visitor_is_local() -> bool:
    """Is this session's browser on the server's own machine? (Streamlit gives None for 127.0.0.1/::1.)"""
    ip = st.context.ip_address
    if ip is None:
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except (TypeError, ValueError):
        return False


# --- jobs ------------------------------------------------------------------------------------------------

def submit(kind: str, title: str, fn, queue: JobQueue | None = None) -> Job:
    """Start `fn(job)` in the background for this session, remembering it under `kind`."""
    q = queue or job_queue()
    job = q.submit(title, fn, owner=owner(), kind=kind, threads=job_threads())
    st.session_state.setdefault("jobs", {})[kind] = job
    return job


def job(kind: str) -> Job | None:
    return st.session_state.get("jobs", {}).get(kind)


def collect_finished_jobs() -> list[Variant]:
    """Add the variants that finished jobs produced (once each)."""
    added = []
    for j in list(st.session_state.get("jobs", {}).values()):
        if j.status in (DONE, CANCELLED) and not j.collected and j.result is not None:
            results = j.result if isinstance(j.result, list) else [j.result]
            for r in results:
                if isinstance(r, Variant):
                    add_variant(r)
                    added.append(r)
            j.collected = True
    return added


def set_page_threads() -> None:
    """Torch threads for this script run: all cores, or all but the worker's while a job runs (two
    thread teams on the same cores wait on each other and both crawl)."""
    busy = bool(job_queue().running() or analysis_queue().running())
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - (job_threads() if busy else 0)))


__all__ = ["ModelFileError"]


# --- analyses computed once per server in the background ----------------------------------------------

@st.cache_resource(show_spinner=False)
def curve_store() -> dict:
    """Finished analyses (accuracy curves, sensitivity), keyed by (variant id, settings…)."""
    return {}


@st.cache_resource(show_spinner=False)
def _analysis_jobs() -> dict:
    return {}


def analysis_job(key) -> Job | None:
    return _analysis_jobs().get(key)


def start_analysis(key, title: str, fn) -> Job:
    """Run `fn(job)` once per key on the analysis queue; its result lands in curve_store()[key]."""
    jobs = _analysis_jobs()
    existing = jobs.get(key)
    if existing is not None and (existing.active or existing.status == DONE):
        return existing
    store = curve_store()

    def run(job: Job):
        result = fn(job)
        if not job.should_stop():
            store[key] = result
        return result

    job = analysis_queue().submit(title, run, owner=owner(), kind="analysis", threads=job_threads())
    jobs[key] = job
    return job


@st.cache_resource(show_spinner=False)
def gallery() -> D.ImageSet:
    """One eval-subset image per class, for the distillation temperature slider."""
    ev = eval_set()
    index = torch.stack([torch.nonzero(ev.labels == c).flatten()[0] for c in range(len(D.CLASSES))])
    return ev.subset(index, "gallery")
