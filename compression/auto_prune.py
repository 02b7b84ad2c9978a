"""Automatic per-layer pruning: let the tool choose each layer's sparsity under a budget.

One global number prunes every layer alike (uniform) or ranks all weights together (global magnitude),
although layers differ in how much they can lose: the stem conv and the classifier are small and
fragile, the wide late convs are large and redundant. Here each layer gets its own sparsity:

1. Sensitivity. For every prunable layer l alone (all others untouched), prune it to each level
   s ∈ `levels` with the same ranking as prune.py (magnitude by default) and measure the mean
   cross-entropy on calibration images: d_l(s) = L(only l pruned to s) − L(unpruned). Calibration
   images are training images (never the test set). Cost: layers × levels evaluations.
2. Allocation (allocate.py): minimise the predicted loss  D = Σ_l d_l(s_l)  subject to
       exact sparsity:  Σ_l k_l = K = round(t · N)   (k_l zeros of the n_l weights of layer l,
                        N = Σ_l n_l over the prunable layers), i.e. nonzeros Σ_l (n_l − k_l) = N − K;
       or a size:       packed bytes(model) ≤ B   (compression.packed, measured exactly).
   The greedy rule: repeatedly give the next pruning step to the layer whose predicted loss increase
   per removed weight (or per byte saved), Δd_l / Δk_l, is smallest, on the lower convex hulls of
   the curves; for a sparsity target the last step is taken part of the way, so Σ k_l = K exactly;
   for a size, what the last step left over is spent on the un-prunings that buy the most loss per byte.
3. Guarantee: the uniform allocation (every layer at t, its counts rounded so they add up to K) is
   predicted on the same curves; if it is predicted better, it is returned instead (`rule` says which).
   So the auto allocation is never predicted worse than uniform (choose="predicted").
4. Check (choose="measured", the default). Predicting D as a sum ignores how the damage of several
   pruned layers compounds, so the prediction can rank allocations wrongly. A few candidates are
   therefore measured on the same calibration images: the allocation of step 3, blends
       k_l(α) = (1 − α)·k_l(auto) + α·k_l(global),  α ∈ BLENDS   (rounded to add up to K again)
   towards the zeros one global magnitude ranking gives, uniform and global themselves; the one with
   the least measured calibration loss is returned. So it is never measured worse than uniform or
   global on those images (`measured` lists every candidate's loss). Cost: a handful of evaluations.

The verb: `auto_prune(model, AutoPruneConfig(target_sparsity=0.7), calib) -> (pruned model, allocation)`.
The pruned model carries masks like any prune.prune() result (fine-tuning keeps the zeros).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .allocate import Curve, allocate_within, greedy_allocate, interpolate
from .data import ImageSet
from .layouts import plan_weight
from .packed_sizes import packed_breakdown
from .prune import METHODS, apply_masks, importance_scores, lowest_k_mask, masks_from_scores, prunable_layers, strip
from .train import evaluate
from .weights import copy_model

DEFAULT_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)
BLENDS = (0.25, 0.5, 0.75)
CHOICES = ("measured", "predicted")
MAX_TRIES = 8          # exact-size checks before giving up on a byte budget


@dataclass
class AutoPruneConfig:
    """What to reach and how to measure. Exactly one of `target_sparsity` (fraction of the prunable
    weights that are zero afterwards, met exactly) and `target_bytes` (packed file size, an upper
    bound) is given."""

    target_sparsity: float | None = None
    target_bytes: int | None = None
    method: str = "magnitude"                    # ranking inside a layer (prune.METHODS)
    exempt: tuple[str, ...] = ()                 # layers left dense and out of N
    levels: tuple[float, ...] = DEFAULT_LEVELS   # sparsities at which each layer is measured
    calib_images: int = 1024                     # the first ones of the calibration set
    batch_size: int = 256
    seed: int = 0                                # for method="random"
    choose: str = "measured"                     # step 4 of the module docstring, or "predicted" (step 3 only)

    def __post_init__(self):
        if (self.target_sparsity is None) == (self.target_bytes is None):
            raise ValueError("give exactly one budget: target_sparsity or target_bytes")
        if self.target_sparsity is not None and not 0.0 <= self.target_sparsity <= max(self.levels, default=0):
            raise ValueError(f"target_sparsity must be in [0, {max(self.levels, default=0)}] (the highest measured "
                             f"level), got {self.target_sparsity}")
        if self.target_bytes is not None and (isinstance(self.target_bytes, bool) or int(self.target_bytes) <= 0):
            raise ValueError(f"target_bytes must be a positive number of bytes, got {self.target_bytes!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        levels = tuple(float(s) for s in self.levels)
        if not levels or levels[0] != 0.0 or any(b <= a for a, b in zip(levels, levels[1:])) or levels[-1] >= 1:
            raise ValueError(f"levels must rise strictly from 0.0 and stay below 1, got {self.levels}")
        if self.calib_images < 1 or self.batch_size < 1:
            raise ValueError("calib_images and batch_size must be at least 1")
        if self.choose not in CHOICES:
            raise ValueError(f"choose must be one of {CHOICES}, got {self.choose!r}")
        self.levels, self.exempt = levels, tuple(self.exempt)


@dataclass
class LayerCurve:
    """One layer's measured sensitivity: at each option, its zeros, the calibration loss increase
    and accuracy with only this layer pruned, and the layer's packed bytes."""

    name: str
    params: int
    zeros: list[int]
    loss: list[float]
    accuracy: list[float]
    bytes: list[int]

    def curve(self, resource: str) -> tuple[Curve, list[int]]:
        """As an allocate.Curve over nonzeros ("weights") or bytes, and the indices of the options it
        keeps: options that save no more of the resource than an earlier one are dropped (pruning
        further would only cost)."""
        spent = [self.params - z for z in self.zeros] if resource == "weights" else self.bytes
        keep = [0] + [j for j in range(1, len(spent)) if spent[j] < min(spent[:j])]
        return Curve([float(spent[j]) for j in keep], [self.loss[j] for j in keep]), keep


