import copy
import math

import pytest
import torch
from torch import nn

from compression import activations as A, qat as QAT, quantize as Q
from compression.data import ImageSet
from compression.models import create_model
from compression.prune import is_pruned, prune
from compression.train import TrainConfig, evaluate, run_to_end, train
from compression.views import layer_quant_error
from compression.weights import copy_model, plain_model

MODES = [(s, c) for s in (True, False) for c in (True, False)]   # (symmetric, per_channel)


def weights_with_channel_scales(scales=(0.01, 0.1, 1.0, 10.0), shape=(4, 3, 3)) -> torch.Tensor:
    w = torch.randn(len(scales), *shape)
    return w * torch.tensor(scales).view(-1, 1, 1, 1)


def tiny_images(n: int = 64, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    return ImageSet(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (n,), generator=g))


def tiny_model() -> nn.Module:
    return create_model("resnet8", width=0.25).eval()


# --- the grid ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric,per_channel", MODES)
def test_at_most_2_to_the_b_values_all_on_the_grid(bits, symmetric, per_channel):
    w = weights_with_channel_scales(shape=(16, 5, 5))
    w_hat = Q.fake_quantize(w, bits, symmetric, per_channel)
    grid = Q.quant_grid(w, bits, symmetric, per_channel)
    if per_channel:
        for c in range(len(w)):
            assert w_hat[c].unique().numel() <= 2 ** bits
            assert torch.isin(w_hat[c], grid[c]).all()
    else:
        assert w_hat.unique().numel() <= 2 ** bits
        assert torch.isin(w_hat, grid).all()
    levels = grid.shape[-1]
    assert levels == (2 if bits == 1 and symmetric else 2 ** bits - 1 if symmetric else 2 ** bits)


@pytest.mark.parametrize("bits", range(1, 9))
def test_symmetric_has_zero_point_zero_and_a_mirrored_grid(bits):
    w = torch.randn(8, 20) + 0.5          # deliberately lopsided
    lo, hi = Q.value_range(w)
    if bits > 1:
        _, zero_point = Q.scale_and_zero_point(lo, hi, bits, symmetric=True)
        assert (zero_point == 0).all()
    grid = Q.quant_grid(w, bits, symmetric=True)
    assert torch.equal(grid, -grid.flip(0))
    assert torch.equal(Q.fake_quantize(-w, bits, True), -Q.fake_quantize(w, bits, True))


def test_two_bit_symmetric_is_ternary_and_one_bit_is_binary_with_mean_magnitude():
    w = torch.randn(1000)
    assert set(Q.fake_quantize(w, 2, True).unique().tolist()) == {-w.abs().max().item(), 0.0, w.abs().max().item()}
    a = w.abs().mean()
    assert torch.allclose(Q.fake_quantize(w, 1, True), torch.sign(w) * a)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("symmetric,per_channel", MODES)
def test_zeros_stay_exactly_zero(bits, symmetric, per_channel):
    w = weights_with_channel_scales()
    w[w.abs() < w.abs().median()] = 0           # half the weights pruned
    w[1] = w[1].abs()                             # one channel all >= 0: the range must be stretched to 0
    w_hat = Q.fake_quantize(w, bits, symmetric, per_channel)
    assert (w_hat[w == 0] == 0).all()


@pytest.mark.parametrize("symmetric,per_channel", MODES)
def test_error_falls_as_bits_rise(symmetric, per_channel):
    # (from 2 bits: 1-bit symmetric uses a = mean|w| and can beat a minmax ternary grid)
    w = weights_with_channel_scales()
    errors = [(w - Q.fake_quantize(w, b, symmetric, per_channel)).pow(2).mean().item() for b in range(2, 9)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))


@pytest.mark.parametrize("symmetric", (True, False))
def test_per_channel_beats_per_tensor_when_channel_scales_differ(symmetric):
    w = weights_with_channel_scales()
    for bits in (2, 4, 8):
        per_tensor = (w - Q.fake_quantize(w, bits, symmetric, per_channel=False)).pow(2).mean()
        per_channel = (w - Q.fake_quantize(w, bits, symmetric, per_channel=True)).pow(2).mean()
        assert per_channel <= per_tensor
        # the small channels are where per-tensor fails: they round almost entirely to zero
        assert (w[0] - Q.fake_quantize(w, bits, symmetric, True)[0]).pow(2).mean() < \
               (w[0] - Q.fake_quantize(w, bits, symmetric, False)[0]).pow(2).mean()


def test_asymmetric_grid_contains_zero_and_spans_the_range():
    w = torch.rand(6, 10) + 1.0                   # all positive
    grid = Q.quant_grid(w, 4, symmetric=False)
    assert (grid == 0).any() and len(grid) == 16
    assert grid.max() >= w.max() - (grid[1] - grid[0])


def test_bad_bits_are_a_clear_error():
    with pytest.raises(ValueError, match="1 to 8"):
        Q.fake_quantize(torch.randn(3), 9)


# --- weights of a model ------------------------------------------------------------------------------

