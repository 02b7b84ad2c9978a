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

- quantize_weights       every Conv2d / Linear weight rounded onto its grid.
- quantize_activations   the input of every Conv2d / Linear rounded onto a grid whose range was
                         calibrated on a few batches: "minmax", "percentile" (clip the rarest extreme
                         values) or "mse" (the clipping that minimises the rounding error).
- quantize_model         both.
- to_reduced_float       weights and activations rounded through fp16 or bf16.
- prepare_qat            quantization-aware training: layers compute with quantized weights, and the
                         straight-through estimator lets gradients reach the float weights;
                         convert_qat bakes the trained weights onto the grid.

How activation settings are recorded: a layer whose input is rounded carries an `input_quant`
attribute (an InputQuant: bits, symmetric, range lo..hi, or a float format; plain Python numbers) and
a forward pre-hook that applies it. Nothing goes into the state_dict, so the keys stay those of the
architecture and files.save_model works unchanged. `activation_settings(model)` returns the settings
as a JSON-able dict (for a file's metadata) and `set_activation_settings` puts them back;
`plain_weights(model)` gives a plain model without any of this machinery.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .data import ImageSet, to_float
from .models import copy_model
from .prune import is_pruned, prunable_layers, strip

FLOAT_FORMATS = {"fp16": torch.float16, "bf16": torch.bfloat16}
CALIBRATION_METHODS = ("minmax", "percentile", "mse")


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


def float_copy(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A copy (unless inplace) whose pruning masks are baked in: every weight is a plain tensor again."""
    if is_pruned(model):
        return strip(model, inplace=inplace)
    return model if inplace else copy_model(model)


def quantize_weights(model: nn.Module, bits: int, symmetric: bool = True, per_channel: bool = True,
                     exempt: Iterable[str] = (), inplace: bool = False) -> nn.Module:
    """Round every Conv2d / Linear weight (minus `exempt` layers) onto its b-bit grid: w ← fake_quantize(w).

    Pruning masks are baked in first; the zeros they leave stay exactly zero. Biases, BatchNorm and
    activations stay float32.
    """
    check_bits(bits)
    model = float_copy(model, inplace)
    with torch.no_grad():
        for layer in quantizable_layers(model, exempt).values():
            layer.weight.copy_(fake_quantize(layer.weight, bits, symmetric, per_channel))
    return model


# --- activations -------------------------------------------------------------------------------------

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
    if len(calib) == 0:
        raise ValueError("calibration needs at least one image")
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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for i in range(batches):
            start = i * batch_size % len(calib)
            model(to_float(calib.images[start:start + batch_size].to(device)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
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
    model = float_copy(model, inplace)
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
    model = float_copy(model, inplace)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.copy_(round_through(tensor, float_format))
    if activations:
        for layer in quantizable_layers(model).values():
            set_input_quant(layer, InputQuant(float_format=float_format, method="cast"))
    return model


# --- quantization-aware training ---------------------------------------------------------------------

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
        return w_hat   # no gradient wanted: exactly the grid values

    def quantized(self, w: torch.Tensor) -> torch.Tensor:
        """The weight to keep after training: fake_quantize(w·mask), exactly on the grid."""
        with torch.no_grad():
            return self(w)


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
    model = float_copy(model, inplace)
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

    The QAT model is left as it is. (torch's remove_parametrizations would edit a class that every deep
    copy of the model shares, breaking the others; so the plain model is built afresh from the weights.)
    """
    from .files import model_from_state_dict
    from .packed import computed_state_dict

    tensors = computed_state_dict(model)
    with torch.no_grad():
        for name, layer in model.named_modules():
            if parametrize.is_parametrized(layer, "weight"):
                fake_quant = layer.parametrizations.weight[0]
                weight = fake_quant.quantized(layer.parametrizations.weight.original)
                tensors[f"{name}.weight" if name else "weight"] = weight.detach().cpu().clone()
    plain = model_from_state_dict(tensors, model.arch, getattr(model, "width", 1.0))
    plain.train(model.training)
    settings = activation_settings(model)
    return set_activation_settings(plain, settings, inplace=True) if settings else plain


def plain_weights(model: nn.Module) -> nn.Module:
    """A plain copy of the architecture holding the weights the model computes with: QAT layers
    converted, pruning masks baked in, input rounding removed. Its state_dict keys are the
    architecture's (save it with files.save_model; keep activation_settings(model) in the metadata)."""
    model = convert_qat(float_copy(model))
    for layer in model.modules():
        remove_input_quant(layer)
    return model


# --- what the app draws ------------------------------------------------------------------------------

def effective_weight(layer: nn.Module) -> torch.Tensor:
    """The weight a layer computes with: w·mask when pruned, ŵ during QAT, else w."""
    if hasattr(layer, "weight_orig") and hasattr(layer, "weight_mask"):
        return (layer.weight_orig * layer.weight_mask).detach()
    return layer.weight.detach()


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
