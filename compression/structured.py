"""Structured (filter) pruning: remove whole channels, so the network really gets smaller and faster.

Unstructured pruning (prune.py) zeroes single weights; the tensors keep their shapes and a dense
CPU kernel does the same work as before. Filter pruning instead deletes output channel c of a conv:
the filter W[c] (shape C_in x k x k), BN's γ[c], β[c] and running statistics, and input channel c of
every layer that reads the output. A conv's cost is

    MACs = C_out · C_in · k² · H_out · W_out,

so keeping a fraction q of the channels everywhere leaves about q² of the MACs.

Residual additions tie channels together. In y = relu(F(x) + shortcut(x)) channel c of F(x) is added
to channel c of shortcut(x), so the stem conv, every block's second conv and the stage's shortcut
conv must lose the *same* channels. Torch-Pruning's dependency graph (Fang et al. 2023) traces the
model and returns these "groups"; pruning a group removes its channels from every member at once.

Which channels go? Every criterion gives each channel of a group a score, and the lowest go:
- l1          s_c = ‖W[c]‖₁, the L1 norm of the filter (Li et al. 2017, "Pruning Filters for
              Efficient ConvNets"); averaged over the convs that write the channel
- bn_scale    s_c = |γ_c|, the BN scale that multiplies the channel (network slimming,
              Liu et al. 2017); averaged over the group's BN layers
- activation  s_c = mean |a_c| over calibration images, pixels and every layer that reads the
              channel: a channel that is almost always zero carries little
- random      s_c ~ U(0, 1) (seeded): the baseline a criterion must beat

Local pruning removes the same fraction from every group; global pruning ranks all channels of all
groups together (each group's scores divided by their mean first). `filter_scores` and
`filters_to_remove` show a criterion's choice without pruning; `prune_filters` prunes;
`prune_to_macs` searches the ratio that meets a MAC budget.
"""
from __future__ import annotations

import torch
from torch import nn
import torch_pruning as tp

from .counts import count_macs
from .data import ImageSet, to_float
from .models import eval_mode
from .prune import strip
from .weights import copy_model

CRITERIA = ("l1", "bn_scale", "activation", "random")

# Which layer slices a criterion's per-layer scores describe: the layer's output channels
# (its filters, its BN scales) or its input channels (what it reads).
WRITES = (tp.prune_conv_out_channels, tp.prune_batchnorm_out_channels)
READS = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)


# --- the dependency graph ---------------------------------------------------------------------------

def classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer: its outputs are the class scores and are never pruned."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no Linear classifier")
    return linears[-1]


def example_input(model: nn.Module) -> torch.Tensor:
    return torch.zeros(1, 3, 32, 32, device=next(model.parameters()).device)


def dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    with eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input(model))


def pruning_groups(graph: tp.DependencyGraph, model: nn.Module) -> list:
    """One group per set of tied channels, each holding every channel (the whole width)."""
    return list(graph.get_all_groups(ignored_layers=[classifier(model)],
                                     root_module_types=[nn.Conv2d, nn.Linear]))


def channel_groups(model: nn.Module) -> list[list[str]]:
    """The names of the layers whose output channels are tied together, one list per group.

    A block's inner conv forms a group of its own (conv1 + bn1); a stage's residual stream forms one
    group of every conv and BN that writes into it (stem or shortcut, and each block's conv2 + bn2).
    """
    model = copy_model(model)   # tracing hooks the model: never hook one another thread may be using
    names = {module: name for name, module in model.named_modules()}
    return [[names[dep.target.module] for dep, _ in group if dep.handler in WRITES]
            for group in pruning_groups(dependency_graph(model), model)]