def test_quantize_weights_copies_and_quantizes_every_layer_but_exempt():
    model = tiny_model()
    before = copy.deepcopy(model.state_dict())
    quantized = Q.quantize_weights(model, 3, exempt=("fc",))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])       # input untouched
    for name, layer in Q.quantizable_layers(quantized).items():
        if name == "fc":
            assert torch.equal(layer.weight, model.fc.weight)
        else:
            assert layer.weight[0].unique().numel() <= 2 ** 3 - 1
    assert layer.weight.dtype == torch.float32


def test_quantize_weights_of_a_pruned_model_keeps_its_zeros():
    pruned = prune(tiny_model(), 0.6)
    quantized = Q.quantize_weights(pruned, 4, symmetric=False, per_channel=False)
    assert not is_pruned(quantized) and is_pruned(pruned)
    for name, layer in Q.quantizable_layers(quantized).items():
        mask = dict(pruned.named_modules())[name].weight_mask
        assert (layer.weight[mask == 0] == 0).all()
        assert layer.weight.unique().numel() <= 16


def test_layer_quant_error_sqnr_gains_about_6_db_per_bit():
    model = tiny_model()
    e4 = layer_quant_error(model, Q.quantize_weights(model, 4))
    e8 = layer_quant_error(model, Q.quantize_weights(model, 8))
    assert set(e4) == set(Q.quantizable_layers(model))
    gains = [e8[n]["sqnr_db"] - e4[n]["sqnr_db"] for n in e4]
    assert 18 < sum(gains) / len(gains) < 30          # 4 more bits ≈ 24 dB
    w, w_hat = model.fc.weight, Q.quantize_weights(model, 4).fc.weight
    assert e4["fc"]["mse"] == pytest.approx((w - w_hat).pow(2).mean().item(), rel=1e-5)
    assert layer_quant_error(model, copy_model(model))["fc"]["sqnr_db"] == math.inf


# --- activations -------------------------------------------------------------------------------------

def stats_with_outliers() -> A.InputStats:
    x = torch.randn(50_000).relu()
    x[:5] = 40.0                                  # a few huge activations
    return A.InputStats(x.min().item(), x.max().item(), x)


@pytest.mark.parametrize("bits", (4, 8))
@pytest.mark.parametrize("symmetric", (True, False))
def test_calibration_ranges_are_sensible(bits, symmetric):
    stats = stats_with_outliers()
    lo_mm, hi_mm = A.choose_range(stats, bits, symmetric, "minmax")
    assert hi_mm == 40.0 and lo_mm == (-40.0 if symmetric else 0.0)
    ranges = {m: A.choose_range(stats, bits, symmetric, m) for m in A.CALIBRATION_METHODS}
    for lo, hi in ranges.values():
        assert lo_mm <= lo <= 0 <= hi <= hi_mm
    assert ranges["percentile"][1] < hi_mm            # the outliers lie beyond the 99.99th percentile
    x = stats.sample
    mse = {m: (x - Q.fake_quantize_range(x, *r, bits, symmetric)).pow(2).mean().item() for m, r in ranges.items()}
    assert mse["mse"] <= mse["minmax"]
    if bits == 4:       # coarse steps: clipping the 5 outliers costs less than rounding everything coarsely
        assert ranges["mse"][1] < hi_mm


def test_quantize_activations_rounds_each_layer_input_onto_its_calibrated_grid():
    model = tiny_model()
    calib = tiny_images()
    quantized = A.quantize_activations(model, 3, calib, "minmax", batches=2, batch_size=32)
    settings = A.activation_settings(quantized)
    assert "conv1" not in settings and "fc" in settings and len(settings) == len(Q.quantizable_layers(model)) - 1
    seen = {}
    hooks = [layer.register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name, i[0]))
             for name, layer in quantized.named_modules() if name in settings]
    with torch.no_grad():
        quantized(torch.rand(8, 3, 32, 32))
    for h in hooks:
        h.remove()
    for name, x in seen.items():      # these hooks ran after the rounding hook
        assert x.unique().numel() <= 2 ** 3
        assert x.min() >= settings[name]["lo"] - 1e-6 and x.max() <= settings[name]["hi"] + 1e-6
    assert not A.activation_settings(model)   # input untouched


def test_minmax_calibration_range_equals_what_the_layer_saw():
    model = tiny_model()
    calib = tiny_images(32)
    seen = []
    model.fc.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        model(calib.images.float() / 255)
    setting = A.activation_settings(A.quantize_activations(model, 8, calib, "minmax", batches=1, batch_size=32))["fc"]
    assert setting["hi"] == pytest.approx(seen[0].max().item(), rel=1e-6)
    assert setting["lo"] == 0.0                      # fc's input follows a ReLU


