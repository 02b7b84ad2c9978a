"""Unstructured pruning: set the least important individual weights to zero.

Every method follows the same three steps:

1. score each weight (how much would the network miss it?);
2. rank the scores and mark the lowest `amount` fraction for removal, either across the whole
   network ("global") or the same fraction in every layer ("layer");
3. attach the 0/1 mask with torch.nn.utils.prune, so the layer computes with w * mask and
   fine-tuning cannot bring a pruned weight back. `strip()` later bakes the zeros in.

Scores:
- magnitude   s = |w|                        (small weights matter least; Han et al. 2015)
- random      s ~ U(0, 1)                    (the baseline every method must beat)
- gradient    s = |w · ∂L/∂w|, summed over a few batches (first-order Taylor estimate of the
              change in loss when w is set to zero; Molchanov et al. 2017)
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .data import ImageSet, calibration_batches, to_float
from .models import eval_mode
from .weights import copy_model, effective_weight, masked_tensors, trainable_weight

METHODS = ("magnitude", "random", "gradient")
SCOPES = ("global", "layer")


def prunable_layers(model: nn.Module, exempt: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The Conv2d and Linear layers whose weights may be pruned, by name, minus `exempt`."""
    exempt = set(exempt)
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name not in exempt}


FIRST_AND_LAST = ("conv1", "fc")   # the usual exemption: the stem conv and the classifier stay dense


def current_mask(module: nn.Module) -> torch.Tensor:
    """The layer's 0/1 mask so far (all ones when it was never pruned)."""
    masked = masked_tensors(module).get("weight")
    return masked[1] if masked else torch.ones_like(module.weight)


# --- step 1: scores ------------------------------------------------------------------------------------

def magnitude_scores(layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """s = |w|"""
    return {name: m.weight.detach().abs() for name, m in layers.items()}


def random_scores(layers: dict[str, nn.Module], seed: int = 0) -> dict[str, torch.Tensor]:
    """s ~ U(0, 1), reproducible under `seed`."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.weight.shape, generator=g).to(m.weight.device) for name, m in layers.items()}


def gradient_scores(model: nn.Module, layers: dict[str, nn.Module], data: ImageSet,
                    batches: int = 4, batch_size: int = 128) -> dict[str, torch.Tensor]:
    """s = |w · ∂L/∂w| with the gradient summed over `batches` batches of `data` (cross-entropy loss)."""
    model.zero_grad(set_to_none=True)
    device = next(model.parameters()).device
    with eval_mode(model):   # BN statistics stay as they are; we want the gradient of the trained model
        for batch in calibration_batches(data, batches, batch_size):
            x, y = to_float(batch.images.to(device)), batch.labels.to(device)
            nn.functional.cross_entropy(model(x), y).backward()
    scores = {}
    for name, m in layers.items():
        grad = trainable_weight(m).grad   # once pruned, the trainable tensor is weight_orig
        grad = grad if grad is not None else torch.zeros_like(m.weight)
        scores[name] = (effective_weight(m) * grad.detach()).abs()
    model.zero_grad(set_to_none=True)
    return scores


# --- step 2: masks ------------------------------------------------------------------------------------

def lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 mask with zeros at the `k` lowest scores: exactly k zeros, ties broken by position."""
    flat = scores.flatten()
    if k <= 0:
        return torch.ones_like(scores)
    if k >= flat.numel():
        return torch.zeros_like(scores)
    threshold = flat.kthvalue(k).values           # the k-th smallest score
    mask = (flat > threshold).to(scores.dtype)
    surplus = flat.numel() - int(mask.sum()) - k   # scores tied at the threshold, pruned one too many
    if surplus > 0:
        tied = torch.nonzero(flat == threshold).flatten()
        mask[tied[-surplus:]] = 1
    return mask.view_as(scores)


def masks_from_scores(scores: dict[str, torch.Tensor], amount: float, scope: str = "global",
                      already: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Masks that remove round(amount · n) weights: n counted over all layers (global) or per layer.

    Weights pruned before (zeros in `already`) rank lowest, so they stay pruned.
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be a fraction in [0, 1], got {amount}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    already = already or {}
    scores = {n: torch.where(already[n] == 0, -1.0, s.float()) if n in already else s.float()
              for n, s in scores.items()}
    if scope == "layer":
        return {n: lowest_k_mask(s, round(amount * s.numel())) for n, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].flatten().cpu() for n in names])
    flat_mask = lowest_k_mask(flat, round(amount * flat.numel()))
    masks, start = {}, 0
    for n in names:
        size = scores[n].numel()
        masks[n] = flat_mask[start:start + size].view_as(scores[n]).to(scores[n].device)
        start += size
    return masks


