"""The worst a hostile upload can cost the server: memory and time to load (validate, decode, build and
probe) the most expensive files an upload of at most 20 MB (the server's maxUploadSize) can be, each in a
fresh process, and the time to evaluate the largest model the app accepts on the eval subset.

    python bench/hostile_upload.py            # writes the table into docs/HOSTILE_INPUT.md

Files (each as large as the 20 MB limit allows, or as the format allows):
- packed-dense-raw: the largest accepted architecture (resnet56 at width 2), every tensor stored raw, dense;
- packed-sparse-gaps: the same, every weight 'sparse' with every value stored and Huffman-coded gap
  streams of the longest codes (the decoder's most memory per stored value);
- packed-codebook-16bit: every weight through a 256-entry codebook with 16-bit Huffman codes;
- safetensors-float64: the largest model whose float64 safetensors file fits in 20 MB;
- packed-claims-huge: a few-KB file claiming resnet56 at width 8 (refused before anything is built);
- junk-20mb: 20 MB of random bytes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from compression import huffman  # noqa: E402
from compression.checks import LARGEST_MODEL  # noqa: E402
from compression.files import state_dict_bytes  # noqa: E402
from compression.models import create_model  # noqa: E402
from compression.packed import MAGIC, PREAMBLE, VERSION  # noqa: E402
from compression.train import threads_text  # noqa: E402

UPLOAD_LIMIT = 20 * 1024 * 1024
# A complete code over 256 symbols in which symbol 0 has the longest code allowed (16 bits).
LONGEST_CODES = huffman.code_lengths({s: 2 ** min(s, 40) for s in range(256)})


def _container(arch: str, width: float, tensors: list[dict], payload: bytes) -> bytes:
    import hashlib

    header = zlib.compress(json.dumps({"format": "compression-playground-packed", "arch": arch, "width": width,
                                       "metadata": {}, "tensors": tensors}).encode())
    body = PREAMBLE.pack(MAGIC, VERSION, len(header), len(payload)) + header + payload
    return body + hashlib.sha256(body).digest()


def _spec(arch: str, width: float) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return create_model(arch, width).state_dict()


def packed_file(layout: str, arch: str = LARGEST_MODEL[0], width: float = LARGEST_MODEL[1]) -> bytes:
    """A packed file of the largest accepted model whose weights all use `layout`."""
    tensors, parts = [], []
    rng = np.random.default_rng(0)
    for name, t in _spec(arch, width).items():
        dtype = str(t.dtype).removeprefix("torch.")
        n = t.numel()
        if t.dim() not in (2, 4) or layout == "dense-raw":
            tensors.append({"name": name, "dtype": dtype, "shape": list(t.shape)})
            parts.append(rng.standard_normal(n).astype("<f4").tobytes() if dtype == "float32" else bytes(8 * n))
            continue
        if layout == "sparse-gaps":     # every value stored, each gap 0 coded with a 16-bit code
            gaps = huffman.encode(np.zeros(n, dtype=np.int64), LONGEST_CODES)[0]
            table_bytes = huffman.table_to_bytes(LONGEST_CODES)
            values = rng.standard_normal(n).astype("<f4").tobytes()
            tensors.append({"name": name, "dtype": dtype, "shape": list(t.shape), "positions": "sparse", "values": "raw",
                            "stored": n, "gap_symbols": n,
                            "bytes": {"gap_table": len(table_bytes), "gaps": len(gaps), "values": len(values)}})
            parts += [table_bytes, gaps, values]
        else:                           # codebook-16bit
            indices = huffman.encode(np.zeros(n, dtype=np.int64), LONGEST_CODES)[0]
            table_bytes = huffman.table_to_bytes(LONGEST_CODES)
            codebook = rng.standard_normal(256).astype("<f4").tobytes()
            tensors.append({"name": name, "dtype": dtype, "shape": list(t.shape), "positions": "dense",
                            "values": "codebook", "stored": n, "codebook": 256,
                            "bytes": {"codebook": len(codebook), "index_table": len(table_bytes), "indices": len(indices)}})
            parts += [codebook, table_bytes, indices]
    return _container(arch, width, tensors, b"".join(parts))


def largest_float64_safetensors() -> tuple[bytes, str]:
    """The widest resnet56 whose float64 safetensors fits the upload limit."""
    for width in (2.0, 1.75, 1.5, 1.25, 1.0):
        model = create_model("resnet56", width).double()
        data = state_dict_bytes(model, {"arch": "resnet56", "width": str(width)})
        if len(data) <= UPLOAD_LIMIT:
            return data, f"resnet56 ×{width:g}"
    raise RuntimeError("no resnet56 fits")


def worst_case_files() -> dict[str, bytes]:
    claims = _container("resnet56", 8.0, [], b"")
    return {"packed-dense-raw": packed_file("dense-raw"), "packed-sparse-gaps": packed_file("sparse-gaps"),
            "packed-codebook-16bit": packed_file("codebook-16bit"),
            "safetensors-float64": largest_float64_safetensors()[0], "packed-claims-huge": claims,
            "junk-20mb": np.random.default_rng(1).bytes(UPLOAD_LIMIT)}


MEASURE = """
import sys, time
sys.path.insert(0, {root!r})
from compression.files import ModelFileError, load_any_bytes

