import numpy as np
import pytest
import torch

from compression.data import ImageSet
from compression.models import create_model
from compression.packed import pack_model, unpack_model
from compression.prune import is_pruned, prunable_layers, prune
from compression.share import (bake_shared, cluster_weights, codebooks, is_shared, kmeans_1d,
                               prepare_shared, within_cluster_sse)
from compression.train import TrainConfig, run_to_end, train
from compression.weights import copy_model


# --- fixtures and helpers ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet8():
    """Full-width resnet8 (78k weights): layers big enough that k = 256 really merges values."""
    torch.manual_seed(0)
    return create_model("resnet8").eval()


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("resnet8", width=0.25).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def effective(module):
    if hasattr(module, "weight_orig"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def weights(model):
    return {name: effective(m) for name, m in prunable_layers(model).items()}


def distinct_nonzero(weight):
    return len(torch.unique(weight[weight != 0]))


def logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def centroids_of(model):
    return {name: m.parametrizations.weight.original for name, m in prunable_layers(model).items()
            if hasattr(m, "parametrizations")}


# --- k-means ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [2, 5, 16, 64, 256])
def test_at_most_k_values_per_layer_and_zeros_stay_zero(resnet8, k):
    pruned = prune(resnet8, 0.5)
    before = weights(pruned)
    shared = cluster_weights(pruned, k)
    for name, weight in weights(shared).items():
        assert distinct_nonzero(weight) <= k, name
        assert torch.equal(weight == 0, before[name] == 0), name
        if (before[name] != 0).sum() > 10 * k:          # plenty of weights: no collapsed clusters
            assert distinct_nonzero(weight) >= k // 2, name
    assert all(torch.equal(before[n], w) for n, w in weights(pruned).items()), "input was modified"


def test_pruning_masks_stay_attached(tiny):
    pruned = prune(tiny, 0.7)
    shared = cluster_weights(pruned, 4)
    assert is_pruned(shared)
    for name, m in prunable_layers(shared).items():
        assert torch.equal(m.weight_mask, prunable_layers(pruned)[name].weight_mask)
        assert distinct_nonzero(effective(m)) <= 4


def test_exempt_layers_are_untouched(tiny):
    shared = cluster_weights(tiny, 3, exempt=("conv1", "fc"))
    assert torch.equal(shared.conv1.weight, tiny.conv1.weight)
    assert torch.equal(shared.fc.weight, tiny.fc.weight)
    assert distinct_nonzero(shared.layer1[0].conv1.weight) <= 3


@pytest.mark.parametrize("k", [1, 257, 2.5])
def test_k_out_of_range_is_an_error(tiny, k):
    with pytest.raises(ValueError, match="k"):
        cluster_weights(tiny, k)


def test_kmeans_finds_separated_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 300) for c in (-1.0, 0.5, 3.0)])
    centroids, assignments = kmeans_1d(values, 3)
    assert np.allclose(centroids, [-1.0, 0.5, 3.0], atol=0.005)
    assert np.array_equal(assignments, np.repeat([0, 1, 2], 300))


def test_every_weight_goes_to_its_nearest_centroid(resnet8):
    values = resnet8.layer2[0].conv2.weight.detach().numpy().ravel()
    centroids, assignments = kmeans_1d(values, 16)
    distance = np.abs(values[:, None] - centroids[None, :])
    assert np.allclose(distance[np.arange(len(values)), assignments], distance.min(1))


def test_lloyd_improves_on_linear_initialisation(resnet8):
    values = resnet8.layer3[0].conv2.weight.detach().numpy().ravel()
    for k in (4, 16, 64):
        initial = within_cluster_sse(values, *kmeans_1d(values, k, iterations=0))
        final = within_cluster_sse(values, *kmeans_1d(values, k, iterations=20))
        assert final < initial


