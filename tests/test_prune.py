import pytest
import torch

from compression.data import ImageSet
from compression.models import create_model
from compression.prune import (FIRST_AND_LAST, is_pruned, layer_sparsity, lowest_k_mask, masks_from_scores,
                               prunable_layers, prune, sparsity, strip)
from compression.weights import copy_model


@pytest.fixture
def model():
    return create_model("resnet8", width=0.5)


def zeros_in(model, exempt=()):
    return sum(int((m.weight == 0).sum()) for m in prunable_layers(model, exempt).values())


def total_in(model, exempt=()):
    return sum(m.weight.numel() for m in prunable_layers(model, exempt).values())


@pytest.mark.parametrize("method", ["magnitude", "random", "gradient"])
@pytest.mark.parametrize("amount", [0.0, 0.123, 0.5, 0.9, 0.99])
def test_global_pruning_meets_the_fraction_exactly(model, method, amount):
    data = tiny_data()
    pruned = prune(model, amount, method, "global", data=data)
    assert zeros_in(pruned) == round(amount * total_in(model))


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_layer_scope_prunes_each_layer_by_the_fraction(model, method):
    pruned = prune(model, 0.3, method, "layer")
    for name, module in prunable_layers(pruned).items():
        assert int((module.weight == 0).sum()) == round(0.3 * module.weight.numel()), name


def test_input_model_is_left_alone(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prune(model, 0.7)
    assert not is_pruned(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_magnitude_removes_the_smallest_weights(model):
    pruned = prune(model, 0.5, "magnitude")
    kept, removed = [], []
    for orig, new in zip(prunable_layers(model).values(), prunable_layers(pruned).values()):
        kept.append(orig.weight[new.weight != 0].abs())
        removed.append(orig.weight[new.weight == 0].abs())
    assert torch.cat(removed).max() <= torch.cat(kept).min()


def test_global_scope_prunes_layers_unevenly_layer_scope_evenly(model):
    with torch.no_grad():
        model.layer3[0].conv2.weight.mul_(100)   # one layer of large weights survives global pruning
    glob = layer_sparsity(prune(model, 0.5, scope="global"))
    assert glob["layer3.0.conv2"] < 0.05
    even = layer_sparsity(prune(model, 0.5, scope="layer"))
    assert even["layer3.0.conv2"] == pytest.approx(0.5, abs=0.01)


def test_exempt_layers_stay_dense(model):
    pruned = prune(model, 0.8, exempt=FIRST_AND_LAST)
    assert (pruned.conv1.weight != 0).all() and (pruned.fc.weight != 0).all()
    assert zeros_in(pruned) == round(0.8 * total_in(model, FIRST_AND_LAST))


def test_pruned_weights_stay_zero_through_training(model):
    pruned = prune(model, 0.6)
    mask = pruned.layer1[0].conv1.weight_mask.clone()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.5)
    x = torch.rand(8, 3, 32, 32)
    for _ in range(3):
        opt.zero_grad()
        pruned(x).square().mean().backward()
        opt.step()
    assert (pruned.layer1[0].conv1.weight[mask == 0] == 0).all()
    assert zeros_in(pruned) == round(0.6 * total_in(model))


def test_repruning_keeps_earlier_zeros_and_counts_them(model):
    first = prune(model, 0.5, "random", seed=1)
    second = prune(first, 0.7, "random", seed=2)
    for a, b in zip(prunable_layers(first).values(), prunable_layers(second).values()):
        assert (b.weight[a.weight == 0] == 0).all()
    assert zeros_in(second) == round(0.7 * total_in(model))


def test_strip_bakes_the_mask_in_and_keeps_the_function(model):
    pruned = prune(model, 0.75).eval()
    plain = strip(pruned).eval()
    assert not is_pruned(plain) and is_pruned(pruned)
    assert set(plain.state_dict()) == set(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(plain(x), pruned(x))
    assert sparsity(plain) == pytest.approx(0.75, abs=1e-4)


def test_copy_model_copies_a_pruned_model(model):
    pruned = prune(model, 0.5)
    clone = copy_model(pruned)
    assert zeros_in(clone) == zeros_in(pruned) and is_pruned(clone)


def test_gradient_saliency_prefers_weights_that_matter():
    """A branch multiplied by zero downstream has zero gradient, so its weights go first."""
    model = create_model("resnet8", width=0.5)
    with torch.no_grad():
        for block in (model.layer1[0], model.layer2[0], model.layer3[0]):
            block.bn2.weight.fill_(1.0)            # undo the zero init: every branch is alive...
        model.layer1[0].bn2.weight.zero_()        # ...except this one
    dead = ("layer1.0.conv1", "layer1.0.conv2")   # both feed only the silenced branch
    n_dead = sum(prunable_layers(model)[n].weight.numel() for n in dead)
    pruned = prune(model, n_dead / total_in(model), "gradient", data=tiny_data())
    for name, module in prunable_layers(pruned).items():
        zeros = int((module.weight == 0).sum())
        assert zeros == (module.weight.numel() if name in dead else 0), name


def test_lowest_k_mask_breaks_ties_exactly():
    scores = torch.tensor([0., 0, 0, 1, 1, 1, 2])
    for k in range(8):
        assert int((lowest_k_mask(scores, k) == 0).sum()) == k


def test_bad_arguments_are_clear(model):
    with pytest.raises(ValueError, match="fraction"):
        prune(model, 1.5)
    with pytest.raises(ValueError, match="method"):
        prune(model, 0.5, "biggest")
    with pytest.raises(ValueError, match="needs a few batches"):
        prune(model, 0.5, "gradient")
    with pytest.raises(ValueError, match="scope"):
        masks_from_scores({"a": torch.rand(3)}, 0.5, "network")


def tiny_data(n=64):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n,), generator=g))
