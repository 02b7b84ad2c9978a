"""Automatic per-layer pruning and mixed precision under a budget (compression/allocate.py,
auto_prune.py, auto_quant.py), on tiny models so that each sensitivity pass takes seconds."""
import itertools
import random

import pytest
import torch

from compression.allocate import Curve, allocate_within, greedy_allocate, interpolate, lower_hull
from compression.auto_prune import (AutoPruneConfig, allocate_sparsity, auto_prune, measure_sensitivity,
                                    packed_size, predict, uniform_counts)
from compression.auto_quant import AutoQuantConfig, auto_quantize, quantize_layers
from compression.models import create_model
from compression.packed import pack_model, unpack_model
from compression.packed_sizes import packed_breakdown
from compression.prune import prunable_layers, prune, sparsity, strip
from compression.quantize import quantize_weights
from compression.train import evaluate
from helpers import toy_set

LEVELS = (0.0, 0.3, 0.5, 0.7, 0.9)


def tiny_model() -> torch.nn.Module:
    model = create_model("resnet8", width=0.25).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():          # BN statistics away from the identity, so layers differ in sensitivity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.fixture(scope="module")
def pruned_70():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, allocation = auto_prune(model, AutoPruneConfig(target_sparsity=0.7, levels=LEVELS, calib_images=64,
                                                           choose="predicted"), toy_set(64))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())   # input untouched
    return model, pruned, allocation


# --- the allocator -----------------------------------------------------------------------------------

def convex_curves(seed: int, layers: int = 3, options: int = 5) -> dict[str, Curve]:
    rng = random.Random(seed)
    curves = {}
    for i in range(layers):
        steps = sorted(rng.uniform(1, 30) for _ in range(options - 1))[::-1]   # decreasing savings …
        prices = sorted(rng.uniform(0.01, 1) for _ in range(options - 1))      # … at increasing prices
        resource, loss = [100.0], [0.0]
        for saved, price in zip(steps, prices):
            resource.append(resource[-1] - saved)
            loss.append(loss[-1] + saved * price)
        curves[f"l{i}"] = Curve(resource, loss)
    return curves


@pytest.mark.parametrize("seed", range(5))
def test_greedy_on_convex_curves_is_the_exhaustive_optimum_at_its_vertices(seed):
    curves = convex_curves(seed)
    names = list(curves)
    for budget in (300.0, 250.0, 200.0, 150.0):
        at = {n: ch.option for n, ch in greedy_allocate(curves, budget).items()}
        spent = sum(curves[n].resource[j] for n, j in at.items())
        loss = sum(curves[n].loss[j] for n, j in at.items())
        assert spent <= budget
        # no choice that spends at most what the greedy one spends is predicted better (the Lagrangian optimum)
        for combo in itertools.product(*(range(len(curves[n].resource)) for n in names)):
            if sum(curves[n].resource[j] for n, j in zip(names, combo)) <= spent:
                assert sum(curves[n].loss[j] for n, j in zip(names, combo)) >= loss - 1e-9


def test_exact_allocation_spends_the_budget_exactly_and_interpolates_the_last_step():
    curves = convex_curves(7)
    for budget in (299.0, 213.0, 170.5):
        choice = greedy_allocate(curves, budget, exact=True)
        assert sum(ch.resource for ch in choice.values()) == pytest.approx(budget, abs=1e-9)
        assert sum(ch.next_option is not None for ch in choice.values()) <= 1   # one partial step at most