def test_objective_decreases_with_k(resnet8):
    values = resnet8.layer3[0].conv1.weight.detach().numpy().ravel()
    errors = [within_cluster_sse(values, *kmeans_1d(values, k)) for k in (2, 4, 8, 16, 32, 64, 256)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors


def test_codebooks_reconstruct_the_weights(tiny):
    shared = cluster_weights(prune(tiny, 0.5), 8)
    books = codebooks(shared)
    assert set(books) == set(prunable_layers(shared))
    for name, weight in weights(shared).items():
        centroids, assignments = books[name]
        assert len(centroids) <= 8 and torch.all(centroids[1:] > centroids[:-1])
        assert torch.equal(assignments == -1, weight == 0)
        rebuilt = torch.where(assignments >= 0, centroids[assignments.clamp(min=0)], 0.0)
        assert torch.equal(rebuilt, weight)


# --- fine-tuning the centroids ----------------------------------------------------------------------------

def test_prepared_model_computes_the_shared_weights(tiny, images):
    shared = cluster_weights(prune(tiny, 0.6), 8)
    prepared = prepare_shared(shared)
    assert is_shared(prepared) and not is_shared(shared)
    assert torch.equal(logits(prepared, images), logits(shared, images))
    trainable = {n for n, p in prepared.named_parameters() if "parametrizations" in n}
    assert len(trainable) == 10 and all(n.endswith("weight.original") for n in trainable)
    assert all(c.numel() <= 8 for c in centroids_of(prepared).values())


def test_centroid_gradient_is_the_sum_of_member_gradients(tiny, images):
    prepared = prepare_shared(prune(tiny, 0.5), k=6)
    plain = bake_shared(prepared)
    for model in (prepared, plain):
        model.eval()
        model(images).logsumexp(1).sum().backward()
    for name, m in prunable_layers(prepared).items():
        parametrization = m.parametrizations.weight[0]
        weight_grad = prunable_layers(plain)[name].weight.grad
        index, mask = parametrization.index, parametrization.mask
        expected = torch.zeros(parametrization.k).index_add_(0, index[mask], weight_grad[mask])
        assert torch.allclose(m.parametrizations.weight.original.grad, expected, rtol=1e-4, atol=1e-6), name


def test_training_moves_centroids_but_keeps_k_values_and_zeros(tiny):
    start = cluster_weights(prune(tiny, 0.6), 4)
    zeros_before = {n: w == 0 for n, w in weights(start).items()}
    prepared = prepare_shared(start)
    centroids_before = {n: c.detach().clone() for n, c in centroids_of(prepared).items()}
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (64,), generator=g))
    config = TrainConfig(epochs=2, batch_size=32, lr=0.05, augment=False, device="cpu",
                         eval_every_epoch=False)
    run_to_end(train(prepared, data, config))
    moved = [not torch.equal(centroids_before[n], c.detach()) for n, c in centroids_of(prepared).items()]
    assert any(moved)
    baked = bake_shared(prepared)
    assert not is_shared(baked) and list(baked.state_dict()) == list(create_model("resnet8", 0.25).state_dict())
    for name, weight in weights(baked).items():
        assert distinct_nonzero(weight) <= 4, name
        assert torch.equal(weight == 0, zeros_before[name]), name


def test_prepared_model_packs_like_its_baked_model(tiny, images):
    prepared = prepare_shared(tiny, k=8)
    restored, _ = unpack_model(pack_model(prepared))
    assert torch.equal(logits(restored, images), logits(bake_shared(prepared), images))
    assert torch.equal(logits(restored, images), logits(prepared, images))


def test_baking_a_copy_leaves_the_original_working(tiny, images):
    """torch's remove_parametrizations edits a class that deep copies share; baking must not."""
    prepared = prepare_shared(tiny, k=8)
    expected = logits(prepared, images)
    sibling = copy_model(prepared)
    bake_shared(sibling)
    pack_model(sibling)
    assert torch.equal(logits(prepared, images), expected)
    assert torch.equal(logits(sibling, images), expected)


def test_preparing_an_unshared_model_needs_k(resnet8):
    with pytest.raises(ValueError, match="distinct values"):
        prepare_shared(resnet8)
