"""Quantized activations: the input of every Conv2d / Linear rounded onto a grid whose range is
calibrated on a few batches, or through a 16-bit float format.

Calibration runs a few batches through the model and records each layer's input: its exact extremes
and a random sample of its values. The range [lo, hi] a layer's input is rounded over is then
- minmax      everything seen;
- percentile  the `percentile`-th percentile of |x| (symmetric) or of x at both ends: the rarest
              extreme values are clipped so that the bulk is rounded more finely;
- mse         the clipping α·[lo, hi] that minimises the mean squared rounding error on the sample.

How activation settings are recorded: a layer whose input is rounded carries an `input_quant`
attribute (an InputQuant: bits, symmetric, range lo..hi, or a float format; plain Python numbers) and
a forward pre-hook that applies it. Nothing goes into the state_dict, so the keys stay those of the
architecture and files.save_model works unchanged. `activation_settings(model)` returns the settings
as a JSON-able dict (for a file's metadata) and `set_activation_settings` puts them back;
`weights.plain_model(model)` gives a plain model without any of this machinery.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn

from .data import ImageSet, calibration_batches, to_float
from .models import eval_mode
from .prune import strip
from .quantize import (check_bits, fake_quantize_range, quantizable_layers, quantize_weights, round_through,
                       straight_through)
from .weights import copy_model

CALIBRATION_METHODS = ("minmax", "percentile", "mse")


# --- rounding a layer's input ------------------------------------------------------------------------

@dataclass
class InputQuant:
    """How a layer's input is rounded: onto a `bits`-bit grid over [lo, hi], or through `float_format`."""

    bits: int | None = None
    symmetric: bool = False
    lo: float = 0.0
    hi: float = 0.0
    method: str = ""                 # how [lo, hi] was calibrated
    float_format: str | None = None  # "fp16" or "bf16" instead of an integer grid

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.float_format:
            return round_through(x, self.float_format)
        return fake_quantize_range(x, self.lo, self.hi, self.bits, self.symmetric)

    def to_dict(self) -> dict:
        return asdict(self)


def _round_input(layer: nn.Module, inputs: tuple) -> tuple:
    # The forward pre-hook: runs before layer.forward and replaces its input.
    x = inputs[0]
    x_hat = layer.input_quant(x.detach())
    if torch.is_grad_enabled() and x.requires_grad:
        x_hat = straight_through(x, x_hat)   # quantization-aware training through the activations
    return (x_hat, *inputs[1:])


def set_input_quant(layer: nn.Module, input_quant: InputQuant) -> None:
    """Round `layer`'s input with `input_quant` from now on (a forward pre-hook; no state_dict entries)."""
    if not has_input_quant(layer):
        layer.register_forward_pre_hook(_round_input)
    layer.input_quant = input_quant


def has_input_quant(layer: nn.Module) -> bool:
    return any(hook is _round_input for hook in layer._forward_pre_hooks.values())


def remove_input_quant(layer: nn.Module) -> None:
    for key, hook in list(layer._forward_pre_hooks.items()):
        if hook is _round_input:
            del layer._forward_pre_hooks[key]
    if "input_quant" in layer.__dict__:
        del layer.input_quant


@dataclass
class InputStats:
    """What calibration saw at one layer's input: the exact extremes and a random sample of values."""

    lo: float
    hi: float
    sample: torch.Tensor


@torch.no_grad()
def record_inputs(model: nn.Module, layers: dict[str, nn.Module], calib: ImageSet, batches: int = 4,
                  batch_size: int = 128, per_batch: int = 32768, seed: int = 0) -> dict[str, InputStats]:
    """Run `batches` batches of `calib` through the model (eval mode) and record each layer's input."""
    generator = torch.Generator().manual_seed(seed)
    lows, highs, samples = {}, {}, {name: [] for name in layers}

    def recorder(name):
        def hook(module, inputs):
            x = inputs[0].detach().float().reshape(-1)
            lo, hi = torch.aminmax(x)
            lows[name] = min(lows.get(name, math.inf), lo.item())
            highs[name] = max(highs.get(name, -math.inf), hi.item())
            if x.numel() > per_batch:
                x = x[torch.randint(x.numel(), (per_batch,), generator=generator)]
            samples[name].append(x.clone())
        return hook

    handles = [layer.register_forward_pre_hook(recorder(name)) for name, layer in layers.items()]
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            for batch in calibration_batches(calib, batches, batch_size):
                model(to_float(batch.images.to(device)))
    finally:
        for handle in handles:
            handle.remove()
    return {name: InputStats(lows[name], highs[name], torch.cat(samples[name])) for name in layers}


def percentile_range(sample: torch.Tensor, percentile: float, symmetric: bool) -> tuple[float, float]:
    """Clip the rarest extremes: (−P(|x|), P(|x|)) symmetric, (P_(100−p)(x), P_p(x)) asymmetric,
    P_p being the p-th percentile of the sample."""
    p = percentile / 100
    if symmetric:
        m = kth_fraction(sample.abs(), p)
        return -m, m
    return kth_fraction(sample, 1 - p), kth_fraction(sample, p)


def kth_fraction(x: torch.Tensor, fraction: float) -> float:
    """The value below which `fraction` of x lies: the k-th smallest, k = round(fraction · n) (1 ≤ k ≤ n)."""
    k = min(max(round(fraction * x.numel()), 1), x.numel())
    return x.kthvalue(k).values.item()