def channel_counts(model: nn.Module) -> dict[str, int]:
    """Output channels (features, for the classifier) of every Conv2d and Linear layer, by name."""
    return {name: m.out_channels if isinstance(m, nn.Conv2d) else m.out_features
            for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


# --- per-layer scores --------------------------------------------------------------------------------

def l1_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """s_c = Σ |W[c, :, :, :]| for every filter c of every conv (scores of output channels)."""
    return {name: m.weight.detach().abs().sum(dim=(1, 2, 3)).cpu()
            for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def bn_scale_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """s_c = |γ_c| for every BatchNorm layer (scores of output channels)."""
    return {name: m.weight.detach().abs().cpu()
            for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def random_scores(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """s_c ~ U(0, 1) for every filter of every conv, reproducible under `seed`."""
    g = torch.Generator().manual_seed(seed)
    return {name: torch.rand(m.out_channels, generator=g)
            for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@torch.no_grad()
def activation_scores(model: nn.Module, calib: ImageSet, batches: int = 4,
                      batch_size: int = 128) -> dict[str, torch.Tensor]:
    """s_c = mean |x_c| of each input channel c of every Conv2d / Linear, over `batches` batches of
    `calib` and all pixels (scores of input channels: the activations the layer reads).

    The inputs follow a ReLU, so this is also the mean activation of the channel.
    """
    if calib is None or len(calib) == 0:
        raise ValueError("activation-based pruning needs calibration images (calib=an ImageSet)")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name):
        def hook(module, inputs, output):
            x = inputs[0].abs()
            per_channel = x.sum(dim=(0, 2, 3)) if x.ndim == 4 else x.sum(dim=0)
            sums[name] = sums.get(name, 0) + per_channel.double().cpu()
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return hook

    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    hooks = [m.register_forward_hook(record(n)) for n, m in layers.items()]
    device = next(model.parameters()).device
    try:
        with eval_mode(model):
            for start in range(0, min(len(calib), batches * batch_size), batch_size):
                model(to_float(calib.images[start:start + batch_size].to(device)))
    finally:
        for h in hooks:
            h.remove()
    return {n: (sums[n] / counts[n]).float() for n in sums}


def layer_scores(model: nn.Module, criterion: str, calib: ImageSet | None = None,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """The criterion's per-channel scores of each layer (see the module docstring)."""
    if criterion == "l1":
        return l1_scores(model)
    if criterion == "bn_scale":
        return bn_scale_scores(model)
    if criterion == "activation":
        return activation_scores(model, calib)
    if criterion == "random":
        return random_scores(model, seed)
    raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")


def scored_slices(criterion: str) -> tuple:
    """Activation scores describe the channels a layer reads; the others those it writes."""
    return READS if criterion == "activation" else WRITES


# --- from layer scores to group scores ----------------------------------------------------------------

class LayerScoreImportance(tp.importance.Importance):
    """A group's channel scores: the mean over its scored layers of their per-channel scores,

        s_c = (1 / |L|) Σ_{l ∈ L} s_{l,c},

    divided by the group's mean score when `normalize`, so global pruning compares each group's
    channels with the rest of that group (Torch-Pruning's default), not raw magnitudes across layers.
    """

    def __init__(self, model: nn.Module, scores: dict[str, torch.Tensor], slices: tuple,
                 normalize: bool = True):
        self.scores = {m: scores[n] for n, m in model.named_modules() if n in scores}
        self.slices = slices
        self.normalize = normalize

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total = torch.zeros(len(group[0].idxs))
        layers = 0
        for item in group:
            layer, handler = item.dep.target.module, item.dep.handler
            if layer in self.scores and handler in self.slices:
                # idxs index this layer's channels; root_idxs the same channels in the group's numbering
                idxs = [int(i) for i in item.idxs]
                total[item.root_idxs] += self.scores[layer][idxs]
                layers += 1
        if layers == 0:
            return None
        mean = total / layers
        return mean / mean.mean().clamp_min(1e-12) if self.normalize else mean


def importance(model: nn.Module, criterion: str, calib: ImageSet | None = None, seed: int = 0,
               normalize: bool = True) -> LayerScoreImportance:
    scores = layer_scores(model, criterion, calib, seed)
    return LayerScoreImportance(model, scores, scored_slices(criterion), normalize)


def filter_scores(model: nn.Module, criterion: str = "l1", calib: ImageSet | None = None, seed: int = 0,
                  normalize: bool = False) -> dict[str, torch.Tensor]:
    """{conv layer name: the score of each of its output filters}, as the pruner ranks them.

    Layers of one group share their scores (the channels go together), so a residual stream's convs
    all show the group's mean. With `normalize`, each group's scores are divided by their mean: the
    numbers global pruning compares across layers. The lowest `ratio` of each layer's filters are the
    ones `prune_filters` removes (see also `filters_to_remove`).
    """
    model = strip(model)   # scoring and tracing hook the model: work on a private copy
    scorer = importance(model, criterion, calib, seed, normalize)
    names = {module: name for name, module in model.named_modules()}
    result = {}
    for group in pruning_groups(dependency_graph(model), model):
        group_scores = scorer(group)
        for item in group:
            layer = item.dep.target.module
            if isinstance(layer, nn.Conv2d) and item.dep.handler == tp.prune_conv_out_channels:
                scores = torch.empty(layer.out_channels)
                scores[[int(i) for i in item.idxs]] = group_scores[item.root_idxs]
                result[names[layer]] = scores
    return result


# --- pruning -----------------------------------------------------------------------------------------

def smallest_group_width(model: nn.Module) -> int:
    model = copy_model(model)
    return min(len(group[0].idxs) for group in pruning_groups(dependency_graph(model), model))


def largest_ratio(model: nn.Module, round_to: int | None = None) -> float:
    """The largest ratio that leaves every group at least one channel (at least `round_to`)."""
    return 1.0 - (max(1, round_to or 1) + 1e-6) / smallest_group_width(model)


def check_ratio(model: nn.Module, ratio: float, round_to: int | None = None) -> None:
    """Torch-Pruning keeps int(n · (1 − ratio)) of a group's n channels, rounded down to a multiple
    of `round_to`; a group left with none would be skipped, so every group must keep some."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be a fraction in [0, 1), got {ratio}")
    if ratio > largest_ratio(model, round_to):
        n, keep = smallest_group_width(model), max(1, round_to or 1)
        raise ValueError(f"ratio {ratio:.2f} would leave fewer than {keep} of the {n} channels of the "
                         f"narrowest layer; choose a ratio up to {largest_ratio(model, round_to):.2f}")


def make_pruner(model: nn.Module, ratio: float, scorer: tp.importance.Importance, global_pruning: bool,
                round_to: int | None) -> tp.pruner.BasePruner:
    return tp.pruner.BasePruner(
        model, example_inputs=example_input(model), importance=scorer,
        pruning_ratio=ratio, global_pruning=global_pruning,
        ignored_layers=[classifier(model)], round_to=round_to)


def prune_by_scores(model: nn.Module, ratio: float, scores: dict[str, torch.Tensor], slices: tuple,
                    global_pruning: bool = False, round_to: int | None = None) -> nn.Module:
    """Prune `model` in place, ranking channels by precomputed per-layer `scores` (see layer_scores)."""
    with eval_mode(model):
        scorer = LayerScoreImportance(model, scores, slices)
        make_pruner(model, ratio, scorer, global_pruning, round_to).step()
    return model


def prune_filters(model: nn.Module, ratio: float, criterion: str = "l1", calib: ImageSet | None = None,
                  global_pruning: bool = False, seed: int = 0, round_to: int | None = None,
                  inplace: bool = False) -> nn.Module:
    """Remove the lowest-scoring `ratio` of the channels of every group; returns a smaller dense model.

    Local (default): each group keeps int(n · (1 − ratio)) of its n channels. Global: the lowest
    `ratio` of all channels of all groups go, ranked by scores divided by their group's mean, so
    layers end up with different widths. `round_to` keeps channel counts multiples of it (kernels
    often run faster on multiples of 8). The classifier's outputs and the image's 3 input channels
    stay. `calib` (ImageSet) is needed by the activation criterion; `seed` by random. Masks of
    unstructured pruning are baked in first. (Torch-Pruning skips, silently, a group that global
    ranking would empty completely; it keeps all its channels.)
    """
    check_ratio(model, ratio, round_to)
    model = strip(model, inplace)   # masks of unstructured pruning baked in: the pruner sees plain weights
    scores = layer_scores(model, criterion, calib, seed)
    return prune_by_scores(model, ratio, scores, scored_slices(criterion), global_pruning, round_to)


def filters_to_remove(model: nn.Module, ratio: float, criterion: str = "l1", calib: ImageSet | None = None,
                      global_pruning: bool = False, seed: int = 0,
                      round_to: int | None = None) -> dict[str, list[int]]:
    """{conv layer name: indices of the output filters prune_filters would remove}, without pruning."""
    check_ratio(model, ratio, round_to)
    model = strip(model)   # scoring and tracing hook the model: work on a private copy
    names = {module: name for name, module in model.named_modules()}
    plan = {name: [] for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    with eval_mode(model):
        scorer = importance(model, criterion, calib, seed)
        pruner = make_pruner(model, ratio, scorer, global_pruning, round_to)
        for group in pruner.step(interactive=True):   # yields the groups to prune; we only read them
            for dep, idxs in group:
                if isinstance(dep.target.module, nn.Conv2d) and dep.handler == tp.prune_conv_out_channels:
                    plan[names[dep.target.module]] = sorted(int(i) for i in idxs)
    return plan


def macs_fraction(model: nn.Module, reference: nn.Module) -> float:
    """Dense MACs of `model` / dense MACs of `reference`, per image."""
    return count_macs(model)[0] / count_macs(reference)[0]


def prune_to_macs(model: nn.Module, target_fraction: float, criterion: str = "l1",
                  calib: ImageSet | None = None, global_pruning: bool = False, seed: int = 0,
                  round_to: int | None = None, tolerance: float = 1e-3) -> nn.Module:
    """Prune with the smallest ratio whose model has dense MACs ≤ target_fraction × the original's.

    MACs fall as the ratio grows, so we bisect on the ratio, pruning a fresh copy of the original at
    each try (the scores are computed once). `macs_fraction(result, model)` gives the fraction
    reached. Raises ValueError when even the largest allowed ratio cannot reach the target.
    """
    if not 0.0 < target_fraction <= 1.0:
        raise ValueError(f"target_fraction must be in (0, 1], got {target_fraction}")
    model = strip(model)
    full_macs = count_macs(model)[0]
    if target_fraction == 1.0:
        return model
    scores, slices = layer_scores(model, criterion, calib, seed), scored_slices(criterion)

    def macs_at(ratio: float) -> tuple[int, nn.Module]:
        pruned = prune_by_scores(copy_model(model), ratio, scores, slices, global_pruning, round_to)
        return count_macs(pruned)[0], pruned

    low, high = 0.0, largest_ratio(model, round_to)
    macs, best = macs_at(high)
    if macs > target_fraction * full_macs:
        raise ValueError(f"cannot reach {target_fraction:.0%} of the MACs: even ratio {high:.2f} leaves "
                         f"{macs / full_macs:.0%}")
    while high - low > tolerance:
        middle = (low + high) / 2
        macs, candidate = macs_at(middle)
        if macs <= target_fraction * full_macs:
            high, best = middle, candidate
        else:
            low = middle
    return best


# --- judging a pruned model before fine-tuning -----------------------------------------------------------

def recalibrate_batchnorm(model: nn.Module, data: ImageSet, batches: int = 16, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on `data`, in place ("adaptive BN",
    Li et al. 2020, EagleEye). Removing filters changes what later layers see, so the statistics they
    were trained with no longer fit; with fresh ones, accuracy before fine-tuning says much more about
    which pruned candidate will fine-tune best. Weights are not touched. The estimate is the plain
    average over the batches (momentum None), then each layer's momentum is put back."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    device = next(model.parameters()).device
    with torch.no_grad():
        for i in range(min(batches, -(-len(data) // batch_size))):
            model(to_float(data.images[i * batch_size:(i + 1) * batch_size].to(device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return model
