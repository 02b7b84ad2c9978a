"""Quantization: keep each weight (and activation) with a few bits instead of 32.

Uniform quantization maps a float x onto an integer grid and back:

    q = clamp(round(x / s) + z, qmin, qmax)        quantize   (an integer code)
    x̂ = (q − z) · s                                 dequantize (the value the layer computes with)

The scale s is the step between neighbouring levels; the zero point z is the code that stands for 0.0.
With b bits:

- symmetric:   z = 0, q ∈ {−(2^(b−1)−1), …, 2^(b−1)−1}, s = max|x| / (2^(b−1)−1).
               2^b − 1 levels, mirrored around 0; b = 2 gives the ternary grid {−s, 0, s}.
- binary:      1-bit symmetric is x̂ = a · sign(x) with a = mean |x| over the nonzero x, the a that
               minimises Σ(x − a·sign x)². Weights that are exactly 0 (pruned) stay 0: the pruning
               mask stores them, not the 1-bit code.
- asymmetric:  q ∈ {0, …, 2^b − 1}, s = (hi − lo) / (2^b − 1), z = round(−lo / s), where the range
               [lo, hi] is first stretched to include 0. Then 0.0 is exactly a level (x = 0 gives q = z,
               x̂ = 0), so pruned zeros stay zero in both modes.
- per-tensor:  one (s, z) for the whole tensor.  per-channel: one per output channel (axis 0), which
               serves layers whose channels have very different ranges far better.

Every function here *simulates* quantization ("fake quantization"): tensors stay float32 but hold
only values of the grid, so any CPU runs the result, and its accuracy is what integer hardware would
give. int8.py runs real int8 kernels.

The verbs (each returns a new model; the input is never modified unless inplace=True):

- quantize_weights       (here) every Conv2d / Linear weight rounded onto its grid.
- quantize_activations   (activations.py) the input of every Conv2d / Linear rounded onto a grid whose
                         range was calibrated on a few batches: "minmax", "percentile" (clip the rarest
                         extreme values) or "mse" (the clipping that minimises the rounding error).
- quantize_model         (activations.py) both.
- to_reduced_float       (activations.py) weights and activations rounded through fp16 or bf16.
- prepare_qat            (qat.py) quantization-aware training: layers compute with quantized weights,
                         and the straight-through estimator lets gradients reach the float weights;
                         convert_qat bakes the trained weights onto the grid.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .prune import prunable_layers, strip

FLOAT_FORMATS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def check_bits(bits: int) -> None:
    if not (isinstance(bits, int) and 1 <= bits <= 8):
        raise ValueError(f"bits must be a whole number from 1 to 8, got {bits!r}")


# --- the integer grid --------------------------------------------------------------------------------

def integer_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax): symmetric −(2^(b−1)−1)…2^(b−1)−1, asymmetric 0…2^b−1 (binary: −1…1, see binarize)."""
    if symmetric:
        return (-1, 1) if bits == 1 else (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    return 0, 2 ** bits - 1


def reduce_dims(x: torch.Tensor, per_channel: bool) -> tuple[int, ...]:
    """The dimensions a statistic is taken over: all but axis 0 per channel, else all of them."""
    first = 1 if per_channel and x.dim() > 1 else 0
    return tuple(range(first, x.dim()))


def value_range(x: torch.Tensor, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(min x, max x) over the tensor or per output channel, shaped to broadcast against x."""
    dims = reduce_dims(x.detach(), per_channel)
    return x.detach().amin(dim=dims, keepdim=True), x.detach().amax(dim=dims, keepdim=True)


def scale_and_zero_point(lo: torch.Tensor, hi: torch.Tensor, bits: int,
                         symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """s and z for the range [lo, hi].

    symmetric:  s = max(|lo|, |hi|) / qmax,  z = 0
    asymmetric: [lo, hi] stretched to include 0,  s = (hi − lo) / (qmax − qmin),  z = qmin − round(lo / s)
    """
    qmin, qmax = integer_range(bits, symmetric)
    if symmetric:
        scale = torch.maximum(lo.abs(), hi.abs()) / qmax
    else:
        lo, hi = lo.clamp(max=0), hi.clamp(min=0)
        scale = (hi - lo) / (qmax - qmin)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))   # an all-zero channel: any step will do
    if symmetric:
        return scale, torch.zeros_like(scale)
    return scale, (qmin - torch.round(lo / scale)).clamp(qmin, qmax)


def quantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """q = clamp(round(x / s) + z, qmin, qmax): the integer codes (held in a float tensor)."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """x̂ = (q − z) · s"""
    return (q - zero_point) * scale


def binary_scale(x: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """a = Σ|x| / (number of nonzero x), per tensor or per output channel."""
    dims = reduce_dims(x, per_channel)
    x = x.detach()
    nonzero = (x != 0).sum(dim=dims, keepdim=True).clamp(min=1)
    return x.abs().sum(dim=dims, keepdim=True) / nonzero


def binarize(x: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """1-bit weights: x̂ = a · sign(x), a = mean |x| over the nonzero x. Exact zeros stay 0."""
    return torch.sign(x) * binary_scale(x, per_channel)


def fake_quantize_range(x: torch.Tensor, lo, hi, bits: int, symmetric: bool) -> torch.Tensor:
    """x̂ on the b-bit grid of the range [lo, hi]; values outside the range are clipped to its ends."""
    lo, hi = torch.as_tensor(lo, dtype=x.dtype), torch.as_tensor(hi, dtype=x.dtype)
    scale, zero_point = scale_and_zero_point(lo, hi, bits, symmetric)
    return dequantize(quantize(x, scale, zero_point, *integer_range(bits, symmetric)), scale, zero_point)


def fake_quantize(x: torch.Tensor, bits: int, symmetric: bool = True, per_channel: bool = False) -> torch.Tensor:
    """x̂ = dequantize(quantize(x)) on the grid spanning x's own range (min to max, per tensor or per
    channel); 1-bit symmetric is binarize(x). At most 2^b distinct values per tensor / channel."""
    check_bits(bits)
    if bits == 1 and symmetric:
        return binarize(x, per_channel)
    lo, hi = value_range(x, per_channel)
    return fake_quantize_range(x, lo, hi, bits, symmetric)


def quant_grid(w: torch.Tensor, bits: int, symmetric: bool = True, per_channel: bool = False,
               channel: int | None = None) -> torch.Tensor:
    """The values fake_quantize(w, …) can take, ascending: shape (levels,) per tensor;
    (channels, levels) per channel, or (levels,) for one `channel`. Draw them over w's histogram."""
    check_bits(bits)
    if bits == 1 and symmetric:
        a = binary_scale(w, per_channel).flatten()
        grid = torch.stack([-a, a], dim=1)
    else:
        scale, zero_point = scale_and_zero_point(*value_range(w, per_channel), bits, symmetric)
        qmin, qmax = integer_range(bits, symmetric)
        codes = torch.arange(qmin, qmax + 1, dtype=w.dtype)
        grid = (codes[None, :] - zero_point.flatten()[:, None]) * scale.flatten()[:, None]
    if not per_channel:
        return grid[0]
    return grid if channel is None else grid[channel]


def straight_through(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """The straight-through estimator: forward gives x̂, backward treats x̂ as x (∂x̂/∂x = 1).

    x + (x̂ − x).detach() equals x̂ in value, but autograd sees only the `x` term, so the gradient
    skips the rounding, whose true derivative is zero almost everywhere.
    """
    return x + (x_hat - x).detach()


def round_through(x: torch.Tensor, float_format: str) -> torch.Tensor:
    """x rounded to the nearest fp16 / bf16 number, returned in x's dtype: x.to(format).to(x.dtype)."""
    if float_format not in FLOAT_FORMATS:
        raise ValueError(f"float format must be one of {', '.join(FLOAT_FORMATS)}, got {float_format!r}")
    return x.to(FLOAT_FORMATS[float_format]).to(x.dtype)


# --- weights -----------------------------------------------------------------------------------------

def quantizable_layers(model: nn.Module, exempt: Iterable[str] = ()) -> dict[str, nn.Module]:
    """The Conv2d and Linear layers by name, minus `exempt`."""
    return prunable_layers(model, exempt)


def quantize_weights(model: nn.Module, bits: int, symmetric: bool = True, per_channel: bool = True,
                     exempt: Iterable[str] = (), inplace: bool = False) -> nn.Module:
    """Round every Conv2d / Linear weight (minus `exempt` layers) onto its b-bit grid: w ← fake_quantize(w).

    Pruning masks are baked in first; the zeros they leave stay exactly zero. Biases, BatchNorm and
    activations stay float32.
    """
    check_bits(bits)
    model = strip(model, inplace)
    with torch.no_grad():
        for layer in quantizable_layers(model, exempt).values():
            layer.weight.copy_(fake_quantize(layer.weight, bits, symmetric, per_channel))
    return model
