"""Quantization-aware training (QAT): train with the rounding in the loop, so the network learns
weights that survive it.

Each Conv2d / Linear computes with ŵ = fake_quantize(w) (quantize.py), and the straight-through
estimator (∂ŵ/∂w := 1) lets the gradient reach the float weights w, which the optimiser updates:
small updates accumulate in w until they move ŵ to another grid level. After training, convert_qat
keeps ŵ: a plain model whose weights sit exactly on the grid.

    qat = prepare_qat(model, bits=4)
    run_to_end(train(qat, train_set, config))
    model = convert_qat(qat)
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .activations import activation_settings, quantize_activations, set_activation_settings
from .data import ImageSet
from .prune import strip
from .quantize import check_bits, fake_quantize, quantizable_layers, straight_through
from .weights import plain_model


class WeightFakeQuant(nn.Module):
    """A parametrization: the layer's weight becomes ŵ = w + (fake_quantize(w·mask) − w).detach(),
    with w·mask in place of w when the layer had pruned (zero) weights.

    torch.nn.utils.parametrize keeps the float weight w as `parametrizations.weight.original`, which
    the optimiser updates; every forward recomputes ŵ from it.
    """

    def __init__(self, bits: int, symmetric: bool, per_channel: bool, mask: torch.Tensor | None = None):
        super().__init__()
        self.bits, self.symmetric, self.per_channel = bits, symmetric, per_channel
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mask is not None:
            w = w * self.mask
        w_hat = fake_quantize(w.detach(), self.bits, self.symmetric, self.per_channel)
        if torch.is_grad_enabled() and w.requires_grad:
            return straight_through(w, w_hat)
        return w_hat   # no gradient wanted: exactly the grid values (what convert_qat keeps)


def prepare_qat(model: nn.Module, bits: int, symmetric: bool = True, per_channel: bool = True,
                exempt: Iterable[str] = (), a_bits: int | None = None, calib: ImageSet | None = None,
                a_method: str = "minmax", a_symmetric: bool = False, inplace: bool = False) -> nn.Module:
    """A copy for quantization-aware training: each Conv2d / Linear computes with quantized weights
    (WeightFakeQuant), and gradients pass straight through the rounding to the float weights.

    Train it with train.train() as usual, then call convert_qat(). Weights that are exactly zero
    (pruned) are masked and stay zero throughout. With `a_bits`, layer inputs are quantized too
    (ranges calibrated once on `calib`, then fixed; gradients pass straight through).
    """
    check_bits(bits)
    model = strip(model, inplace)
    for layer in quantizable_layers(model, exempt).values():
        zeros = layer.weight == 0
        mask = (~zeros).to(layer.weight.dtype) if zeros.any() else None
        parametrize.register_parametrization(layer, "weight", WeightFakeQuant(bits, symmetric, per_channel, mask))
    if a_bits is not None:
        if calib is None:
            raise ValueError("activation quantization needs calibration images (calib)")
        quantize_activations(model, a_bits, calib, a_method, symmetric=a_symmetric, inplace=True)
    return model


def convert_qat(model: nn.Module) -> nn.Module:
    """Bake the trained weights onto their grid: w ← fake_quantize(w·mask), in a new plain model (the
    same as quantize_weights on the trained float weights). Rounded inputs (a_bits) stay.

    The QAT model is left as it is: weights.plain_model builds the plain model afresh from the weights
    the layers compute with, which under no_grad are exactly WeightFakeQuant's grid values.
    """
    plain = plain_model(model)
    settings = activation_settings(model)
    return set_activation_settings(plain, settings, inplace=True) if settings else plain