def test_lower_hull_skips_a_point_above_it_and_spend_leftover_fills_the_bound():
    c = Curve([10.0, 8.0, 6.0, 4.0], [0.0, 5.0, 6.0, 10.0])     # option 1 lies above the hull
    assert lower_hull(c) == [0, 2, 3]
    assert interpolate(c, 9.0) == pytest.approx(2.5)
    assert allocate_within({"a": c}, 8.0) == {"a": 1}          # greedy jumps to 6; 8 still fits but costs more
    d = Curve([10.0, 6.0], [0.0, 1.0])
    e = Curve([10.0, 9.0, 5.0], [0.0, 0.1, 5.0])
    assert allocate_within({"d": d, "e": e}, 15.5) == {"d": 1, "e": 1}
    with pytest.raises(ValueError, match="below the least"):
        greedy_allocate({"d": d, "e": e}, 10.0)
    with pytest.raises(ValueError, match="strictly decrease"):
        Curve([1.0, 1.0], [0.0, 0.0])


# --- automatic pruning -------------------------------------------------------------------------------

def test_auto_prune_meets_the_target_sparsity_exactly(pruned_70):
    model, pruned, allocation = pruned_70
    n = sum(m.weight.numel() for m in prunable_layers(model).values())
    assert sparsity(pruned) == round(0.7 * n) / n
    assert allocation.sparsity == round(0.7 * n) / n
    for name, layer in prunable_layers(strip(pruned)).items():
        assert int((layer.weight == 0).sum()) == allocation.zeros[name]
    assert any(hasattr(m, "weight_mask") for m in pruned.modules())          # masks: fine-tuning keeps zeros
    assert len({round(z / allocation.params[n], 2) for n, z in allocation.zeros.items()}) > 1   # not uniform


def test_auto_is_never_predicted_worse_than_uniform_and_uniform_is_exact(pruned_70):
    _, _, allocation = pruned_70
    curves = allocation.curves
    n = sum(allocation.params.values())
    assert allocation.predicted <= allocation.uniform_predicted
    for target in (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 0.9):
        zeros = allocate_sparsity(curves, target)
        uniform = uniform_counts(allocation.params, round(target * n))
        assert sum(zeros.values()) == sum(uniform.values()) == round(target * n)
        assert predict(curves, zeros) <= predict(curves, uniform) + 1e-9
    rows = allocation.rows()                               # what a bar chart draws
    assert [r["layer"] for r in rows] == list(allocation.params)
    for r in rows:
        assert abs(r["uniform"] - 0.7) < 1 / r["params"]    # Hamilton rounding: within one weight of 70 %
        assert r["auto"] == allocation.zeros[r["layer"]] / r["params"]


def test_auto_prune_under_a_packed_size_fits_it():
    model = tiny_model()
    budget = int(0.6 * len(pack_model(model)))
    pruned, allocation = auto_prune(model, AutoPruneConfig(target_bytes=budget, levels=LEVELS, calib_images=32,
                                                           choose="predicted"), toy_set(32))
    assert len(pack_model(pruned)) == packed_size(pruned) <= budget
    if allocation.uniform_predicted is not None:
        assert allocation.predicted <= allocation.uniform_predicted
    with pytest.raises(ValueError, match="cannot be reached"):
        auto_prune(model, AutoPruneConfig(target_bytes=2000, levels=LEVELS, calib_images=32), toy_set(32))


def test_auto_prune_keeps_the_zeros_a_model_already_has():
    model = prune(tiny_model(), 0.3, scope="layer")
    before = {n: int((m.weight == 0).sum()) for n, m in prunable_layers(strip(model)).items()}
    pruned, allocation = auto_prune(model, AutoPruneConfig(target_sparsity=0.6, levels=LEVELS, calib_images=32),
                                    toy_set(32))
    after = {n: m.weight for n, m in prunable_layers(strip(pruned)).items()}
    old = {n: m.weight for n, m in prunable_layers(strip(model)).items()}
    for name, weight in after.items():
        assert int((weight == 0).sum()) >= before[name]
        assert bool(((old[name] == 0) <= (weight == 0)).all())          # every old zero is still zero
    with pytest.raises(ValueError, match="already has"):
        allocate_sparsity(allocation.curves, 0.1)


