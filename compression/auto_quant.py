"""Automatic mixed precision: a weight bit width per layer (2 … 8) so that the packed file fits a budget.

Uniform b-bit quantization spends the same bits on every layer although some layers lose far more
from coarse rounding than others. Here each layer gets its own width:

1. Sensitivity. For every layer l alone, round its weights to b bits (quantize.fake_quantize,
   symmetric per-channel by default) and measure
       criterion "loss":  d_l(b) = L(only l at b bits) − L(float)   (mean cross-entropy on calibration
                          images, training images, never the test set), or
       criterion "sqnr":  d_l(b) = 10^(−SQNR_l(b)/10) = Σ(w − ŵ)² / Σw²   (the relative noise power; data-free,
                          a cruder proxy: it ignores how much the network cares about each layer),
   and the layer's exact packed bytes at b bits (layouts.plan_weight: the 'grid' layout stores per-channel
   scales and Huffman-coded multiples, so a 3-bit layer costs about 3 bits per weight, not 8).
2. Allocation (allocate.py): minimise D = Σ_l d_l(b_l) subject to packed bytes ≤ B, by the greedy rule
   (narrow next the layer whose Δd_l per byte saved is least, on the lower convex hulls; then spend
   what the last step left over on the widenings that buy the most loss per byte), the rest of the
   file (BN, biases, header) estimated first, then the exact size checked.
3. Guarantee: the widest uniform width whose packed size fits B is predicted on the same curves; if
   it is predicted better, it is returned instead (`rule` says which). So the auto allocation is never
   predicted worse than the uniform one that fits the same budget.

The verb: `auto_quantize(model, AutoQuantConfig(budget_bytes=...), calib) -> (model, BitAllocation)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .allocate import Curve, allocate_within
from .auto_prune import packed_size
from .data import ImageSet
from .layouts import plan_weight
from .prune import strip
from .quantize import fake_quantize, quantizable_layers
from .train import evaluate

BITS = (8, 7, 6, 5, 4, 3, 2)
CRITERIA = ("loss", "sqnr")
MAX_TRIES = 8          # exact-size checks before giving up on a budget


@dataclass
class AutoQuantConfig:
    """The packed-size budget in bytes (an upper bound) and how each layer's sensitivity is measured."""

    budget_bytes: int
    bits: tuple[int, ...] = BITS               # the widths a layer may get
    criterion: str = "loss"
    symmetric: bool = True
    per_channel: bool = True
    exempt: tuple[str, ...] = ()               # layers left in float32
    calib_images: int = 1024                   # the first ones of the calibration set ("loss")
    batch_size: int = 256

    def __post_init__(self):
        if isinstance(self.budget_bytes, bool) or int(self.budget_bytes) <= 0:
            raise ValueError(f"budget_bytes must be a positive number of bytes, got {self.budget_bytes!r}")
        bits = tuple(sorted({int(b) for b in self.bits}, reverse=True))
        if not bits or any(not 2 <= b <= 8 for b in bits):
            raise ValueError(f"bit widths must be whole numbers from 2 to 8, got {self.bits}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.calib_images < 1 or self.batch_size < 1:
            raise ValueError("calib_images and batch_size must be at least 1")
        self.budget_bytes, self.bits, self.exempt = int(self.budget_bytes), bits, tuple(self.exempt)


@dataclass
class LayerBits:
    """One layer's measurements at each width of `bits` (widest first)."""

    name: str
    params: int
    bits: list[int]
    loss: list[float]        # d_l(b) by the configured criterion
    sqnr_db: list[float]
    bytes: list[int]

    def curve(self) -> tuple[Curve, list[int]]:
        """An allocate.Curve over bytes, and the indices of the widths it keeps (a width that saves no
        bytes over a wider one is dropped)."""
        keep = [0] + [j for j in range(1, len(self.bytes)) if self.bytes[j] < min(self.bytes[:j])]
        return Curve([float(self.bytes[j]) for j in keep], [self.loss[j] for j in keep]), keep


@dataclass
class BitAllocation:
    """The chosen width per layer and the widest uniform width that fits, with their exact packed sizes
    and predicted losses (base + Σ d_l; for "sqnr" the base is 0)."""

    budget_bytes: int
    params: dict[str, int]
    bits: dict[str, int]
    packed_bytes: int
    uniform_bits: int | None
    uniform_bytes: int | None
    base_loss: float
    predicted: float
    uniform_predicted: float | None
    rule: str                                 # "greedy", or "uniform" when it was predicted better
    criterion: str
    curves: dict[str, LayerBits] = field(default_factory=dict)

    @property
    def mean_bits(self) -> float:
        """Σ_l n_l·b_l / Σ_l n_l: the average width per weight."""
        return sum(self.params[n] * b for n, b in self.bits.items()) / max(1, sum(self.params.values()))

    def rows(self) -> list[dict]:
        """One row per layer, for a bar chart or table: params, auto and uniform widths, auto bytes."""
        return [{"layer": n, "params": self.params[n], "auto": self.bits[n], "uniform": self.uniform_bits,
                 "bytes": self.curves[n].bytes[self.curves[n].bits.index(self.bits[n])]} for n in self.params]


def quantize_layers(model: nn.Module, bits: dict[str, int], symmetric: bool = True,
                    per_channel: bool = True) -> nn.Module:
    """A copy (masks baked in) with layer l's weight rounded onto its bits[l]-bit grid; other layers
    stay float32. quantize.quantize_weights with one width per layer."""
    model = strip(model)
    layers = quantizable_layers(model)
    with torch.no_grad():
        for name, b in bits.items():
            layers[name].weight.copy_(fake_quantize(layers[name].weight, b, symmetric, per_channel))
    return model


def noise_to_signal(w: torch.Tensor, w_hat: torch.Tensor) -> tuple[float, float]:
    """(Σ(w − ŵ)² / Σw², SQNR in dB = −10·log10 of it)."""
    ratio = (w - w_hat).pow(2).sum().item() / max(w.pow(2).sum().item(), 1e-30)
    return ratio, (math.inf if ratio == 0 else -10 * math.log10(ratio))


@torch.no_grad()
def bit_curves(work: nn.Module, config: AutoQuantConfig, calib: ImageSet | None,
               progress: Callable[[int, int], None] | None = None,
               stop: Callable[[], bool] | None = None) -> tuple[float, dict[str, LayerBits]]:
    """(base loss, a LayerBits per quantizable layer). `work` is a private float model: each layer is
    rounded in place, measured, and restored."""
    layers = quantizable_layers(work, config.exempt)
    base = evaluate(work, calib, config.batch_size).loss if config.criterion == "loss" else 0.0
    curves = {}
    for i, (name, layer) in enumerate(layers.items()):
        if stop is not None and stop():
            raise InterruptedError("stopped while measuring the per-layer sensitivity")
        weight = layer.weight.detach().clone()
        curve = LayerBits(name, weight.numel(), list(config.bits), [], [], [])
        for b in config.bits:
            w_hat = fake_quantize(weight, b, config.symmetric, config.per_channel)
            ratio, sqnr = noise_to_signal(weight, w_hat)
            layer.weight.copy_(w_hat)
            loss = evaluate(work, calib, config.batch_size).loss - base if config.criterion == "loss" else ratio
            curve.loss.append(loss)
            curve.sqnr_db.append(sqnr)
            curve.bytes.append(plan_weight(f"{name}.weight", w_hat).total_bytes)
        layer.weight.copy_(weight)
        curves[name] = curve
        if progress:
            progress(i + 1, len(layers))
    return base, curves


def allocate_bits(work: nn.Module, curves: dict[str, LayerBits], config: AutoQuantConfig) -> tuple[dict[str, int], int] | None:
    """(bits per layer, exact packed bytes ≤ budget) by the rule of the module docstring, or None when
    no allocation fits. The rest of the file (BN, biases, header) is estimated from the widest widths;
    when the exact size comes out over (the compressed header's length varies a little), the estimate
    is corrected by the difference and the rule runs again."""
    options = {n: c.curve() for n, c in curves.items()}
    bytes_curves = {n: curve for n, (curve, _) in options.items()}
    widest = {n: c.bits[0] for n, c in curves.items()}
    rest = packed_size(quantize_layers(work, widest, config.symmetric, config.per_channel)) \
        - sum(c.bytes[0] for c in curves.values())
    for _ in range(MAX_TRIES):
        try:
            at = allocate_within(bytes_curves, config.budget_bytes - rest)
        except ValueError:
            return None
        bits = {n: curves[n].bits[options[n][1][j]] for n, j in at.items()}
        size = packed_size(quantize_layers(work, bits, config.symmetric, config.per_channel))
        if size <= config.budget_bytes:
            return bits, size
        rest += size - (rest + sum(bytes_curves[n].resource[j] for n, j in at.items()))
    return None


def widest_uniform(work: nn.Module, curves: dict[str, LayerBits], config: AutoQuantConfig) -> tuple[int, int] | None:
    """(b, exact packed bytes) of the widest uniform width that fits the budget, or None."""
    for b in config.bits:
        size = packed_size(quantize_layers(work, {n: b for n in curves}, config.symmetric, config.per_channel))
        if size <= config.budget_bytes:
            return b, size
    return None


def predict(curves: dict[str, LayerBits], bits: dict[str, int]) -> float:
    """Σ_l d_l(b_l) on the measured points."""
    return sum(curves[n].loss[curves[n].bits.index(b)] for n, b in bits.items())


@dataclass
class BitSensitivity:
    """What auto_quantize measures (layers × widths evaluations), kept so that other budgets are
    allocated in a moment: pass it back as `sensitivity` with a config of the same `settings`."""

    base_loss: float
    curves: dict[str, LayerBits]
    settings: tuple


def _settings(config: AutoQuantConfig) -> tuple:
    return (config.bits, config.criterion, config.symmetric, config.per_channel, config.exempt,
            config.calib_images if config.criterion == "loss" else None)


def measure_sensitivity(model: nn.Module, config: AutoQuantConfig, calib: ImageSet | None = None,
                        progress: Callable[[int, int], None] | None = None,
                        stop: Callable[[], bool] | None = None) -> BitSensitivity:
    """Step 1 of the module docstring (on the first `config.calib_images` of `calib` for "loss"; the
    budget plays no part). `progress(done, total)` after each layer; `stop()` ends it early."""
    if config.criterion == "loss":
        if calib is None or len(calib) == 0:
            raise ValueError('criterion "loss" needs calibration images (calib)')
        calib = calib.subset(slice(0, config.calib_images))
    base, curves = bit_curves(strip(model).eval(), config, calib, progress, stop)
    return BitSensitivity(base, curves, _settings(config))


def auto_quantize(model: nn.Module, config: AutoQuantConfig, calib: ImageSet | None = None,
                  progress: Callable[[int, int], None] | None = None, stop: Callable[[], bool] | None = None,
                  sensitivity: BitSensitivity | None = None) -> tuple[nn.Module, BitAllocation]:
    """Measure each layer's sensitivity (or reuse `sensitivity`, measured on the same model with the
    same settings), allocate widths under `config.budget_bytes` (module docstring) and quantize a copy
    of `model`: (model with fake-quantized weights, BitAllocation)."""
    if sensitivity is None:
        sensitivity = measure_sensitivity(model, config, calib, progress, stop)
    elif sensitivity.settings != _settings(config):
        raise ValueError("this sensitivity was measured with other settings (widths, criterion, grid, exempt "
                         "layers, calibration images); measure it again")
    base, curves = sensitivity.base_loss, sensitivity.curves
    work = strip(model).eval()
    uniform = widest_uniform(work, curves, config)
    greedy = allocate_bits(work, curves, config)
    candidates = [] if greedy is None else [(*greedy, "greedy")]
    if uniform is not None:
        candidates.append(({n: uniform[0] for n in curves}, uniform[1], "uniform"))
    if not candidates:
        floor = packed_size(quantize_layers(work, {n: min(config.bits) for n in curves}, config.symmetric,
                                            config.per_channel))
        raise ValueError(f"a budget of {config.budget_bytes} bytes is below what {min(config.bits)} bits in every "
                         f"layer take ({floor} bytes); allow more bytes")
    bits, size, rule = min(candidates, key=lambda c: predict(curves, c[0]))   # greedy first on a tie
    allocation = BitAllocation(
        config.budget_bytes, {n: c.params for n, c in curves.items()}, bits, size,
        None if uniform is None else uniform[0], None if uniform is None else uniform[1],
        base, base + predict(curves, bits),
        None if uniform is None else base + predict(curves, {n: uniform[0] for n in curves}),
        rule, config.criterion, curves)
    return quantize_layers(model, bits, config.symmetric, config.per_channel), allocation
