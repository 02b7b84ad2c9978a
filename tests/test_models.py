import pytest
import torch

from compression.counts import count_macs, count_params
from compression.models import ARCHS, create_model
from compression.weights import copy_model


@pytest.mark.parametrize("arch,params", [("resnet8", 78_042), ("resnet20", 272_474), ("resnet56", 855_770)])
def test_parameter_counts(arch, params):
    total, _ = count_params(create_model(arch))
    assert total == params


def test_resnet20_is_027m_params_and_41m_macs():
    model = create_model("resnet20")
    total, _ = count_params(model)
    macs, nonzero_macs = count_macs(model)
    assert round(total / 1e6, 2) == 0.27
    assert 40e6 <= macs <= 42e6
    assert nonzero_macs == macs  # a fresh model has no zero weights


def test_resnet56_is_085m_params():
    total, _ = count_params(create_model("resnet56"))
    assert 0.85e6 <= total < 0.86e6


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_maps_images_to_ten_logits(arch):
    out = create_model(arch, width=0.5).eval()(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_width_multiplier_scales_channels():
    model = create_model("resnet8", width=2.0)
    assert model.conv1.out_channels == 32 and model.fc.in_features == 128


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture"):
        create_model("resnet19")


def test_copy_model_is_independent():
    model = create_model("resnet8")
    clone = copy_model(model)
    with torch.no_grad():
        clone.conv1.weight.zero_()
    assert model.conv1.weight.abs().sum() > 0