def test_the_measured_choice_is_never_measured_worse_than_uniform_or_global():
    model, calib = tiny_model(), toy_set(64)
    config = AutoPruneConfig(target_sparsity=0.7, levels=LEVELS, calib_images=64)       # choose="measured"
    pruned, allocation = auto_prune(model, config, calib)
    n = sum(allocation.params.values())
    assert sparsity(pruned) == round(0.7 * n) / n
    loss = evaluate(pruned, calib).loss
    assert loss == pytest.approx(allocation.measured[allocation.rule], abs=1e-6)
    assert loss <= min(allocation.measured.values()) + 1e-6
    assert {"uniform", "global", "blend 0.5"} <= set(allocation.measured)
    for rival in (prune(model, 0.7, scope="layer"), prune(model, 0.7, scope="global")):
        assert loss <= evaluate(rival, calib).loss + 1e-3      # prune()'s own rounding may differ by a weight
    budget = int(0.6 * len(pack_model(model)))
    small, by_size = auto_prune(model, AutoPruneConfig(target_bytes=budget, levels=LEVELS, calib_images=64), calib)
    assert len(pack_model(small)) <= budget


def test_a_measured_sensitivity_serves_other_targets_but_not_other_settings():
    model = tiny_model()
    config = AutoPruneConfig(target_sparsity=0.5, levels=LEVELS, calib_images=32)
    sensitivity = measure_sensitivity(model, config, toy_set(32))
    n = sum(c.params for c in sensitivity.curves.values())
    for target in (0.5, 0.8):
        pruned, allocation = auto_prune(model, AutoPruneConfig(target_sparsity=target, levels=LEVELS, calib_images=32),
                                        toy_set(32), sensitivity=sensitivity)
        assert sparsity(pruned) == round(target * n) / n
        assert allocation.curves is sensitivity.curves
    with pytest.raises(ValueError, match="other settings"):
        auto_prune(model, AutoPruneConfig(target_sparsity=0.5, calib_images=32), toy_set(32), sensitivity=sensitivity)


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one budget"),
    ({"target_sparsity": 0.5, "target_bytes": 1000}, "exactly one budget"),
    ({"target_sparsity": 0.99}, "highest measured"),
    ({"target_sparsity": 0.5, "levels": (0.1, 0.5)}, "levels"),
    ({"target_sparsity": 0.5, "method": "largest"}, "method"),
    ({"target_sparsity": 0.5, "choose": "best"}, "choose"),
    ({"target_bytes": -5}, "positive"),
])
def test_auto_prune_config_is_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AutoPruneConfig(**kwargs)


# --- automatic mixed precision -----------------------------------------------------------------------

def test_mixed_widths_are_stored_at_their_real_size():
    model = create_model("resnet8").eval()              # layer3.0.conv2: 36,864 weights, 64 channels
    bits = {name: 8 for name in prunable_layers(model)}
    bits["layer3.0.conv2"] = 3
    mixed = quantize_layers(model, bits)
    rows = {r["name"]: r for r in packed_breakdown(mixed)}
    three, eight = rows["layer3.0.conv2"], rows["layer3.0.conv1"]
    assert three["values"] == eight["values"] == "grid"
    assert 2.0 < 8 * three["total_bytes"] / three["params"] <= 3.2      # 7 levels: ≈ 3 bits a weight, not 8
    assert 8 * eight["total_bytes"] / eight["params"] <= 8.2
    data = pack_model(mixed)
    assert len(data) == sum(r["total_bytes"] for r in rows.values())
    back, _ = unpack_model(data)
    for name, layer in prunable_layers(back).items():                   # the widths survive bit for bit
        assert torch.equal(layer.weight, prunable_layers(mixed)[name].weight)
    assert len(torch.unique(prunable_layers(back)["layer3.0.conv2"].weight[0])) <= 7


