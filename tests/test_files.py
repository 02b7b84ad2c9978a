import pytest
import torch

from compression.files import ModelFileError, load_model, load_model_bytes, save_model, state_dict_bytes
from compression.models import create_model


def logits(model, seed=0):
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return model.eval()(x)


def test_round_trip_reproduces_logits_bit_exactly(tmp_path):
    model = create_model("resnet8", width=0.5)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded, meta = load_model(path)
    assert meta["arch"] == "resnet8" and float(meta["width"]) == 0.5
    assert torch.equal(logits(model), logits(loaded))


def test_layers_with_fewer_channels_load(tmp_path):
    """A structured-pruned model has fewer channels than the architecture's default."""
    small = create_model("resnet8", width=0.5)
    tensors = dict(small.state_dict())
    data = state_dict_bytes(small, {"arch": "resnet8", "width": "1.0"})   # claims full width
    loaded, _ = load_model_bytes(data)
    assert loaded.conv1.out_channels == 8 and loaded.fc.in_features == 32
    assert torch.equal(logits(small), logits(loaded))
    assert set(tensors) == set(loaded.state_dict())


def test_truncated_file_is_a_clear_error():
    data = state_dict_bytes(create_model("resnet8"), {"arch": "resnet8"})
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        with pytest.raises(ModelFileError):
            load_model_bytes(data[:cut], "m.safetensors")


def test_pickle_is_not_accepted(tmp_path):
    path = tmp_path / "m.pt"
    torch.save(create_model("resnet8").state_dict(), path)
    with pytest.raises(ModelFileError, match="not a valid safetensors|truncated|too short|never opens"):
        load_model_bytes(path.read_bytes(), "m.pt")


def test_wrong_architecture_is_named():
    data = state_dict_bytes(create_model("resnet20"), {"arch": "resnet20"})
    with pytest.raises(ModelFileError, match="does not hold a resnet8"):
        load_model_bytes(data, "m", arch="resnet8")


def test_unknown_architecture():
    data = state_dict_bytes(create_model("resnet8"), {"arch": "vgg16"})
    with pytest.raises(ModelFileError, match="vgg16"):
        load_model_bytes(data)


def test_missing_architecture_asks_the_user():
    from safetensors.torch import save
    data = save({k: v.contiguous() for k, v in create_model("resnet8").state_dict().items()})
    with pytest.raises(ModelFileError, match="choose one"):
        load_model_bytes(data)
    model, _ = load_model_bytes(data, arch="resnet8")
    assert model.fc.out_features == 10


def test_nan_weights_are_refused():
    model = create_model("resnet8")
    with torch.no_grad():
        model.layer1[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelFileError, match="NaN"):
        load_model_bytes(state_dict_bytes(model, {"arch": "resnet8"}))


def test_inconsistent_shapes_are_refused():
    model = create_model("resnet8")
    tensors = {k: v.clone() for k, v in model.state_dict().items()}
    tensors["layer1.0.conv2.weight"] = torch.zeros(16, 7, 3, 3)
    from safetensors.torch import save
    with pytest.raises(ModelFileError, match="do not fit together"):
        load_model_bytes(save(tensors, metadata={"arch": "resnet8"}))
