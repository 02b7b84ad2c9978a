"""What the pages share of data: the bundled sample, CIFAR-10 folders and the shipped models, cached for
the whole server (read-only), and the data this session uses. A workspace's variants and the model in
hand are in ui/workspace.py, background work in ui/jobs.py and ui/analyses.py."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from compression import data as D
from compression.files import load_model
from compression.metrics import measure
from compression.variant import Variant

ASSETS = Path(os.environ.get("PLAYGROUND_ASSETS") or Path(__file__).resolve().parent.parent / "assets")
PRETRAINED = ("resnet20", "resnet8")
SAMPLE, FULL, FOLDER = "Bundled sample (offline)", "Full CIFAR-10", "Local folder"


# --- server-wide, shared by every session (read-only) ---------------------------------------------------

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
    """The shipped models as variants, measured once per server; ui/workspace.py registers them in the
    store, where pages find them."""
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
                            metrics=metrics)
    return out


# --- data in use -----------------------------------------------------------------------------------------

@dataclass
class DataInUse:
    label: str
    test: D.ImageSet          # the test split in use (sample: 2,000 images; full: 10,000)
    full: bool                # full test set available
    _train: D.ImageSet | None = None
    folder: str | None = None  # the real path of cifar-10-batches-py/ (full data only)

    @property
    def train(self) -> D.ImageSet:
        """Training images: loaded only when a page needs them (the sample's are decoded on first use)."""
        return self._train if self._train is not None else sample_train()

    @property
    def eval(self) -> D.ImageSet:
        return eval_set()

    def spec(self, test: bool = False) -> dict:
        """The same data named for a job's worker (compression/tasks.py DataSpec); `test`: also measure
        the result on the full test split."""
        if self.folder is None:
            return {"source": "sample"}
        return {"source": "cifar10", "root": self.folder, "test": test}


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
    os.pathsep): everybody, inside those folders only. Behind a reverse proxy on this machine that does not
    pass the visitor's address on (X-Forwarded-For, which Streamlit's server trusts from 127.0.0.1) every
    visitor seems local: set PLAYGROUND_DATA_ROOTS there. scripts/serve_class.sh's nginx passes it on."""
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
            folder = str(D.checked_folder(root, roots))
            train, test = full_splits(folder)
            return DataInUse(f"CIFAR-10 ({root})", test, True, train, folder)
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


@st.cache_resource(show_spinner=False)
def gallery() -> D.ImageSet:
    """One eval-subset image per class, for the distillation temperature slider."""
    ev = eval_set()
    index = torch.stack([torch.nonzero(ev.labels == c).flatten()[0] for c in range(len(D.CLASSES))])
    return ev.subset(index, "gallery")