@pytest.mark.parametrize("criterion", ["loss", "sqnr"])
def test_auto_quantize_fits_the_budget_and_is_never_predicted_worse_than_uniform(criterion):
    model = tiny_model()
    budget = packed_size(quantize_weights(model, 4))
    calib = toy_set(32) if criterion == "loss" else None
    quantized, allocation = auto_quantize(model, AutoQuantConfig(budget, criterion=criterion, calib_images=32), calib)
    assert len(pack_model(quantized)) == allocation.packed_bytes <= budget
    assert allocation.uniform_bits == 4                    # the widest uniform width that fits this budget
    assert allocation.predicted <= allocation.uniform_predicted
    assert set(allocation.bits.values()) <= set(range(2, 9))
    for name, layer in prunable_layers(quantized).items():  # each layer holds at most 2^b − 1 levels a channel
        levels = max(len(torch.unique(row)) for row in layer.weight.flatten(1))
        assert levels <= 2 ** allocation.bits[name] - 1


def test_auto_quantize_explains_a_budget_too_small_and_checks_its_config():
    model = tiny_model()
    with pytest.raises(ValueError, match="allow more bytes"):
        auto_quantize(model, AutoQuantConfig(3000, criterion="sqnr"))
    with pytest.raises(ValueError, match="from 2 to 8"):
        AutoQuantConfig(10_000, bits=(1, 4))
    with pytest.raises(ValueError, match="needs calibration"):
        auto_quantize(model, AutoQuantConfig(10_000))


# --- command line ------------------------------------------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from compression.cli import main
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_cli_prune_auto_and_quantize_auto(tmp_path, capsys):
    import json
    from compression.files import save_model

    path = save_model(tiny_model(), tmp_path / "tiny.safetensors")
    code, out, _ = run_cli(capsys, "prune", str(path), "--auto", "--amount", "0.5", "--sample", "--calib-images", "32",
                           "--json", "--out", str(tmp_path / "auto.cmpk"))
    result = json.loads(out)
    n = sum(r["params"] for r in result["allocation"]["layers"])
    assert code == 0 and result["sparsity"] == round(0.5 * n) / n
    assert result["settings"]["allocation"] == "auto" and (tmp_path / "auto.cmpk").is_file()
    budget_kib = packed_size(quantize_weights(tiny_model(), 4)) / 1024
    code, out, _ = run_cli(capsys, "quantize", str(path), "--auto", "--budget-kib", f"{budget_kib}", "--criterion",
                           "sqnr", "--sample", "--json")
    result = json.loads(out)
    assert code == 0 and result["bytes_packed"] == result["allocation"]["packed_bytes"] <= budget_kib * 1024
    code, _, err = run_cli(capsys, "quantize", str(path), "--auto", "--budget-kib", "1", "--criterion", "sqnr",
                           "--sample")
    assert code == 2 and "allow more bytes" in err


def test_jobs_give_the_auto_and_uniform_variants_side_by_side():
    from compression.jobs import auto_prune_variants, auto_quantize_variants
    from compression.variant import measure_variant

    parent = measure_variant(tiny_model(), "pretrained", name="tiny")
    calib, eval_set, events = toy_set(32), toy_set(40, seed=5), []
    variants, allocation = auto_prune_variants(parent, AutoPruneConfig(target_sparsity=0.6, levels=LEVELS,
                                                                       calib_images=32),
                                               calib, eval_set, lambda **kw: events.append(kw), lambda: False)
    auto, uniform = variants
    assert auto.parent == uniform.parent == parent.id
    assert auto.metrics.sparsity == pytest.approx(uniform.metrics.sparsity, abs=1e-3) == pytest.approx(0.6, abs=1e-3)
    assert auto.metrics.eval_accuracy is not None and len(allocation.rows()) == 10
    assert {"done": 10, "total": 10} in events
    budget = packed_size(quantize_weights(parent.model, 4))
    variants, bits = auto_quantize_variants(parent, AutoQuantConfig(budget, criterion="sqnr"), None, eval_set,
                                            lambda **kw: None, lambda: False)
    assert [v.settings["bits"] for v in variants] == ["auto", 4]
    assert all(v.metrics.bytes_packed <= budget for v in variants)
