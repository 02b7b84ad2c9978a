"""What a model holds and what one image costs it, counted layer by layer.

- parameters, and nonzero parameters (a pruned layer counts the weight it computes with, w · mask);
- multiply-accumulates (MACs) per image: dense, and counting only nonzero weights (each nonzero weight
  of a conv is used once per output pixel: MACs = nnz(W) · H_out · W_out; a Linear's once per image).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .models import eval_mode
from .weights import copy_model, effective_weight, masked_tensors


@dataclass
class LayerInfo:
    name: str
    kind: str
    shape: tuple
    params: int
    nonzero: int
    macs: int
    nonzero_macs: int

    @property
    def sparsity(self) -> float:
        return 1 - self.nonzero / max(1, self.params)


def layer_table(model: nn.Module, image_size: int = 32) -> list[LayerInfo]:
    """One row per Conv2d / Linear layer: shape, parameters, nonzeros and MACs for one image."""
    rows: list[LayerInfo] = []
    hooks = []

    def hook(name):
        def record(module, inputs, output):
            weight = module.weight.detach()
            nnz = int((weight != 0).sum())
            if isinstance(module, nn.Conv2d):
                pixels = output.shape[-1] * output.shape[-2]
                macs, nz_macs = weight.numel() * pixels, nnz * pixels
            else:
                macs, nz_macs = weight.numel(), nnz
            rows.append(LayerInfo(name, type(module).__name__, tuple(weight.shape), weight.numel(), nnz,
                                  macs, nz_macs))
        return record

    model = copy_model(model)   # hooks on a private copy: the caller's model may be shared between threads
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad(), eval_mode(model):
            device = next(model.parameters()).device
            model(torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    return rows


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, nonzero parameters), counting a pruned layer's effective weight."""
    total = nonzero = 0
    for name, tensor in _effective_parameters(model):
        total += tensor.numel()
        nonzero += int((tensor != 0).sum())
    return total, nonzero


def _effective_parameters(model: nn.Module):
    for module_name, module in model.named_modules():
        masked = {f"{name}_orig": name for name in masked_tensors(module)}
        for name, param in module.named_parameters(recurse=False):
            if name in masked:
                yield f"{module_name}.{masked[name]}", effective_weight(module, masked[name])
            else:
                yield f"{module_name}.{name}", param.detach()


def count_macs(model: nn.Module) -> tuple[int, int]:
    """(dense MACs, nonzero MACs) per 32x32 image."""
    rows = layer_table(model)
    return sum(r.macs for r in rows), sum(r.nonzero_macs for r in rows)