@dataclass
class PruneAllocation:
    """The chosen zeros per layer, the uniform and global-magnitude ones for comparison, and the
    predicted calibration loss of each (base loss + Σ d_l)."""

    target: str
    params: dict[str, int]
    zeros: dict[str, int]
    uniform_zeros: dict[str, int] | None
    global_zeros: dict[str, int]
    base_loss: float
    predicted: float
    uniform_predicted: float | None
    global_predicted: float
    rule: str                                    # the candidate returned: "greedy", "uniform", "global", "blend 0.5"
    curves: dict[str, LayerCurve] = field(default_factory=dict)
    measured: dict[str, float] = field(default_factory=dict)    # candidate -> measured calibration loss

    @property
    def sparsity(self) -> float:
        """Overall: zeros over prunable weights."""
        return sum(self.zeros.values()) / max(1, sum(self.params.values()))

    def rows(self) -> list[dict]:
        """One row per layer, for a bar chart or table: params and the three sparsities."""
        def frac(zeros, name):
            return None if zeros is None else zeros[name] / self.params[name]
        return [{"layer": n, "params": self.params[n], "auto": frac(self.zeros, n),
                 "uniform": frac(self.uniform_zeros, n), "global": frac(self.global_zeros, n)}
                for n in self.params]


# --- 1. sensitivity ----------------------------------------------------------------------------------

def layer_scores(model: nn.Module, config: AutoPruneConfig, calib: ImageSet) -> dict[str, torch.Tensor]:
    """prune.importance_scores for each prunable layer, with weights already zero ranked lowest."""
    scores = importance_scores(model, config.method, config.exempt, calib, config.seed)
    weights = {n: m.weight.detach() for n, m in prunable_layers(model, config.exempt).items()}
    return {n: torch.where(weights[n] == 0, -1.0, s.float()) for n, s in scores.items()}