def test_activation_quantized_model_copies_evaluates_and_saves_as_the_plain_architecture():
    model = tiny_model()
    calib = tiny_images()
    q = A.quantize_model(model, 4, 4, calib, a_method="percentile", batches=2, batch_size=32)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = q(x)
        assert torch.equal(copy_model(q)(x), out) and torch.equal(copy.deepcopy(q)(x), out)
        plain = plain_model(q)
        assert not torch.equal(plain(x), out)          # rounding removed ...
        assert torch.equal(plain(x), Q.quantize_weights(model, 4)(x))   # ... quantized weights kept
        restored = A.set_activation_settings(plain, A.activation_settings(q))
        assert torch.equal(restored(x), out)
    assert list(plain.state_dict()) == list(model.state_dict())
    assert list(q.state_dict()) == list(model.state_dict())
    assert 0 <= evaluate(q, calib).accuracy <= 1


# --- fp16 / bf16 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_reduced_float_rounds_through_the_format(fmt, dtype):
    x = torch.randn(1000) * 100
    assert torch.equal(Q.round_through(x, fmt), x.to(dtype).float())
    assert not torch.equal(Q.round_through(x, fmt), x)
    model = tiny_model()
    reduced = A.to_reduced_float(model, fmt)
    for (name, w), w_hat in zip(model.state_dict().items(), reduced.state_dict().values()):
        if w.is_floating_point():
            assert torch.equal(w_hat, w.to(dtype).float()), name
    seen = []
    reduced.fc.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        reduced(torch.rand(2, 3, 32, 32))
    assert torch.equal(seen[0], seen[0].to(dtype).float())


def test_unknown_float_format_is_a_clear_error():
    with pytest.raises(ValueError, match="fp16"):
        A.to_reduced_float(tiny_model(), "fp8")


# --- quantization-aware training ---------------------------------------------------------------------

def test_ste_gradient_is_the_gradient_at_the_quantized_weight():
    torch.manual_seed(1)
    layer = nn.Linear(6, 5)
    mask = (torch.rand(5, 6) > 0.3).float()
    with torch.no_grad():
        layer.weight.mul_(mask)
    qat = QAT.prepare_qat(nn.Sequential(layer), bits=2)[0]
    x, g = torch.randn(7, 6), torch.randn(7, 5)
    (qat(x) * g).sum().backward()
    reference = nn.Linear(6, 5)
    with torch.no_grad():
        reference.weight.copy_(Q.fake_quantize(layer.weight, 2, True, True))
        reference.bias.copy_(layer.bias)
    (reference(x) * g).sum().backward()
    # ∂L/∂w = ∂L/∂ŵ · ∂ŵ/∂w with ∂ŵ/∂w = 1 (straight through), 0 where pruned
    assert torch.allclose(qat.parametrizations.weight.original.grad, reference.weight.grad * mask)
    assert qat.parametrizations.weight.original.grad.abs().sum() > 0


@pytest.mark.parametrize("bits,symmetric", [(2, True), (3, False)])
def test_qat_trains_with_train_and_converts_to_few_values_keeping_pruned_zeros(bits, symmetric):
    pruned = prune(tiny_model(), 0.5)
    zero_before = {n: m.weight_mask == 0 for n, m in Q.quantizable_layers(pruned).items()}
    qat = QAT.prepare_qat(pruned, bits, symmetric)
    start = qat.conv1.parametrizations.weight.original.detach().clone()
    config = TrainConfig(epochs=3, batch_size=16, lr=0.5, augment=False, device="cpu", warmup=0.0)
    run_to_end(train(qat, tiny_images(32), config))
    assert not torch.equal(qat.conv1.parametrizations.weight.original, start)   # it trained
    converted = QAT.convert_qat(qat)
    assert set(converted.state_dict()) == set(create_model("resnet8", width=0.25).state_dict())
    trained = {n: m.parametrizations.weight.original * m.parametrizations.weight[0].mask
               for n, m in Q.quantizable_layers(qat).items()}
    for name, layer in Q.quantizable_layers(converted).items():
        w = layer.weight
        assert (w[zero_before[name]] == 0).all()
        assert all(w[c].unique().numel() <= 2 ** bits for c in range(len(w)))
        assert torch.equal(w, Q.fake_quantize(trained[name].detach(), bits, symmetric, True))


def test_qat_with_activation_bits_copies_and_converts():
    calib = tiny_images()
    qat = QAT.prepare_qat(tiny_model(), 4, a_bits=6, calib=calib)
    assert len(A.activation_settings(qat)) > 0
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy_model(qat)(x), qat(x))
    assert A.activation_settings(QAT.convert_qat(qat)) == A.activation_settings(qat)
    with pytest.raises(ValueError, match="calib"):
        QAT.prepare_qat(tiny_model(), 4, a_bits=6)


def test_convert_qat_leaves_the_qat_model_and_its_copies_working():
    """Regression: torch's remove_parametrizations edits a class that deep copies share."""
    from compression.models import create_model
    from compression.weights import copy_model

    qat = QAT.prepare_qat(create_model("resnet8", width=0.25), 4)
    twin = copy_model(qat)
    x = torch.rand(2, 3, 32, 32)
    converted = QAT.convert_qat(twin)
    assert torch.equal(qat.eval()(x), converted.eval()(x))
    assert torch.equal(twin.eval()(x), converted(x))
