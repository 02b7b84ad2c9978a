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

from .models import ARCHS, create_model

FORMAT = "compression-playground/1"


class ModelFileError(ValueError):
    """A model file is unreadable, hostile, of the wrong architecture or holds bad numbers."""


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


def model_from_state_dict(tensors: dict[str, torch.Tensor], arch: str, width: float = 1.0,
                          name: str = "file") -> nn.Module:
    """Build `arch` and load `tensors` into it, reshaping layers whose channel counts differ
    (structured pruning). Raises ModelFileError when the tensors do not fit the architecture."""
    if arch not in ARCHS:
        raise ModelFileError(f"{name} is for architecture {arch!r}, which this app does not know "
                             f"(it knows {', '.join(ARCHS)}).")
    model = create_model(arch, width)
    expected = set(model.state_dict())
    missing, unexpected = expected - set(tensors), set(tensors) - expected
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:3]}" if missing else f"unexpected {sorted(unexpected)[:3]}"
        raise ModelFileError(f"{name} does not hold a {arch} ({detail}). Upload weights saved from a {arch}, "
                             f"or pick the matching architecture.")
    for key, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ModelFileError(f"{name}: tensor {key} holds NaN or infinite values; the model is broken. "
                                 f"Re-export it from a model that trains without diverging.")
    resize_to(model, tensors)
    try:
        model.load_state_dict({k: v.clone() for k, v in tensors.items()}, strict=True)
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 32, 32))
    except (RuntimeError, ValueError) as exc:
        raise ModelFileError(f"{name}: the tensors do not fit together as a {arch} "
                             f"({str(exc).splitlines()[0]}).") from None
    if out.shape != (1, 10):
        raise ModelFileError(f"{name}: the model gives {tuple(out.shape)} outputs, not 10 class scores.")
    return model


def resize_to(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Give each Conv2d, BatchNorm2d and Linear the shapes of the stored tensors."""
    for prefix, module in model.named_modules():
        key = f"{prefix}.weight" if prefix else "weight"
        if key not in tensors:
            continue
        shape = tuple(tensors[key].shape)
        if isinstance(module, nn.Conv2d):
            if len(shape) != 4:
                raise ModelFileError(f"{key} should be a 4-d conv kernel, found shape {shape}.")
            module.out_channels, module.in_channels = shape[0], shape[1] * module.groups
            module.weight = nn.Parameter(torch.empty(shape))
        elif isinstance(module, nn.BatchNorm2d):
            if len(shape) != 1:
                raise ModelFileError(f"{key} should be a vector of BN scales, found shape {shape}.")
            n = shape[0]
            module.num_features = n
            module.weight, module.bias = nn.Parameter(torch.empty(n)), nn.Parameter(torch.empty(n))
            module.running_mean, module.running_var = torch.zeros(n), torch.ones(n)
        elif isinstance(module, nn.Linear):
            if len(shape) != 2:
                raise ModelFileError(f"{key} should be a 2-d matrix, found shape {shape}.")
            module.out_features, module.in_features = shape
            module.weight = nn.Parameter(torch.empty(shape))
            module.bias = nn.Parameter(torch.empty(shape[0]))


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
    from . import packed

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
