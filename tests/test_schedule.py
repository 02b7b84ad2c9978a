import pytest

from compression.analysis import accuracy_vs_amount, sensitivity
from compression.models import create_model
from compression.prune import sparsity
from compression.schedule import (agp_amount, agp_curve, gradual_prune, iterative_amounts, iterative_prune,
                                  l1_penalty, RoundResult, sparse_training_loss_fn)
from compression.train import TrainConfig, run_to_end, train
from helpers import toy_set


def test_agp_formula():
    assert agp_amount(0, 100, 0.9) == 0.0
    assert agp_amount(100, 100, 0.9) == pytest.approx(0.9)
    assert agp_amount(50, 100, 0.8, 0.2) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5 ** 3)
    values = [s for _, s in agp_curve(0.9, 20)]
    steps = [b - a for a, b in zip(values, values[1:])]
    assert all(d >= 0 for d in steps) and steps[0] > steps[-1], "AGP prunes fast first, gently last"


def test_iterative_amounts_remove_the_same_share_each_round():
    s = iterative_amounts(0.9, 3)
    assert s[-1] == pytest.approx(0.9)
    survive = [1 - x for x in [0.0] + s]
    ratios = [b / a for a, b in zip(survive, survive[1:])]
    assert ratios == pytest.approx([ratios[0]] * 3)


def test_gradual_pruning_ends_exactly_at_target_and_passes_through_the_schedule():
    model = create_model("resnet8", width=0.25)
    seen = []
    for event in gradual_prune(model, 0.8, toy_set(256), epochs=2, batch_size=32, lr=0.05, augment=False,
                               prune_every=2, events_every=1):
        seen.append(sparsity(model))
    assert sparsity(model) == pytest.approx(0.8, abs=1e-4)
    assert 0.0 < min(seen[1:]) < 0.8, "sparsity must rise gradually, not jump"


def test_gradual_pruning_reaches_the_target_at_its_end_fraction():
    model = create_model("resnet8", width=0.25)
    by_step = {}
    for event in gradual_prune(model, 0.8, toy_set(256), epochs=2, batch_size=32, lr=0.05, augment=False,
                               prune_every=1, events_every=1, end_fraction=0.5):
        by_step[event.step] = sparsity(model)
    total = max(by_step)
    assert by_step[total // 2 - 1] < 0.8 - 1e-3
    assert by_step[total // 2] == pytest.approx(0.8, abs=1e-3)


def test_iterative_prune_yields_one_result_per_round():
    model = create_model("resnet8", width=0.25)
    rounds = [r for r in iterative_prune(model, 0.75, 3, toy_set(128), 0.5, eval_set=toy_set(64, seed=2))
              if isinstance(r, RoundResult)]
    assert [r.round for r in rounds] == [1, 2, 3]
    assert [r.sparsity for r in rounds] == pytest.approx(iterative_amounts(0.75, 3), abs=1e-3)


@pytest.mark.parametrize("on", ["weights", "bn"])
def test_sparse_training_shrinks_the_penalised_norm(on):
    data = toy_set(256)
    norms = {}
    for strength in (0.0, 1e-2 if on == "weights" else 1e-1):
        model = create_model("resnet8", width=0.25)
        cfg = TrainConfig(epochs=4, batch_size=32, lr=0.05, seed=0, augment=False, weight_decay=0.0)
        run_to_end(train(model, data, cfg, loss_fn=sparse_training_loss_fn(strength, on)))
        norms[strength] = l1_penalty(model, on).item()
    plain, penalised = norms.values()
    assert penalised < 0.9 * plain


def test_sensitivity_is_flat_at_zero_and_touches_one_layer_at_a_time():
    model = create_model("resnet8", width=0.25).eval()
    data = toy_set(100)
    curves = sensitivity(model, data, amounts=(0.0, 1.0), layers=["layer1.0.conv1", "fc"])
    base = accuracy_vs_amount(model, data, [0.0])[0][1]
    assert curves["fc"][0][1] == base and curves["layer1.0.conv1"][0][1] == base
    # pruning the classifier entirely leaves every logit equal to its bias: one class wins everywhere
    assert curves["fc"][1][1] == pytest.approx((data.labels == model.fc.bias.argmax()).float().mean().item())
