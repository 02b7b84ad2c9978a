"""Small things several test files use."""
import hashlib
import json
import zlib

import torch

from compression import huffman
from compression.data import ImageSet
from compression.models import create_model
from compression.packed import PREAMBLE


def toy_set(n=256, seed=0):
    """A learnable toy task: the class is which tenth of the image (a band of columns) is brightest."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.randint(0, 60, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    for i, c in enumerate(labels.tolist()):
        images[i, :, :, 3 * c:3 * c + 3] = 255
    return ImageSet(images, labels, "toy")


# --- packed files, taken apart and put back together (with a valid checksum) ---------------------------

def read_parts(data):
    _, _, header_len, payload_len = PREAMBLE.unpack_from(data)
    start = PREAMBLE.size
    header = json.loads(zlib.decompress(data[start:start + header_len]))
    return header, data[start + header_len:start + header_len + payload_len]


def rebuild(data, edit_header=None, edit_payload=None, version=1):
    """A file with an edited header/payload and a *valid* checksum: what a hostile file looks like."""
    header, payload = read_parts(data)
    if edit_header:
        edit_header(header)
    if edit_payload:
        payload = edit_payload(payload)
    return with_checksum(zlib.compress(json.dumps(header).encode()), payload, version)


def with_checksum(raw_header, payload, version=1):
    body = PREAMBLE.pack(b"CMPK", version, len(raw_header), len(payload)) + raw_header + payload
    return body + hashlib.sha256(body).digest()


def zero_packed(arch: str, width: float) -> bytes:
    """A packed file of `arch` at `width` whose weights are all zero, written by hand: a few hundred KB
    however large the model it describes (each weight tensor is 'sparse' with nothing stored)."""
    with torch.device("meta"):
        state = create_model(arch, width, init=False).state_dict()
    empty_table = huffman.table_to_bytes({})
    tensors, payload = [], b""
    for name, t in state.items():
        dtype = str(t.dtype).removeprefix("torch.")
        if t.dim() in (2, 4):
            tensors.append({"name": name, "dtype": dtype, "shape": list(t.shape), "positions": "sparse",
                            "values": "raw", "stored": 0, "gap_symbols": 0,
                            "bytes": {"gap_table": len(empty_table), "gaps": 0, "values": 0}})
            payload += empty_table
        else:
            tensors.append({"name": name, "dtype": dtype, "shape": list(t.shape)})
            payload += bytes(t.numel() * t.element_size())
    header = {"format": "compression-playground-packed", "arch": arch, "width": width, "metadata": {},
              "tensors": tensors}
    return with_checksum(zlib.compress(json.dumps(header).encode()), payload)
def confident_model(arch="resnet8", width=0.25, seed=0):
    """An untrained model with confident, varied answers, as a trained one gives: every residual branch
    switched on (its last BN scale 1 instead of 0) and the classifier's weights scaled up."""
    torch.manual_seed(seed)
    model = create_model(arch, width=width)
    with torch.no_grad():
        for block in (m for m in model.modules() if hasattr(m, "bn2")):
            block.bn2.weight.fill_(1.0)
        model.fc.weight.mul_(40)
    return model.eval()


def on_grid(w, bits, per_channel):
    """Every value is an integer multiple of the symmetric step s = max|w| / (2^(b−1) − 1), per output
    channel or per tensor, within the grid's range."""
    qmax = 2 ** (bits - 1) - 1
    rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
    q = rows / (rows.abs().amax(dim=1, keepdim=True) / qmax)
    return bool(torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= qmax + 1e-3)
