"""Weight sharing by k-means (Deep Compression, Han et al. 2016, section 3).

Each layer keeps only k distinct weight values, its *centroids*. The file then stores a k-entry
codebook and, per weight, a log2(k)-bit index into it (packed.py Huffman-codes those indices).

For each Conv2d / Linear layer, 1-D k-means over its nonzero weights w_1 … w_n finds centroids
c_1 … c_k and clusters C_1 … C_k (each weight in exactly one) that minimise the within-cluster sum
of squares

    J = Σ_i Σ_{w ∈ C_i} |w − c_i|².

Lloyd's algorithm alternates two steps, neither of which can increase J:
- assign each weight to its nearest centroid. In 1-D, with the centroids sorted, the border between
  c_j and c_{j+1} is their midpoint, so assignment is a binary search among the k − 1 midpoints;
- update each centroid to the mean of its cluster (an empty cluster keeps its centroid).

Initialisation is linear: c_j evenly spaced between the smallest and the largest weight. Han et al.
found it beats random and density-based initialisation because it keeps centroids out at the rare
large weights, which matter most. Pruned weights (zeros) are not clustered and stay zero.

Fine-tuning the centroids (section 3.3): every weight of cluster i *is* c_i, so

    ∂L/∂c_i = Σ_{w ∈ C_i} ∂L/∂w.

prepare_shared() makes the centroids the trainable tensor (a parametrization computes
weight = c[index], zeros kept), so the ordinary training loop does exactly that through autograd:

    shared = prepare_shared(model, k=16)
    run_to_end(train(shared, train_set, config))
    model = bake_shared(shared)          # a plain model again, ≤ 16 distinct values per layer
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .prune import prunable_layers, strip
from .weights import copy_model, effective_weight, plain_model, refresh_masked, trainable_weight

MIN_K, MAX_K = 2, 256
K_CHOICES = tuple(2 ** i for i in range(1, 9))   # MIN_K … MAX_K in powers of two: k values take log2 k bits


# --- 1-D k-means -------------------------------------------------------------------------------------
#
# In 1-D every cluster is a run of consecutive values once the values are sorted, so we sort each
# layer's weights once; then an iteration costs O(k log n) instead of O(n): the run boundaries are
# binary searches of the midpoints, and the cluster sums come from a prefix sum. (numpy: these are
# small single-layer arrays, where torch's thread pool costs more than it saves.)

def linear_init(values: np.ndarray, k: int) -> np.ndarray:
    """k centroids evenly spaced between min(values) and max(values)."""
    return np.linspace(values.min(), values.max(), k, dtype=np.float64)


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid for each value (`centroids` sorted ascending): the number of
    midpoints below the value (a value exactly on a midpoint goes to the lower centroid)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(midpoints, values, side="left")


def cluster_ends(sorted_values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cluster j is sorted_values[ends[j−1]:ends[j]] (the same clusters `assign` makes)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return np.append(np.searchsorted(sorted_values, midpoints, side="right"), len(sorted_values))


def update(prefix_sums: np.ndarray, ends: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Each centroid moves to the mean of its cluster; a centroid with no members stays put.
    `prefix_sums[i]` is the sum of the i smallest values."""
    starts = np.append(0, ends[:-1])
    counts = ends - starts
    sums = prefix_sums[ends] - prefix_sums[starts]
    return np.where(counts > 0, sums / np.maximum(counts, 1), centroids)