def option_zeros(params: int, zeros_now: int, levels: tuple[float, ...]) -> list[int]:
    """The zero counts a layer is measured at: its current count, then round(s · n) above it."""
    return [zeros_now] + sorted({k for k in (round(s * params) for s in levels) if k > zeros_now})


@torch.no_grad()
def sensitivity_curves(work: nn.Module, scores: dict[str, torch.Tensor], calib: ImageSet,
                       config: AutoPruneConfig, progress: Callable[[int, int], None] | None = None,
                       stop: Callable[[], bool] | None = None) -> tuple[float, dict[str, LayerCurve]]:
    """(base calibration loss, a LayerCurve per layer of `scores`). `work` is a private plain model
    (no masks): each layer is pruned in place, measured, and restored."""
    layers = prunable_layers(work, config.exempt)
    base = evaluate(work, calib, config.batch_size)
    curves = {}
    for i, (name, layer) in enumerate(layers.items()):
        if stop is not None and stop():
            raise InterruptedError("stopped while measuring the per-layer sensitivity")
        weight = layer.weight.detach().clone()
        params, zeros_now = weight.numel(), int((weight == 0).sum())
        curve = LayerCurve(name, params, [], [], [], [])
        for k in option_zeros(params, zeros_now, config.levels):
            layer.weight.copy_(weight * lowest_k_mask(scores[name], k))
            result = evaluate(work, calib, config.batch_size)
            curve.zeros.append(k)
            curve.loss.append(result.loss - base.loss)
            curve.accuracy.append(result.accuracy)
            curve.bytes.append(plan_weight(f"{name}.weight", layer.weight).total_bytes)
        layer.weight.copy_(weight)
        curves[name] = curve
        if progress:
            progress(i + 1, len(layers))
    return base.loss, curves


# --- 2. allocation -----------------------------------------------------------------------------------

def uniform_counts(params: dict[str, int], total: int) -> dict[str, int]:
    """Every layer at the same fraction t = total / N, rounded so that the counts add up to `total`."""
    n = sum(params.values())
    return rounded_counts({name: total * p / n for name, p in params.items()}, total)


def rounded_counts(exact: dict[str, float], total: int) -> dict[str, int]:
    """Whole counts adding up to `total` (= Σ exact), each the floor or ceiling of its exact value: the
    largest remainders are rounded up (Hamilton's method)."""
    params = list(exact)
    counts = {name: int(x) for name, x in exact.items()}
    by_remainder = sorted(params, key=lambda name: counts[name] - exact[name])   # largest remainder first
    for name in by_remainder[:total - sum(counts.values())]:
        counts[name] += 1
    return counts


def predict(curves: dict[str, LayerCurve], zeros: dict[str, int]) -> float:
    """Σ_l d_l(k_l), each interpolated on the layer's measured points (by nonzeros)."""
    return sum(interpolate(curves[n].curve("weights")[0], curves[n].params - k) for n, k in zeros.items())


def feasible(curves: dict[str, LayerCurve], zeros: dict[str, int] | None) -> bool:
    """Within every layer's measured range (and no layer asked to give back zeros it has)."""
    return zeros is not None and all(c.zeros[0] <= zeros[n] <= c.zeros[-1] for n, c in curves.items())


def allocate_sparsity(curves: dict[str, LayerCurve], target: float) -> dict[str, int]:
    """Zeros per layer with Σ k_l = round(target · N) and the least predicted loss by the greedy rule
    (module docstring); ValueError when the model is already sparser than the target."""
    params = {n: c.params for n, c in curves.items()}
    total = round(target * sum(params.values()))
    already = sum(c.zeros[0] for c in curves.values())
    if total < already:
        raise ValueError(f"the model already has {already} zeros, more than the {total} the target asks for")
    choice = greedy_allocate({n: c.curve("weights")[0] for n, c in curves.items()},
                             sum(params.values()) - total, exact=True)
    return {n: params[n] - round(ch.resource) for n, ch in choice.items()}


