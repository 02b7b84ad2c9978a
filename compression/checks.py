"""What a model file may declare, checked before anything in it is decoded or built.

A file names its architecture and width in a few bytes, and that is all a hostile file needs to make a
naive loader allocate gigabytes. So the declared model is sized first, on the "meta" device (shapes
only, no memory), and refused when it is bigger than the largest model this app makes; then every
tensor the file lists must be one the architecture has, with a float or integer dtype as expected and
no dimension larger than the architecture's (structured pruning only ever removes channels). Only then
is anything decoded, so decoding never holds more than the declared architecture's own tensors.
Both file formats (files.py: safetensors; packed.py: the packed format) call these.
"""
from __future__ import annotations

import functools
import math

import torch

from .models import ARCHS, create_model, feature_map_side
from .weights import ModelFileError

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