def kmeans_1d(values, k: int, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on the values (array or tensor, any shape) with linear initialisation:
    (centroids (k,) float64 sorted, index of each value's centroid, flattened). iterations=0 gives
    the initialisation's own clustering. Stops early once the centroids stop moving."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    sorted_values = np.sort(values)
    prefix_sums = np.append(0.0, np.cumsum(sorted_values))
    centroids = linear_init(sorted_values, k)
    for _ in range(iterations):
        new = np.sort(update(prefix_sums, cluster_ends(sorted_values, centroids), centroids))
        if np.array_equal(new, centroids):
            break
        centroids = new
    return centroids, assign(values, centroids)


def within_cluster_sse(values, centroids, assignments) -> float:
    """J = Σ_i Σ_{w ∈ C_i} |w − c_i|²"""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(((values - np.asarray(centroids, dtype=np.float64)[assignments]) ** 2).sum())


# --- whole models ------------------------------------------------------------------------------------

def _check_k(k: int) -> None:
    if not isinstance(k, int) or not MIN_K <= k <= MAX_K:
        raise ValueError(f"k (the number of shared values per layer) must be an integer in "
                         f"{MIN_K} … {MAX_K}, got {k!r}")


def shared_weight(weight: torch.Tensor, k: int, iterations: int = 20) -> torch.Tensor:
    """`weight` with each nonzero replaced by its k-means centroid; zeros stay zero."""
    w = weight.detach().cpu().float().numpy()
    nonzero = w != 0
    out = np.zeros_like(w)
    if nonzero.any():
        centroids, assignments = kmeans_1d(w[nonzero], k, iterations)
        out[nonzero] = centroids.astype(np.float32)[assignments]
    return torch.from_numpy(out).to(weight.dtype)


@torch.no_grad()
def cluster_weights(model: nn.Module, k: int, exempt: Iterable[str] = (), iterations: int = 20,
                    inplace: bool = False) -> nn.Module:
    """Share weights: every Conv2d/Linear layer (minus `exempt`) keeps ≤ k distinct nonzero values.

    Pruning masks, if any, stay attached; the shared values are computed from the effective
    (masked) weights, so pruned weights stay zero.
    """
    _check_k(k)
    if is_shared(model):
        raise ValueError("the model's centroids are being fine-tuned; bake_shared() it first")
    if not inplace:
        model = copy_model(model)
    for module in prunable_layers(model, exempt).values():
        trainable_weight(module).copy_(shared_weight(effective_weight(module), k, iterations))
        refresh_masked(module)
    return model


def codebooks(model: nn.Module, exempt: Iterable[str] = ()) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (centroids, assignments)}: the layer's distinct nonzero values, sorted, and for each
    weight the index of its value (−1 for a zero). A layer that was never shared has as many
    "centroids" as distinct weights."""
    out = {}
    for name, module in prunable_layers(model, exempt).items():
        if isinstance(_shared_parametrization(module), SharedWeight):
            sw = module.parametrizations.weight
            centroids, index, mask = sw.original.detach(), sw[0].index, sw[0].mask
            out[name] = (centroids.clone(), torch.where(mask, index, -1))
            continue
        weight = effective_weight(module)
        nonzero = weight != 0
        centroids, inverse = torch.unique(weight[nonzero], return_inverse=True)
        assignments = torch.full(weight.shape, -1, dtype=torch.long)
        assignments[nonzero] = inverse
        out[name] = (centroids, assignments)
    return out


# --- fine-tuning the centroids -----------------------------------------------------------------------

class SharedWeight(nn.Module):
    """Parametrization weight = c[index] where mask, else 0, whose trainable tensor is the codebook c.

    Autograd's backward of the gather c[index] adds up the gradients of all weights that share a
    centroid: ∂L/∂c_i = Σ_{w ∈ C_i} ∂L/∂w (pruned positions contribute nothing).
    """

    def __init__(self, index: torch.Tensor, mask: torch.Tensor, k: int):
        super().__init__()
        self.k = k
        self.register_buffer("index", index)
        self.register_buffer("mask", mask)

    def forward(self, centroids: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, centroids[self.index], torch.zeros((), dtype=centroids.dtype))

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        """The centroids that best reproduce `weight`: each cluster's mean (exact when its members
        are equal, as they are after clustering)."""
        index, values = self.index[self.mask], weight.detach()[self.mask].double()
        sums = torch.zeros(self.k, dtype=torch.float64).index_add_(0, index, values)
        counts = torch.bincount(index, minlength=self.k).clamp(min=1)
        return (sums / counts).to(weight.dtype)


def _shared_parametrization(module: nn.Module) -> nn.Module | None:
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight[0]
    return None


@torch.no_grad()
def prepare_shared(model: nn.Module, k: int | None = None, exempt: Iterable[str] = (),
                   iterations: int = 20) -> nn.Module:
    """A copy whose Conv2d/Linear layers train their centroids instead of their weights.

    With `k`, the weights are clustered first (cluster_weights); without, they must already have
    ≤ 256 distinct nonzero values per layer. Pruning masks are baked in; zeros stay zero in training.
    """
    model = cluster_weights(model, k, exempt, iterations) if k is not None else copy_model(model)
    model = strip(model, inplace=True)
    for name, module in prunable_layers(model, exempt).items():
        weight = module.weight.detach()
        mask = weight != 0
        centroids, inverse = torch.unique(weight[mask], return_inverse=True)
        if len(centroids) > MAX_K:
            raise ValueError(f"layer {name} has {len(centroids)} distinct values; share its weights "
                             f"first (pass k ≤ {MAX_K})")
        index = torch.zeros(weight.shape, dtype=torch.long)
        index[mask] = inverse
        parametrize.register_parametrization(module, "weight",
                                             SharedWeight(index, mask, max(1, len(centroids))), unsafe=True)
    return model


def is_shared(model: nn.Module) -> bool:
    """Does the model carry SharedWeight parametrizations (i.e. prepared, not yet baked)?"""
    return any(isinstance(_shared_parametrization(m), SharedWeight) for m in model.modules())


def bake_shared(model: nn.Module) -> nn.Module:
    """The inverse of prepare_shared: a plain model (no parametrizations) whose weights are the
    current c[index] (weights.plain_model, which builds it afresh)."""
    return plain_model(model, "shared model")
