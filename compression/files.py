"""Saving and loading models without ever executing code from a file.

Weights travel as safetensors: a JSON header and raw tensor bytes, nothing to unpickle. The header's
metadata names the architecture ("arch", "width"), so a file is all it takes to rebuild the model.
Structured pruning leaves layers with fewer channels than the architecture's defaults; loading
reshapes each layer to the stored tensors, so pruned models load like any other.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load as st_load, save as st_save

from .models import ARCHS, create_model, feature_map_side

FORMAT = "compression-playground/1"


class ModelFileError(ValueError):
    """A model file is unreadable, hostile, of the wrong architecture or holds bad numbers."""


# --- what a file may declare: checked before anything in it is decoded or built ----------------------
#
# A file names its architecture and width in a few bytes, and that is all a hostile file needs to make a
# naive loader allocate gigabytes. So the declared model is sized first, on the "meta" device (shapes
# only, no memory), and refused when it is bigger than the largest model this app makes; then every
# tensor the file lists must be one the architecture has, with a float or integer dtype as expected and
# no dimension larger than the architecture's (structured pruning only ever removes channels). Only then
# is anything decoded, so decoding never holds more than the declared architecture's own tensors.

LARGEST_MODEL = ("resnet56", 2.0)     # the largest the Train page makes: the family's real range here
MAX_WIDTH = 8.0
FLOAT_DTYPES = {"float32", "float16", "bfloat16", "float64"}
INT_DTYPES = {"int64", "int32"}


@functools.lru_cache(maxsize=64)
def architecture_spec(arch: str, width: float) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{state_dict key: (dtype name, shape)} of `arch` at `width`, computed without allocating weights."""
    with torch.device("meta"):
        model = create_model(arch, width, init=False)
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=64)
def architecture_cost(arch: str, width: float) -> tuple[int, int]:
    """(parameters, multiply-accumulates per 32×32 image) of `arch` at `width`, from its shapes alone:
    MACs = Σ over Conv2d / Linear weights W of |W| · H_out · W_out (1 × 1 for the classifier)."""
    spec = architecture_spec(arch, width)
    macs = sum(math.prod(shape) * feature_map_side(key) ** 2 for key, (_, shape) in spec.items()
               if key.endswith(".weight") and len(shape) in (2, 4))
    return sum(math.prod(shape) for _, shape in spec.values()), macs


def check_identity(arch, width, name: str = "file") -> tuple[str, float]:
    """The (arch, width) a file declares, checked: a known architecture, a finite width in (0, 8], and no
    more parameters or MACs than LARGEST_MODEL. Raises ModelFileError saying what to do."""
    if not isinstance(arch, str) or arch not in ARCHS:
        shown = arch if isinstance(arch, str) and len(arch) <= 40 else type(arch).__name__
        raise ModelFileError(f"{name} is for architecture {shown!r}, which this app does not know "
                             f"(it knows {', '.join(ARCHS)}).")
    try:
        width = math.nan if isinstance(width, bool) else float(width)
    except (TypeError, ValueError, OverflowError):
        width = math.nan
    if not math.isfinite(width) or not 0 < width <= MAX_WIDTH:
        raise ModelFileError(f"{name} declares a width multiplier that is not a number in (0, {MAX_WIDTH:g}]. "
                             f"Save the model again from this app or its library.")
    params, macs = architecture_cost(arch, width)
    most_params, most_macs = architecture_cost(*LARGEST_MODEL)
    if params > most_params or macs > most_macs:
        raise ModelFileError(
            f"{name} holds a {arch} at width {width:g}: {params / 1e6:.1f} M parameters and {macs / 1e9:.2f} G "
            f"multiply-accumulates per image, more than the largest model this app evaluates ({LARGEST_MODEL[0]} at "
            f"width {LARGEST_MODEL[1]:g}: {most_params / 1e6:.1f} M and {most_macs / 1e9:.2f} G). Upload a smaller model.")
    return arch, width


def check_tensor_specs(found: dict[str, tuple[str, tuple[int, ...]]], arch: str, width: float,
                       name: str = "file") -> None:
    """Every tensor a file lists, as (dtype name, shape), against the architecture's: the same names, a
    float tensor where a float one belongs (any width of float) and an integer one where an integer one
    does, the same number of dimensions, and each dimension from 1 up to the architecture's."""
    spec = architecture_spec(arch, width)
    missing, unexpected = set(spec) - set(found), set(found) - set(spec)
    if missing or unexpected:
        detail = (f"missing {_names(missing)}" if missing else f"unexpected {_names(unexpected)}")
        raise ModelFileError(f"{name} does not hold a {arch} ({detail}). Upload weights saved from a {arch}, "
                             f"or pick the matching architecture.")
    for key, (dtype, shape) in found.items():
        want_dtype, want_shape = spec[key]
        kinds = FLOAT_DTYPES if want_dtype in FLOAT_DTYPES else INT_DTYPES
        if dtype not in kinds:
            raise ModelFileError(f"{name}: tensor {key} is stored as {_short(dtype)}, expected {want_dtype}.")
        if (len(shape) != len(want_shape)
                or not all(type(n) is int and 1 <= n <= m for n, m in zip(shape, want_shape))):
            raise ModelFileError(f"{name}: tensor {key} has shape {_short(shape)}, which a {arch} at width "
                                 f"{width:g} cannot hold (at most {list(want_shape)}).")


def _names(keys) -> str:
    return ", ".join(repr(_short(k)) for k in sorted(keys)[:3]) + (" …" if len(keys) > 3 else "")


def _short(value, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


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
            out = model(probe_batch())
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        raise ModelFileError(f"{name}: the tensors do not fit together as a {arch} "
                             f"({_short(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 120)}).") from None
    if out.shape != (len(out), 10):
        raise ModelFileError(f"{name}: the model gives {tuple(out.shape)} outputs, not 10 class scores.")
    if not torch.isfinite(out).all():
        raise ModelFileError(f"{name}: the model's class scores on a test batch are NaN or infinite (a layer holds "
                             f"broken numbers, such as a negative batch-norm variance or huge weights). "
                             f"Re-export it from a model that gives sensible answers.")
    return model


PROBE_IMAGES = 8


@functools.lru_cache(maxsize=1)
def probe_batch() -> torch.Tensor:
    """A fixed batch of random images in [0, 1] that every loaded model must map to finite scores."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (PROBE_IMAGES, 3, 32, 32), generator=generator).float() / 255


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
    from . import packed

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
