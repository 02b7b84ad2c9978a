"""The numbers the app draws, computed here so that pages only lay out charts.

Histograms of a layer's weights, a conv layer's pruning mask as a 2-D picture, distinct values,
per-layer quantization errors.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
from torch import nn

from .prune import prunable_layers
from .quantize import quantizable_layers
from .weights import effective_weight


def layer_names(model: nn.Module) -> list[str]:
    """Conv2d and Linear layers, in forward order."""
    return list(prunable_layers(model))


def layer_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The weight the layer computes with (masks applied), detached, on the CPU."""
    module = dict(model.named_modules())[name]
    return module.weight.detach().float().cpu()


@dataclass
class Histogram:
    edges: np.ndarray      # bins + 1 bin edges
    counts: np.ndarray     # bins counts
    zeros: int             # exact zeros, left out of the counts when drop_zeros

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    @property
    def width(self) -> float:
        return float(self.edges[1] - self.edges[0])


def histogram(values: torch.Tensor, bins: int = 80, value_range: tuple[float, float] | None = None,
              drop_zeros: bool = False) -> Histogram:
    """Counts of `values` in `bins` equal bins over `value_range` (default: their min..max)."""
    v = values.detach().float().flatten().cpu()
    zeros = int((v == 0).sum())
    if drop_zeros:
        v = v[v != 0]
    if value_range is None:
        lo, hi = (float(v.min()), float(v.max())) if v.numel() else (-1.0, 1.0)
        value_range = (lo, hi if hi > lo else lo + 1e-6)
    counts, edges = np.histogram(v.numpy(), bins=bins, range=value_range)
    return Histogram(edges, counts, zeros)


def weight_range(model: nn.Module, name: str) -> tuple[float, float]:
    w = layer_weight(model, name)
    return float(w.min()), float(w.max())


def mask_matrix(model: nn.Module, name: str) -> np.ndarray:
    """A layer's kept (1) / pruned (0) weights as a 2-D array: one row per output channel (filter),
    one column per input weight of that filter (in_channels × kh × kw)."""
    w = layer_weight(model, name)
    return (w.reshape(w.shape[0], -1) != 0).numpy().astype(np.uint8)


def distinct_values(model: nn.Module, name: str) -> int:
    return int(torch.unique(layer_weight(model, name)).numel())


def distinct_per_channel(model: nn.Module, name: str) -> int:
    """The largest number of distinct values in any one output channel (filter) of the layer."""
    w = layer_weight(model, name)
    return max(int(torch.unique(row).numel()) for row in w.reshape(w.shape[0], -1))


def layer_quant_error(original: nn.Module, quantized: nn.Module) -> dict[str, dict[str, float]]:
    """Per Conv2d / Linear layer: mse = mean (w − ŵ)², sqnr_db = 10·log10(Σw² / Σ(w − ŵ)²).

    SQNR (signal-to-quantization-noise ratio) grows by about 6 dB per extra bit; it is inf when ŵ = w.
    """
    before = {name: effective_weight(layer) for name, layer in quantizable_layers(original).items()}
    errors = {}
    for name, layer in quantizable_layers(quantized).items():
        if name not in before:
            continue
        w, w_hat = before[name].float(), effective_weight(layer).float()
        if w.shape != w_hat.shape:
            raise ValueError(f"layer {name}: shapes differ ({tuple(w.shape)} vs {tuple(w_hat.shape)}); "
                             f"compare a model with its own quantized copy")
        noise, signal = (w - w_hat).pow(2).sum().item(), w.pow(2).sum().item()
        sqnr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
        errors[name] = {"mse": noise / w.numel(), "sqnr_db": sqnr}
    return errors
