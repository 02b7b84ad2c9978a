"""A model's weights as plain tensors, both ways, with torch's bookkeeping out of the way.

Two kinds of bookkeeping make what a layer computes with differ from what it stores:

- torch.nn.utils.prune re-registers a pruned parameter `weight` as `weight_orig` (the tensor the
  optimiser trains) plus a buffer `weight_mask`, and recomputes weight = weight_orig · weight_mask
  before every forward. `masked_tensors` is the one place in the project that knows those names.
- torch.nn.utils.parametrize (QAT's fake quantization, weight sharing's centroids) keeps the trained
  tensor as `parametrizations.weight.original` and computes `weight` from it at every access.

`computed_state_dict` reads the tensors a model computes with under the architecture's plain names;
`model_from_state_dict` builds a model from such tensors (resizing layers that structured pruning
narrowed). `plain_model` does both: the one way to get a plain copy of any model of the family.
"""
from __future__ import annotations

import copy
import functools

import torch
from torch import nn
from torch.nn.utils import parametrize

from .models import ARCHS, create_model


class ModelFileError(ValueError):
    """A model file is unreadable, hostile, of the wrong architecture or holds bad numbers."""


# --- pruning masks --------------------------------------------------------------------------------------

def masked_tensors(module: nn.Module) -> dict[str, tuple[nn.Parameter, torch.Tensor]]:
    """{name: (name_orig, name_mask)} for each tensor of `module` that torch.nn.utils.prune masks."""
    return {key.removesuffix("_orig"): (param, getattr(module, key.removesuffix("_orig") + "_mask"))
            for key, param in module._parameters.items()
            if key.endswith("_orig") and hasattr(module, key.removesuffix("_orig") + "_mask")}


def trainable_weight(module: nn.Module) -> nn.Parameter:
    """The tensor the optimiser updates for the layer's weight: weight_orig once pruned, else weight."""
    masked = masked_tensors(module).get("weight")
    return masked[0] if masked else module.weight


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The tensor the layer computes with, detached: orig · mask when pruned, else the attribute
    itself (a parametrization, such as QAT's ŵ, computes it at access)."""
    masked = masked_tensors(module).get(name)
    if masked:
        orig, mask = masked
        return (orig * mask).detach()
    return getattr(module, name).detach()


@torch.no_grad()
def refresh_masked(module: nn.Module) -> None:
    """Recompute name = name_orig · name_mask now (torch otherwise does it before the next forward)."""
    for name, (orig, mask) in masked_tensors(module).items():
        setattr(module, name, orig * mask)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy that also works on models carrying torch.nn.utils.prune masks.

    A pruned layer keeps `weight` as a computed (non-leaf) tensor, which deepcopy refuses; we refresh
    it as a detached tensor first (the pruning hook recomputes it on the next forward anyway).
    """
    for module in model.modules():
        refresh_masked(module)
    return copy.deepcopy(model)


# --- a model as tensors, and back ------------------------------------------------------------------------

def computed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict of the model as it computes, under the plain names: a pruned tensor becomes
    weight_orig · weight_mask, a parametrized one (weight sharing, …) the parametrization's output.
    Nothing is copied or changed."""
    state = model.state_dict()
    part_of, computed = {}, {}          # state_dict key -> plain key it is part of; plain key -> tensor
    with torch.no_grad():
        for prefix, module in model.named_modules():
            p = f"{prefix}." if prefix else ""
            if parametrize.is_parametrized(module):
                for t in module.parametrizations:
                    computed[p + t] = getattr(module, t)
                    part_of.update({k: p + t for k in state if k.startswith(f"{p}parametrizations.{t}.")})
            for t in masked_tensors(module):
                computed[p + t] = effective_weight(module, t)
                part_of.update({f"{p}{t}_orig": p + t, f"{p}{t}_mask": p + t})
    out = {}
    for key, value in state.items():
        plain = part_of.get(key, key)
        if plain not in out:
            out[plain] = (computed[plain] if plain in computed else value).detach().cpu()
    return out


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
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{name}: the tensors do not fit together as a {arch} ({first}).") from None
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


def plain_model(model: nn.Module, name: str = "model") -> nn.Module:
    """A plain copy of the architecture holding the weights `model` computes with: pruning masks
    baked in, parametrizations (QAT, shared centroids) resolved, no hooks (rounded inputs of simulated
    activation quantization are gone too). Its state_dict keys are the architecture's; it is in the
    same training mode as `model`. Built afresh (computed_state_dict → model_from_state_dict) rather
    than by torch's remove_parametrizations, which edits a class that deep copies of a model share."""
    plain = model_from_state_dict(computed_state_dict(model), model.arch, getattr(model, "width", 1.0), name)
    return plain.train(model.training)
