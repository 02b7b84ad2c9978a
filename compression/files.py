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


def read_safetensors(data: bytes, name: str = "file") -> tuple[dict[str, torch.Tensor], dict]:
    """Parse safetensors bytes into (tensors, metadata), with a clear error for anything malformed."""
    if len(data) < 8:
        raise ModelFileError(f"{name} is too short to be a model file ({len(data)} bytes).")
    try:
        header_len = int.from_bytes(data[:8], "little")
        if header_len > len(data) - 8:
            raise ModelFileError(f"{name} is truncated: its header says {header_len} bytes, "
                                 f"only {len(data) - 8} follow.")
        header = json.loads(data[8:8 + header_len])
        tensors = st_load(data)
    except ModelFileError:
        raise
    except (SafetensorError, ValueError, UnicodeDecodeError, TypeError) as exc:
        raise ModelFileError(f"{name} is not a valid safetensors model file ({exc}).") from None
    return tensors, dict(header.get("__metadata__") or {})


def load_model_bytes(data: bytes, name: str = "file", arch: str | None = None,
                     width: float | None = None) -> tuple[nn.Module, dict]:
    """Load a safetensors model from bytes: (model in eval mode, metadata)."""
    tensors, meta = read_safetensors(data, name)
    arch = arch or meta.get("arch")
    if not arch:
        raise ModelFileError(f"{name} does not say which architecture it holds; choose one when uploading.")
    try:
        width = float(width if width is not None else meta.get("width", 1.0))
    except ValueError:
        raise ModelFileError(f"{name}: width {meta.get('width')!r} is not a number.") from None
    return model_from_state_dict(tensors, arch, width, name), meta


def load_any_bytes(data: bytes, name: str = "file", arch: str | None = None) -> tuple[nn.Module, dict]:
    """Load a model file of either kind the app writes: packed (.cmpk) or safetensors."""
    if data[:len(packed.MAGIC)] == packed.MAGIC:
        return packed.unpack_model(data, name)
    return load_model_bytes(data, name, arch)


def load_model(path: str | os.PathLike, arch: str | None = None) -> tuple[nn.Module, dict]:
    """Load a packed or safetensors model file: (model in eval mode, metadata)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist.")
    return load_any_bytes(path.read_bytes(), path.name, arch)


def sha256_file(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
