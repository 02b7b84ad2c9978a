"""Saving and loading models without ever executing code from a file.

Weights travel as safetensors: a JSON header and raw tensor bytes, nothing to unpickle. The header's
metadata names the architecture ("arch", "width"), so a file is all it takes to rebuild the model.
Structured pruning leaves layers with fewer channels than the architecture's defaults; loading
reshapes each layer to the stored tensors, so pruned models load like any other.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save

from . import packed
from .checks import _short, check_identity, check_tensor_specs
from .weights import ModelFileError, model_from_state_dict

FORMAT = "compression-playground/1"


def state_dict_bytes(model: nn.Module, metadata: dict | None = None) -> bytes:
    """The model's state_dict as safetensors bytes, with `metadata` (str -> str) in the header."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, **{k: str(v) for k, v in (metadata or {}).items()}}
    return st_save(tensors, metadata=meta)


def model_metadata(model: nn.Module) -> dict:
    return {"arch": getattr(model, "arch", ""), "width": str(getattr(model, "width", 1.0))}


def save_model(model: nn.Module, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(state_dict_bytes(model, {**model_metadata(model), **(metadata or {})}))
    return path


# safetensors' own names for the dtypes a model file may use
SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
                      "I64": "int64", "I32": "int32"}
MAX_SAFETENSORS_HEADER = 100_000_000     # the safetensors library's own limit


def pickle_kind(data: bytes) -> str | None:
    """What a file that runs code when loaded looks like from its first bytes: a torch.save checkpoint
    (a zip archive of pickles), a plain Python pickle (protocol 2 to 5), or None."""
    if data[:4] == b"PK\x03\x04":
        return "a PyTorch checkpoint (torch.save: a zip of pickles)"
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return "a Python pickle"
    return None


def refuse_pickles(data: bytes, name: str) -> None:
    kind = pickle_kind(data)
    if kind:
        raise ModelFileError(
            f"{name} is {kind}. Loading one can run any code, so this app never opens them. Save the weights "
            f"with safetensors instead (safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) "
            f"and upload that file.")


def read_safetensors_header(data: bytes, name: str = "file") -> tuple[dict, dict]:
    """({tensor name: (dtype name, shape)}, metadata) from a safetensors file's JSON header, without
    decoding any tensor; ModelFileError for anything malformed."""
    refuse_pickles(data, name)
    if len(data) < 8:
        raise ModelFileError(f"{name} is too short to be a model file ({len(data)} bytes).")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > MAX_SAFETENSORS_HEADER:
        raise ModelFileError(f"{name} is not a safetensors model file (its first 8 bytes are not a header "
                             f"length). Upload a .safetensors or .cmpk file saved by this app or its library.")
    if header_len > len(data) - 8:
        raise ModelFileError(f"{name} is truncated: its header says {header_len} bytes, only {len(data) - 8} "
                             f"follow. The download or copy was cut short; fetch the file again.")
    try:
        header = json.loads(data[8:8 + header_len])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ModelFileError(f"{name} is not a valid safetensors model file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{name} is not a valid safetensors model file (its header is not a JSON object).")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ModelFileError(f"{name} is not a valid safetensors model file (its metadata is not text).")
    specs = {}
    for key, entry in header.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise ModelFileError(f"{name} is not a valid safetensors model file (entry {_short(key)!r}).")
        dtype = entry.get("dtype")
        specs[key] = (SAFETENSORS_DTYPES.get(dtype, str(dtype)) if isinstance(dtype, str) else "?",
                      tuple(entry["shape"]))
    return specs, metadata


def read_safetensors(data: bytes, name: str = "file") -> tuple[dict[str, torch.Tensor], dict]:
    """Parse safetensors bytes into (tensors, metadata), with a clear error for anything malformed."""
    _, metadata = read_safetensors_header(data, name)
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, TypeError, OverflowError) as exc:
        raise ModelFileError(f"{name} is not a valid safetensors model file ({_short(exc, 120)}).") from None
    return tensors, metadata


def load_model_bytes(data: bytes, name: str = "file", arch: str | None = None,
                     width: float | None = None) -> tuple[nn.Module, dict]:
    """Load a safetensors model from bytes: (model in eval mode, metadata). The declared architecture and
    every tensor's dtype and shape are checked against each other before any tensor is decoded."""
    specs, meta = read_safetensors_header(data, name)
    arch = arch or meta.get("arch")
    if not arch:
        raise ModelFileError(f"{name} does not say which architecture it holds; choose one when uploading.")
    arch, width = check_identity(arch, width if width is not None else meta.get("width", 1.0), name)
    check_tensor_specs(specs, arch, width, name)
    tensors, meta = read_safetensors(data, name)
    return model_from_state_dict(tensors, arch, width, name), meta


def load_any_bytes(data: bytes, name: str = "file", arch: str | None = None) -> tuple[nn.Module, dict]:
    """Load a model file of either kind the app writes: packed (.cmpk) or safetensors."""
    if data[:len(packed.MAGIC)] == packed.MAGIC:
        return packed.unpack_model(data, name)
    return load_model_bytes(data, name, arch)


def load_model(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, dict]:
    """Load a packed or safetensors model file: (model in eval mode, metadata)."""
    path = Path(path)
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file: name a .cmpk or .safetensors file in it.")
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ModelFileError(f"{path} is {path.stat().st_size / 1e6:.0f} MB, more than any model this app "
                             f"makes ({MAX_FILE_BYTES / 1e6:.0f} MB at most).")
    return load_any_bytes(path.read_bytes(), path.name, arch)


MAX_FILE_BYTES = 64_000_000       # resnet56 at width 2 in fp32 is 13.7 MB; four times that is plenty


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