def mse_range(sample: torch.Tensor, lo: float, hi: float, bits: int, symmetric: bool,
              steps: int = 64, max_sample: int = 32768) -> tuple[float, float]:
    """The clipped range α·[lo, hi], α ∈ {1/steps, 2/steps, …, 1}, minimising mean (x − x̂)² on the sample.

    A narrower range rounds the bulk of the values more finely but clips the extremes; the search
    finds the balance.
    """
    x = sample[:max_sample][None, :]
    alphas = torch.linspace(1 / steps, 1, steps)[:, None]
    errors = (x - fake_quantize_range(x, alphas * lo, alphas * hi, bits, symmetric)).pow(2).mean(dim=1)
    best = alphas[errors.argmin()].item()
    return best * lo, best * hi


def choose_range(stats: InputStats, bits: int, symmetric: bool, method: str = "minmax",
                 percentile: float = 99.99) -> tuple[float, float]:
    """The range [lo, hi] an input is quantized over, always containing 0 (symmetric: −m…m)."""
    lo, hi = min(stats.lo, 0.0), max(stats.hi, 0.0)
    if symmetric:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    if method == "percentile":
        lo, hi = percentile_range(stats.sample, percentile, symmetric)
    elif method == "mse":
        lo, hi = mse_range(stats.sample, lo, hi, bits, symmetric)
    elif method != "minmax":
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    return min(lo, 0.0), max(hi, 0.0)


def quantize_activations(model: nn.Module, bits: int, calib: ImageSet, method: str = "minmax",
                         batches: int = 4, batch_size: int = 128, symmetric: bool = False,
                         percentile: float = 99.99, exempt: Iterable[str] = (), skip_first: bool = True,
                         inplace: bool = False) -> nn.Module:
    """Round the input of every Conv2d / Linear onto a `bits`-bit grid over a calibrated range.

    Calibration runs `batches` batches of `calib` and picks each layer's range [lo, hi] by `method`:
    "minmax" (everything seen), "percentile" (clips the values beyond the `percentile`-th percentile)
    or "mse" (the clipping that minimises the mean squared rounding error). Asymmetric (the default)
    suits inputs that follow a ReLU and are never negative. The first layer's input is the image,
    already 8-bit; `skip_first` leaves it unrounded. See the module docstring for how the settings
    are stored.
    """
    check_bits(bits)
    if bits == 1 and symmetric:
        raise ValueError("1-bit symmetric activations are not supported; use asymmetric (0 or s)")
    model = strip(model, inplace)
    for layer in model.modules():
        remove_input_quant(layer)      # start again from float inputs
    layers = quantizable_layers(model, exempt)
    if skip_first and layers:
        layers.pop(next(iter(layers)))
    stats = record_inputs(model, layers, calib, batches, batch_size)
    for name, layer in layers.items():
        lo, hi = choose_range(stats[name], bits, symmetric, method, percentile)
        set_input_quant(layer, InputQuant(bits, symmetric, lo, hi, method))
    return model


def quantize_model(model: nn.Module, w_bits: int, a_bits: int | None = None, calib: ImageSet | None = None,
                   symmetric: bool = True, per_channel: bool = True, a_method: str = "minmax",
                   a_symmetric: bool = False, exempt: Iterable[str] = (), inplace: bool = False,
                   **activation_options) -> nn.Module:
    """Weights to `w_bits` (quantize_weights), then, if `a_bits`, activations to `a_bits`
    (quantize_activations, calibrated on `calib` with the quantized weights in place)."""
    model = quantize_weights(model, w_bits, symmetric, per_channel, exempt, inplace)
    if a_bits is None:
        return model
    if calib is None:
        raise ValueError("activation quantization needs calibration images (calib)")
    return quantize_activations(model, a_bits, calib, a_method, symmetric=a_symmetric, inplace=True,
                                **activation_options)


def activation_settings(model: nn.Module) -> dict[str, dict]:
    """{layer name: InputQuant as a dict} for every layer whose input is rounded (JSON-able)."""
    return {name: layer.input_quant.to_dict() for name, layer in model.named_modules() if has_input_quant(layer)}


def set_activation_settings(model: nn.Module, settings: dict[str, dict], inplace: bool = False) -> nn.Module:
    """Put back settings from activation_settings(): the inverse for a freshly loaded model."""
    model = model if inplace else copy_model(model)
    modules = dict(model.named_modules())
    for name, values in settings.items():
        if name not in modules:
            raise ValueError(f"the model has no layer {name!r}")
        set_input_quant(modules[name], InputQuant(**values))
    return model


# --- reduced float -----------------------------------------------------------------------------------

def to_reduced_float(model: nn.Module, float_format: str = "fp16", activations: bool = True,
                     inplace: bool = False) -> nn.Module:
    """Simulate fp16 or bf16 inference: every parameter and buffer, and (if `activations`) every
    Conv2d / Linear input, is rounded through the format: x ← x.to(format).float().

    The arithmetic itself stays float32, so any CPU runs it; real fp16 hardware would also round the
    sums inside each layer, which changes results slightly more. fp16 keeps 10 mantissa bits and a
    range up to 65504; bf16 keeps float32's range but only 7 mantissa bits.
    """
    round_through(torch.zeros(1), float_format)   # checks the name
    model = strip(model, inplace)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(round_through(tensor, float_format))
    if activations:
        for layer in quantizable_layers(model).values():
            set_input_quant(layer, InputQuant(float_format=float_format, method="cast"))
    return model
