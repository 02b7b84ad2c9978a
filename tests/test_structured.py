import pytest
import torch
from torch import nn
import torch_pruning as tp

from compression import structured as st
from compression.counts import count_macs
from compression.data import ImageSet
from compression.files import load_model, save_model
from compression.models import create_model
from compression.prune import is_pruned, prune
from compression.train import TrainConfig, run_to_end, train
from compression.weights import copy_model

# resnet8 at width 0.5: one block per stage, stages of 8, 16 and 32 channels.
WIDTHS = (8, 16, 32)
BLOCK_CONV1 = ("layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1")


# --- fixtures ---------------------------------------------------------------------------------------

def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Distinct random γ, β and running statistics: a fresh model's BNs (γ = 1, β = 0, and γ = 0 on
    each block's last BN) would hide mistakes, and distinct γ values identify every channel."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return randomize_batchnorm(create_model("resnet8", width=0.5)).eval()


@pytest.fixture
def images():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def calib():
    g = torch.Generator().manual_seed(2)
    return ImageSet(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (64,), generator=g), "calibration")


def modules(model):
    return dict(model.named_modules())


def removed_channels(original_bn: nn.BatchNorm2d, pruned_bn: nn.BatchNorm2d) -> list[int]:
    """Which channels of `original_bn` are gone, found by their (distinct) γ values."""
    kept = [int(torch.nonzero(original_bn.weight == g).item()) for g in pruned_bn.weight]
    return sorted(set(range(original_bn.num_features)) - set(kept))


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def expected_counts(s1, s2, s3):
    return {"conv1": s1, "layer1.0.conv1": s1, "layer1.0.conv2": s1,
            "layer2.0.conv1": s2, "layer2.0.conv2": s2, "layer2.0.shortcut.0": s2,
            "layer3.0.conv1": s3, "layer3.0.conv2": s3, "layer3.0.shortcut.0": s3, "fc": 10}


# --- shapes -----------------------------------------------------------------------------------------

# Torch-Pruning keeps int(n · (1 − ratio)) of n channels: 8 · 0.7 = 5.6 -> 5, 16 · 0.7 = 11.2 -> 11.
@pytest.mark.parametrize("ratio, kept", [(0.5, (4, 8, 16)), (0.3, (5, 11, 22)), (0.25, (6, 12, 24)),
                                         (0.1, (7, 14, 28)), (0.0, (8, 16, 32))])
def test_pruned_model_has_the_expected_channel_counts(model, images, ratio, kept):
    original = copy_model(model)
    pruned = st.prune_filters(model, ratio, "l1")
    assert st.channel_counts(pruned) == expected_counts(*kept)
    assert pruned.conv1.in_channels == 3 and pruned.fc.in_features == kept[2]
    assert pruned(images).shape == (4, 10)
    assert (pruned.arch, pruned.width) == ("resnet8", 0.5)
    assert st.channel_counts(model) == expected_counts(*WIDTHS)      # the input is untouched
    assert same_weights(model, original)