def packed_size(model: nn.Module) -> int:
    """len(pack_model(model)), from the plan (nothing encoded)."""
    return sum(row["total_bytes"] for row in packed_breakdown(model))


def prune_to_counts(model: nn.Module, zeros: dict[str, int], scores: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of `model` with masks holding exactly zeros[l] zeros in layer l, at its lowest scores."""
    model = copy_model(model)
    layers = prunable_layers(model)
    apply_masks(layers, {n: lowest_k_mask(scores[n], k) for n, k in zeros.items()})
    return model


def allocate_bytes(work: nn.Module, curves: dict[str, LayerCurve], scores: dict[str, torch.Tensor],
                   budget: int) -> dict[str, int] | None:
    """Zeros per layer with packed size ≤ budget and the least predicted loss, or None when none fits:
    the greedy rule over bytes, then the leftover spent (allocate.allocate_within). The rest of the
    file (BN, biases, header) is estimated from the unpruned model; when the exact size comes out over
    (the compressed header's length varies a little), the estimate is corrected by the difference and
    the rule runs again."""
    options = {n: c.curve("bytes") for n, c in curves.items()}
    bytes_curves = {n: curve for n, (curve, _) in options.items()}
    rest = packed_size(work) - sum(c.bytes[0] for c in curves.values())
    for _ in range(MAX_TRIES):
        try:
            at = allocate_within(bytes_curves, budget - rest)
        except ValueError:
            return None
        zeros = {n: curves[n].zeros[options[n][1][j]] for n, j in at.items()}
        size = packed_size(prune_to_counts(work, zeros, scores))
        if size <= budget:
            return zeros
        rest += size - (rest + sum(bytes_curves[n].resource[j] for n, j in at.items()))
    return None


def uniform_within(work: nn.Module, curves: dict[str, LayerCurve], scores: dict[str, torch.Tensor],
                   budget: int) -> dict[str, int] | None:
    """Uniform counts (Hamilton-rounded) at the lowest measured level whose packed size fits, or None."""
    params = {n: c.params for n, c in curves.items()}
    for level in sorted({k / c.params for c in curves.values() for k in c.zeros}):
        counts = uniform_counts(params, round(level * sum(params.values())))
        if feasible(curves, counts) and packed_size(prune_to_counts(work, counts, scores)) <= budget:
            return counts
    return None


def global_counts(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, int]:
    """The zeros per layer that one global ranking of the scores gives (prune's scope="global")."""
    return {n: int((m == 0).sum()) for n, m in masks_from_scores(scores, fraction, "global").items()}


def measured_choice(work: nn.Module, scores: dict[str, torch.Tensor], calib: ImageSet, config: AutoPruneConfig,
                    candidates: dict[str, dict[str, int] | None]) -> tuple[dict[str, int], str, dict[str, float]]:
    """Step 4: the first candidate plus its blends towards "global", and the others, each pruned and
    measured on `calib`; (zeros, name, {name: calibration loss}) of the least loss. With a byte
    budget, candidates over it are left out."""
    first, first_zeros = next(iter(candidates.items()))
    total = sum(first_zeros.values())
    for alpha in BLENDS:
        exact = {n: (1 - alpha) * k + alpha * candidates["global"][n] for n, k in first_zeros.items()}
        candidates[f"blend {alpha:g}"] = rounded_counts(exact, total)
    losses, zeros = {}, {}
    for name, counts in candidates.items():
        if counts is None or counts in zeros.values():
            continue
        model = prune_to_counts(work, counts, scores)
        if config.target_bytes is not None and packed_size(model) > config.target_bytes:
            continue
        losses[name], zeros[name] = evaluate(model, calib, config.batch_size).loss, counts
    best = min(losses, key=losses.get)                 # the first listed on a tie
    return zeros[best], best, losses


# --- the verb ----------------------------------------------------------------------------------------

@dataclass
class PruneSensitivity:
    """What auto_prune measures (the slow part: layers × levels evaluations), kept so that other targets
    are allocated in a moment: pass it back as `sensitivity` with a config of the same `settings`."""

    base_loss: float
    curves: dict[str, LayerCurve]
    scores: dict[str, torch.Tensor]
    settings: tuple


def _settings(config: AutoPruneConfig) -> tuple:
    return config.method, config.levels, config.exempt, config.calib_images, config.seed


def measure_sensitivity(model: nn.Module, config: AutoPruneConfig, calib: ImageSet,
                        progress: Callable[[int, int], None] | None = None,
                        stop: Callable[[], bool] | None = None) -> PruneSensitivity:
    """Step 1 of the module docstring on the first `config.calib_images` of `calib` (the budget in
    `config` plays no part). `progress(done, total)` after each layer; `stop()` ends it early
    (InterruptedError)."""
    calib = calib.subset(slice(0, config.calib_images))
    work = strip(model).eval()
    scores = layer_scores(work, config, calib)
    base_loss, curves = sensitivity_curves(work, scores, calib, config, progress, stop)
    return PruneSensitivity(base_loss, curves, scores, _settings(config))


def auto_prune(model: nn.Module, config: AutoPruneConfig, calib: ImageSet,
               progress: Callable[[int, int], None] | None = None, stop: Callable[[], bool] | None = None,
               sensitivity: PruneSensitivity | None = None) -> tuple[nn.Module, PruneAllocation]:
    """Measure each layer's sensitivity (or reuse `sensitivity`, measured on the same model with the
    same settings), allocate (module docstring) and prune a copy of `model` to the allocation:
    (pruned model with masks, PruneAllocation). The uniform allocation replaces the greedy one when it
    is predicted better (`rule` says so)."""
    if sensitivity is None:
        sensitivity = measure_sensitivity(model, config, calib, progress, stop)
    elif sensitivity.settings != _settings(config):
        raise ValueError("this sensitivity was measured with other settings (method, levels, exempt layers, "
                         "calibration images); measure it again")
    base_loss, curves, scores = sensitivity.base_loss, sensitivity.curves, sensitivity.scores
    work = strip(model).eval()
    params = {n: c.params for n, c in curves.items()}
    if config.target_sparsity is not None:
        zeros = allocate_sparsity(curves, config.target_sparsity)
        uniform = uniform_counts(params, sum(zeros.values()))
        target = f"sparsity {config.target_sparsity:g} ({sum(zeros.values())} of {sum(params.values())} zero)"
    else:
        zeros = allocate_bytes(work, curves, scores, int(config.target_bytes))
        uniform = uniform_within(work, curves, scores, int(config.target_bytes))
        target = f"packed size ≤ {int(config.target_bytes)} bytes"
    uniform = uniform if feasible(curves, uniform) else None
    candidates = [(z, rule) for z, rule in ((zeros, "greedy"), (uniform, "uniform")) if z is not None]
    if not candidates:
        highest = max(c.zeros[-1] / c.params for c in curves.values())
        raise ValueError(f"{target} cannot be reached by pruning each layer up to {highest:.0%} (the highest "
                         f"measured level); allow more bytes")
    zeros, rule = min(candidates, key=lambda c: predict(curves, c[0]))     # greedy first on a tie
    global_ = global_counts(scores, sum(zeros.values()) / sum(params.values()))
    measured = {}
    if config.choose == "measured":
        zeros, rule, measured = measured_choice(work, scores, calib.subset(slice(0, config.calib_images)), config,
                                                {rule: zeros, "uniform": uniform, "global": global_})
    allocation = PruneAllocation(
        target, params, zeros, uniform, global_, base_loss, base_loss + predict(curves, zeros),
        None if uniform is None else base_loss + predict(curves, uniform),
        base_loss + predict(curves, global_), rule, curves, measured)
    return prune_to_counts(model, zeros, scores), allocation