def status(field):   # kB, from the kernel's account of this process
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(field))

data = open(sys.argv[1], 'rb').read()
before = status('VmRSS:')
start = time.perf_counter()
try:
    load_any_bytes(data, 'upload')
    outcome = 'loaded'
except ModelFileError as exc:
    outcome = 'refused: ' + str(exc)[:70]
print(time.perf_counter() - start, (status('VmHWM:') - before) / 1024, outcome, sep='\\t')
"""


def measure(files: dict[str, bytes]) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            path = Path(tmp) / name
            path.write_bytes(data)
            out = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT)), str(path)],
                                 capture_output=True, text=True, check=True)
            seconds, mb, outcome = out.stdout.strip().split("\t")
            rows.append({"file": name, "bytes": len(data), "seconds": float(seconds), "peak_mb": float(mb),
                         "outcome": outcome})
            print(rows[-1], flush=True)
    return rows


def evaluation_seconds() -> float:
    """Time to evaluate the largest accepted model on the eval subset (1,000 images), as an upload is."""
    from compression.data import eval_subset, load_sample
    from compression.train import evaluate

    model = create_model(*LARGEST_MODEL).eval()
    ev = eval_subset(load_sample(splits=("test",)))
    evaluate(model, ev.subset(slice(0, 100)))
    start = time.perf_counter()
    evaluate(model, ev, batch_size=100)
    return time.perf_counter() - start


def main() -> None:
    load_before = os.getloadavg()[0]
    rows = measure(worst_case_files())
    eval_s = evaluation_seconds()
    load_after = os.getloadavg()[0]
    lines = ["| file | size | load time (s) | peak memory growth (MB) | outcome |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['file']} | {r['bytes'] / 1e6:.2f} MB | {r['seconds']:.2f} | {r['peak_mb']:.0f} | "
                     f"{r['outcome'].replace('|', '/')} |")
    table = "\n".join(lines)
    doc = ROOT / "docs" / "HOSTILE_INPUT.md"
    text = doc.read_text()
    start, end = text.index("<!-- table -->"), text.index("<!-- /table -->")
    measured = (f"<!-- table -->\nMeasured with `python bench/hostile_upload.py` on {threads_text()} "
                f"({time.strftime('%Y-%m-%d')}; load average {load_before:.2f} before, {load_after:.2f} after):\n\n"
                f"{table}\n\nEvaluating the largest accepted model ({LARGEST_MODEL[0]} at width {LARGEST_MODEL[1]:g}) "
                f"on the 1,000-image eval subset, as an upload is: **{eval_s:.1f} s**.\n")
    doc.write_text(text[:start] + measured + text[end:])
    print(table)
    print(f"evaluation of the largest accepted model: {eval_s:.1f} s")


if __name__ == "__main__":
    main()