def test_channel_groups_follow_the_residual_streams(model):
    groups = [set(g) for g in st.channel_groups(model)]
    assert {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2"} in groups
    assert {"layer2.0.shortcut.0", "layer2.0.shortcut.1", "layer2.0.conv2", "layer2.0.bn2"} in groups
    assert {"layer1.0.conv1", "layer1.0.bn1"} in groups
    assert len(groups) == 6 and not any("fc" in g for g in groups)


def test_inplace_prunes_the_given_model(model):
    pruned = st.prune_filters(model, 0.5, inplace=True)
    assert pruned is model and model.conv1.out_channels == 4


def test_bad_ratios_and_criteria_are_refused(model, calib):
    for ratio in (-0.1, 1.0):
        with pytest.raises(ValueError, match="ratio"):
            st.prune_filters(model, ratio)
    with pytest.raises(ValueError, match="narrowest"):
        st.prune_filters(model, 0.9)              # int(8 · 0.1) = 0 channels left
    with pytest.raises(ValueError, match="narrowest"):
        st.prune_filters(model, 0.5, round_to=8)  # 4 channels, rounded down to a multiple of 8: 0
    with pytest.raises(ValueError, match="criterion"):
        st.prune_filters(model, 0.5, "taylor")
    with pytest.raises(ValueError, match="calibration"):
        st.prune_filters(model, 0.5, "activation")


# --- the pruned model computes what the masked original computes ---------------------------------------

def zero_group(graph: tp.DependencyGraph, bn: nn.BatchNorm2d, channels: list[int]) -> None:
    """Zero `channels` of `bn` in every layer of its dependency group: the filters of the convs that
    write them, γ and β of the BNs, and the input channels of the layers that read them."""
    group = graph.get_pruning_group(bn, tp.prune_batchnorm_out_channels, idxs=channels)
    with torch.no_grad():
        for dep, idxs in group:
            layer, handler = dep.target.module, dep.handler
            if handler == tp.prune_conv_out_channels:
                layer.weight[idxs] = 0
            elif handler == tp.prune_batchnorm_out_channels:
                layer.weight[idxs] = 0
                layer.bias[idxs] = 0
            elif handler in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
                layer.weight[:, idxs] = 0


@pytest.mark.parametrize("criterion, global_pruning", [("l1", False), ("bn_scale", False), ("random", False),
                                                        ("activation", False), ("l1", True), ("bn_scale", True)])
def test_matches_the_masked_model_where_it_should(model, images, calib, criterion, global_pruning):
    pruned = st.prune_filters(model, 0.5, criterion, calib, global_pruning=global_pruning).eval()
    masked = copy_model(model).eval()
    graph = tp.DependencyGraph().build_dependency(masked, example_inputs=torch.zeros(1, 3, 32, 32))
    originals, after, targets = modules(model), modules(pruned), modules(masked)
    removed_in_all = 0
    for name, bn in originals.items():
        if isinstance(bn, nn.BatchNorm2d):
            removed = removed_channels(bn, after[name])
            removed_in_all += len(removed)
            if removed:
                zero_group(graph, targets[name], removed)
    assert removed_in_all > 0
    with torch.no_grad():
        assert torch.allclose(pruned(images), masked(images), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(model(images), masked(images), atol=1e-3)   # zeroing did change it


def test_a_residual_stream_loses_the_same_channels_everywhere(model):
    pruned = modules(st.prune_filters(model, 0.5, "l1"))
    originals = modules(model)
    stream = ["layer2.0.shortcut.1", "layer2.0.bn2"]
    removed = [removed_channels(originals[n], pruned[n]) for n in stream]
    assert removed[0] == removed[1] and len(removed[0]) == 8


def test_global_pruning_removes_the_ratio_of_all_channels(model):
    pruned = st.prune_filters(model, 0.5, "l1", global_pruning=True)
    counts = st.channel_counts(pruned)
    group_widths = [counts[n] for n in ("conv1", "layer2.0.conv2", "layer3.0.conv2") + BLOCK_CONV1]
    assert sum(group_widths) == sum(WIDTHS)          # half of the 2 · (8 + 16 + 32) channels
    assert len({w / n for w, n in zip(group_widths, WIDTHS * 2)}) > 1   # layers keep different fractions


# --- each criterion removes the channels it should ----------------------------------------------------

def chosen_channels(width: int, seed: int) -> list[int]:
    """A quarter of the channels, picked at random: the ones we make unimportant."""
    g = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(width, generator=g)[:width // 4].tolist())


def removed_by(model, pruned, bn_names):
    return [removed_channels(modules(model)[n], modules(pruned)[n]) for n in bn_names]


def test_bn_scale_removes_the_channels_with_tiny_gamma(model):
    targets = {"layer1.0.bn1": 8, "layer2.0.bn1": 16, "layer3.0.bn1": 32,
               ("layer2.0.bn2", "layer2.0.shortcut.1"): 16}   # a residual stream: tiny in all its BNs
    chosen = {}
    with torch.no_grad():
        for i, (names, width) in enumerate(targets.items()):
            chosen[names] = chosen_channels(width, seed=i)
            for name in (names if isinstance(names, tuple) else (names,)):
                modules(model)[name].weight[chosen[names]] = 1e-3 * (1 + torch.rand(width // 4))
    pruned = st.prune_filters(model, 0.25, "bn_scale")
    for names, channels in chosen.items():
        for name in (names if isinstance(names, tuple) else (names,)):
            assert removed_by(model, pruned, [name])[0] == channels, name


def test_l1_removes_the_zeroed_filters(model):
    targets = {"layer1.0.conv1": 8, "layer2.0.conv1": 16, "layer3.0.conv1": 32,
               ("conv1", "layer1.0.conv2"): 8}               # the stem's stream: zero in both writers
    chosen = {}
    with torch.no_grad():
        for i, (names, width) in enumerate(targets.items()):
            chosen[names] = chosen_channels(width, seed=10 + i)
            for name in (names if isinstance(names, tuple) else (names,)):
                modules(model)[name].weight[chosen[names]] = 0
    plan = st.filters_to_remove(model, 0.25, "l1")
    pruned = st.prune_filters(model, 0.25, "l1")
    for names, channels in chosen.items():
        for name in (names if isinstance(names, tuple) else (names,)):
            assert plan[name] == channels, name
            assert removed_by(model, pruned, [name.replace("conv", "bn")])[0] == channels, name


def test_activation_removes_dead_channels(model, calib):
    """Channels that are zero after the ReLU for every image (γ = 0, β < 0) carry nothing."""
    chosen = {"layer1.0.bn1": chosen_channels(8, 20), "layer2.0.bn1": chosen_channels(16, 21),
              "layer3.0.bn2": chosen_channels(32, 22)}
    with torch.no_grad():
        for name, channels in chosen.items():
            modules(model)[name].weight[channels] = 0
            modules(model)[name].bias[channels] = -5
        modules(model)["layer3.0.shortcut.1"].weight[chosen["layer3.0.bn2"]] = 0   # the same stream
        modules(model)["layer3.0.shortcut.1"].bias[chosen["layer3.0.bn2"]] = -5
    pruned = st.prune_filters(model, 0.25, "activation", calib)
    for name, channels in chosen.items():
        assert removed_by(model, pruned, [name])[0] == channels, name


def test_random_is_reproducible_under_its_seed(model):
    a = st.filters_to_remove(model, 0.5, "random", seed=0)
    assert a == st.filters_to_remove(model, 0.5, "random", seed=0)
    assert a != st.filters_to_remove(model, 0.5, "random", seed=1)
    assert st.channel_counts(st.prune_filters(model, 0.5, "random", seed=1)) == expected_counts(4, 8, 16)


@pytest.mark.parametrize("criterion", st.CRITERIA)
def test_filter_scores_rank_the_filters_the_pruner_removes(model, calib, criterion):
    scores = st.filter_scores(model, criterion, calib)
    plan = st.filters_to_remove(model, 0.5, criterion, calib)
    pruned = st.prune_filters(model, 0.5, criterion, calib)
    convs = {n: m for n, m in modules(model).items() if isinstance(m, nn.Conv2d)}
    assert set(scores) == set(convs) == set(plan)
    for name, conv in convs.items():
        assert scores[name].shape == (conv.out_channels,)
        assert plan[name] == sorted(scores[name].argsort()[:conv.out_channels // 2].tolist()), name
        bn = name.replace("conv", "bn").replace("shortcut.0", "shortcut.1")
        assert removed_by(model, pruned, [bn])[0] == plan[name], name


def test_filter_scores_are_the_criterion_formulas(model):
    l1 = st.filter_scores(model, "l1")
    m = modules(model)
    filter_l1 = lambda name: m[name].weight.abs().sum(dim=(1, 2, 3))
    assert torch.allclose(l1["layer2.0.conv1"], filter_l1("layer2.0.conv1"))
    stem = (filter_l1("conv1") + filter_l1("layer1.0.conv2")) / 2     # mean over the stream's writers
    assert torch.allclose(l1["conv1"], stem) and torch.allclose(l1["layer1.0.conv2"], stem)
    gamma = st.filter_scores(model, "bn_scale")
    assert torch.allclose(gamma["layer3.0.conv1"], m["layer3.0.bn1"].weight.abs())
    normalized = st.filter_scores(model, "bn_scale", normalize=True)
    assert normalized["layer3.0.conv1"].mean().item() == pytest.approx(1.0)


def test_scoring_and_planning_leave_the_model_alone(model, calib):
    original = copy_model(model)
    model.train()
    st.filter_scores(model, "activation", calib)
    st.filters_to_remove(model, 0.5, "l1")
    assert model.training and same_weights(model, original)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), original.buffers()))


# --- MAC target -------------------------------------------------------------------------------------

def test_prune_to_macs_reaches_the_target(model):
    original_macs = count_macs(model)[0]
    pruned = st.prune_to_macs(model, 0.5, "l1")
    fraction = st.macs_fraction(pruned, model)
    assert count_macs(pruned)[0] <= 0.5 * original_macs
    assert fraction == count_macs(pruned)[0] / original_macs
    assert fraction > 0.4                                    # the smallest ratio that gets there
    assert count_macs(model)[0] == original_macs


def test_prune_to_macs_with_global_ranking_and_activations(model, calib):
    pruned = st.prune_to_macs(model, 0.6, "activation", calib, global_pruning=True)
    assert 0.5 < st.macs_fraction(pruned, model) <= 0.6


def test_prune_to_macs_refuses_an_unreachable_target(model):
    with pytest.raises(ValueError, match="cannot reach"):
        st.prune_to_macs(model, 0.001)
    assert st.macs_fraction(st.prune_to_macs(model, 1.0), model) == 1.0


# --- the pruned model works with the rest of the library ---------------------------------------------------

def test_save_load_round_trip_reproduces_logits_exactly(model, images, tmp_path):
    pruned = st.prune_filters(model, 0.3, "l1", global_pruning=True).eval()
    loaded, meta = load_model(save_model(pruned, tmp_path / "pruned.safetensors"))
    assert meta["arch"] == "resnet8" and st.channel_counts(loaded) == st.channel_counts(pruned)
    with torch.no_grad():
        assert torch.equal(loaded(images), pruned(images))


def test_pruned_model_copies_fine_tunes_and_counts(model, images):
    pruned = st.prune_filters(model, 0.5, "bn_scale")
    copy = copy_model(pruned)
    with torch.no_grad():
        assert torch.equal(copy(images), pruned(images))
    assert count_macs(pruned)[0] < 0.35 * count_macs(model)[0]
    g = torch.Generator().manual_seed(3)
    data = ImageSet(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (64,), generator=g))
    config = TrainConfig(epochs=1, batch_size=32, lr=0.01, augment=False, device="cpu")
    done = run_to_end(train(copy, data, config))
    assert done.step == 2 and torch.isfinite(torch.tensor(done.loss))
    assert st.channel_counts(copy) == st.channel_counts(pruned)
    assert not torch.equal(copy.conv1.weight, pruned.conv1.weight)


def test_masked_model_is_stripped_before_filter_pruning(model, images):
    masked = prune(model, 0.3, "magnitude")
    plan = st.filters_to_remove(masked, 0.5, "l1")
    assert set(st.filter_scores(masked, "l1")) == set(plan)
    pruned = st.prune_filters(masked, 0.5, "l1")
    assert is_pruned(masked) and not is_pruned(pruned)
    assert st.channel_counts(pruned) == expected_counts(4, 8, 16)
    assert pruned(images).shape == (4, 10)


def test_read_only_functions_never_hook_the_callers_model(model, calib, monkeypatch):
    """Tracing and scoring hook modules for a moment; on a model another thread is copying, the copy
    would keep the hooks for good (and later fail), so they must hook a private copy."""
    from compression.counts import layer_table

    hooked = []
    original = nn.Module.register_forward_hook
    monkeypatch.setattr(nn.Module, "register_forward_hook",
                        lambda self, *a, **k: hooked.append(self) or original(self, *a, **k))
    ours = set(model.modules())
    st.filters_to_remove(model, 0.5, "activation", calib)
    st.filter_scores(model, "l1")
    st.channel_groups(model)
    st.largest_ratio(model)
    layer_table(model)
    assert hooked, "the functions above do hook modules (of their copies)"
    assert not ours.intersection(hooked)


# --- adaptive BN --------------------------------------------------------------------------------------

def test_recalibrated_batchnorm_holds_the_statistics_of_its_inputs(model, calib):
    """After recalibration the stem BN's running mean and (unbiased) variance are exactly those of the
    stem conv's outputs over the data; weights are untouched; momentum and mode are restored."""
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    with torch.no_grad():   # the model normalises its [0, 1] input itself, then the stem conv
        stem = model.conv1((calib.images.float() / 255 - model.mean) / model.std)
    st.recalibrate_batchnorm(model, calib, batches=2, batch_size=32)   # 2 × 32 = all 64 images
    torch.testing.assert_close(model.bn1.running_mean, stem.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    # momentum None averages the per-batch unbiased variances of the two equal halves
    halves = stem.split(32)
    var = torch.stack([h.var(dim=(0, 2, 3), unbiased=True) for h in halves]).mean(0)
    torch.testing.assert_close(model.bn1.running_var, var, rtol=1e-4, atol=1e-5)
    assert model.bn1.momentum == 0.1 and not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