# --- step 3: apply ------------------------------------------------------------------------------------

def apply_masks(layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Attach the masks with torch.nn.utils.prune (weight = weight_orig * weight_mask)."""
    for name, mask in masks.items():
        torch_prune.custom_from_mask(layers[name], "weight", mask.to(layers[name].weight.dtype))


def importance_scores(model: nn.Module, method: str = "magnitude", exempt: Iterable[str] = (),
                      data: ImageSet | None = None, seed: int = 0,
                      gradient_batches: int = 4) -> dict[str, torch.Tensor]:
    """Step 1 for `method`: a score per weight of every prunable layer (higher = more important)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers = prunable_layers(model, exempt)
    if method == "magnitude":
        return magnitude_scores(layers)
    if method == "random":
        return random_scores(layers, seed)
    if data is None:
        raise ValueError("gradient pruning needs a few batches of data to compute ∂L/∂w")
    return gradient_scores(model, layers, data, gradient_batches)


def prune(model: nn.Module, amount: float, method: str = "magnitude", scope: str = "global",
          exempt: Iterable[str] = (), data: ImageSet | None = None, seed: int = 0,
          gradient_batches: int = 4, inplace: bool = False,
          scores: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Prune `amount` (0..1) of the weights of the prunable layers; returns the pruned model.

    The model is copied first unless `inplace`. `amount` is the fraction of the prunable weights
    that are zero afterwards (weights pruned before count towards it). Pass `scores` computed once by
    importance_scores() to re-prune the same model at many amounts quickly.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not inplace:
        model = copy_model(model)
    exempt = tuple(exempt)
    layers = prunable_layers(model, exempt)
    if not layers:
        raise ValueError("every layer is exempt: nothing to prune")
    if scores is None:
        scores = importance_scores(model, method, exempt, data, seed, gradient_batches)
    already = {n: current_mask(m) for n, m in layers.items()}
    apply_masks(layers, masks_from_scores({n: scores[n] for n in layers}, amount, scope, already))
    return model


def is_pruned(model: nn.Module) -> bool:
    """Does the model still carry pruning masks (i.e. has not been stripped)?"""
    return torch_prune.is_pruned(model)


def strip(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Make the masks permanent: weight = weight_orig * mask becomes a plain parameter again."""
    if not inplace:
        model = copy_model(model)
    for module in model.modules():
        for name in masked_tensors(module):
            torch_prune.remove(module, name)
    return model


def sparsity(model: nn.Module, exempt: Iterable[str] = ()) -> float:
    """Fraction of zeros among the weights of the prunable layers."""
    weights = [m.weight for m in prunable_layers(model, exempt).values()]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / max(1, total)


def count_nonzero(model: nn.Module, exempt: Iterable[str] = ()) -> int:
    """Nonzero weights in the prunable layers."""
    return sum(int((m.weight != 0).sum()) for m in prunable_layers(model, exempt).values())


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zeros in each Conv2d / Linear weight, by layer name."""
    return {name: float((m.weight == 0).float().mean()) for name, m in prunable_layers(model).items()}
