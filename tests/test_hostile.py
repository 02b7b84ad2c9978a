"""Hostile and careless input: every file, folder or link a visitor can hand the app or the CLI ends in a
clear DataError / ModelFileError (one line from the CLI), and nothing is decoded or allocated beyond what
the declared architecture really needs."""
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compression.data import DataError, load_cifar10
from compression.files import ModelFileError, load_any_bytes, load_model, state_dict_bytes
from compression.models import create_model
from compression.packed import pack_model, unpack_model
from compression.prune import prune
from helpers import rebuild, zero_packed

ROOT = Path(__file__).resolve().parent.parent


def pruned_packed() -> bytes:
    """A small packed model whose weights use the sparse layout (so they carry every layout field)."""
    return pack_model(prune(create_model("resnet8", 0.25).eval(), 0.7))


@pytest.fixture(scope="module")
def packed():
    return pruned_packed()


# --- 2, 3: validate before allocating; bound what an upload may cost ----------------------------------------

def test_a_tiny_header_cannot_make_the_decoder_expand_millions_of_values():
    """A file of a few KB claims 2^25 values for the stem conv (which holds 108): refused before decoding
    (a decoder that trusted the claim would allocate about 400 MB)."""
    def inflate(header):
        next(d for d in header["tensors"] if d["name"] == "conv1.weight")["shape"] = [4096, 8192, 1, 1]
    hostile = rebuild(zero_packed("resnet8", 0.25), inflate)
    assert len(hostile) < 20_000
    with pytest.raises(ModelFileError, match="cannot hold"):
        unpack_model(hostile, "bomb.cmpk")


def test_a_model_far_larger_than_the_app_makes_is_refused_before_it_is_built():
    data = zero_packed("resnet56", 8.0)          # 54 M parameters described in a few hundred KB
    assert len(data) < 600_000
    with pytest.raises(ModelFileError, match="largest model this app evaluates"):
        load_any_bytes(data, "huge.cmpk")


def test_the_largest_model_the_app_makes_still_loads():
    model, meta = load_any_bytes(zero_packed("resnet56", 2.0), "big.cmpk")
    assert meta["arch"] == "resnet56" and sum(p.numel() for p in model.parameters()) > 3_000_000


def test_decoding_a_hostile_20_mb_upload_stays_within_its_memory_bound(tmp_path):
    """bench/hostile_upload.py's worst case: the largest allowed model, every weight stored sparse with
    the longest possible gap streams, padded to the 20 MB upload limit. Loading it in a fresh process
    raises ModelFileError or succeeds, and the process's peak memory grows by less than 500 MB (bench/hostile_upload.py measures under 100 MB)."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'bench')!r})
from hostile_upload import worst_case_files
from compression.files import ModelFileError, load_any_bytes

def status(field):   # kB
    return next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith(field))

grown = 0
for name, data in worst_case_files().items():
    before = status('VmRSS:')
    try:
        load_any_bytes(data, name)
    except ModelFileError:
        pass
    grown = max(grown, status('VmHWM:') - before)
print(grown // 1024)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mb = int(out.stdout.split()[-1])
    assert grown_mb < 500, f"peak memory grew by {grown_mb} MB"


# --- 5, 10: malformed fields and misleading messages ---------------------------------------------------------

def set_weight(key, value):
    def edit(header):
        next(d for d in header["tensors"] if d.get("positions"))[key] = value
    return edit


@pytest.mark.parametrize("edit", [
    set_weight("dtype", ["float32"]), set_weight("dtype", {"a": 1}), set_weight("positions", ["sparse"]),
    set_weight("values", {"raw": 1}), set_weight("shape", [0, 10 ** 30]), set_weight("stored", 10 ** 30),
    set_weight("bytes", [1, 2]), lambda h: h.update(width=[1]), lambda h: h.update(arch=["resnet8"]),
    lambda h: h.update(arch="x" * 10_000), lambda h: h["tensors"].append({"name": ["a"]}),
])
def test_type_confused_packed_headers_are_clear_errors(packed, edit):
    with pytest.raises(ModelFileError):
        unpack_model(rebuild(packed, edit), "odd.cmpk")


@pytest.mark.parametrize("width", ["nan", "-1", "0", "inf", "1e9", "1e400", "wide", ""])
def test_odd_safetensors_widths_are_clear_errors(width):
    data = state_dict_bytes(create_model("resnet8"), {"arch": "resnet8", "width": width})
    with pytest.raises(ModelFileError, match="width"):
        load_any_bytes(data, "odd.safetensors")


def test_pickles_and_torch_checkpoints_are_named_for_what_they_are(tmp_path):
    torch.save(create_model("resnet8", 0.25).state_dict(), tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="PyTorch checkpoint.*never opens"):
        load_model(tmp_path / "model.pt")
    with pytest.raises(ModelFileError, match="Python pickle.*never opens"):
        load_any_bytes(pickle.dumps({"conv1.weight": [1.0]}, protocol=4), "model.pkl")


@pytest.mark.parametrize("cut", range(4, 18))
def test_a_packed_file_cut_short_says_truncated(packed, cut):
    with pytest.raises(ModelFileError, match="truncated"):
        load_any_bytes(packed[:cut], "cut.cmpk")


def test_a_folder_is_not_called_missing(tmp_path):
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [
    lambda tmp: rebuild(pruned_packed(), set_weight("dtype", ["float32"])),
    lambda tmp: state_dict_bytes(create_model("resnet8"), {"arch": "resnet8", "width": "nan"}),
    lambda tmp: b"\x80\x04\x95" + b"cos\nsystem\n" * 10,
    lambda tmp: b"CMPK\x01",
])
def test_the_cli_prints_one_line_and_exits_2(tmp_path, content):
    path = tmp_path / "bad.cmpk"
    path.write_bytes(content(tmp_path))
    out = subprocess.run([sys.executable, "-m", "compression", "info", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stderr.startswith("error: ")


# --- 6: models that compute NaN or infinity -----------------------------------------------------------------

def broken_bn(model):
    with torch.no_grad():
        model.bn1.running_var[0] = -1.0
    return model


def huge_classifier(model):
    with torch.no_grad():
        model.fc.weight.fill_(3e38)
    return model


@pytest.mark.parametrize("breakage", [broken_bn, huge_classifier])
@pytest.mark.parametrize("packer", [pack_model, lambda m: state_dict_bytes(m, {"arch": "resnet8", "width": "0.25"})])
def test_models_whose_outputs_are_not_finite_are_refused(breakage, packer):
    model = breakage(create_model("resnet8", 0.25).eval())
    with pytest.raises(ModelFileError, match="NaN or infinite"):
        load_any_bytes(packer(model), "broken")


# --- 4, 7: CIFAR batch files -----------------------------------------------------------------------------------

def write_batches(folder: Path, test_batch: dict) -> Path:
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    good = {"data": np.zeros((10, 3072), np.uint8), "labels": [1] * 10}
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(good, protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps(test_batch, protocol=2))
    return folder


@pytest.mark.parametrize("batch", [
    {"data": np.zeros((10, 3072), np.uint8), "labels": ["cat"] * 10},
    {"data": np.zeros((10, 3072), np.uint8), "labels": [1.5] * 10},
    {"data": np.zeros((10, 3072), np.uint8), "labels": [10 ** 30] * 10},
    {"data": np.zeros((10, 3072), np.uint8), "labels": np.array(["a"] * 10)},
    {"data": [[0] * 3072] * 10, "labels": [1] * 10},
    {"data": np.zeros((10, 3072), np.float32), "labels": [1] * 10},
    {"data": np.zeros((10, 3072), np.uint8), "labels": [[1] * 1000] * 10},
])
def test_malformed_batches_are_data_errors(tmp_path, batch):
    root = write_batches(tmp_path, batch)
    with pytest.raises(DataError):
        load_cifar10(root, "test")


def test_a_small_batch_file_cannot_describe_a_huge_array(tmp_path):
    """A pickle of a million references to one image row is 2 MB on disk and 3 GB as an array: the reader
    refuses it before any array is built."""
    row = [0] * 3072
    rows = [row] * 1_000_000
    root = write_batches(tmp_path, {"data": rows, "labels": [0] * 1_000_000})
    size = (root / "cifar-10-batches-py" / "test_batch").stat().st_size
    assert size < 8_000_000
    with pytest.raises(DataError, match="should be an array"):   # checked before np.asarray could expand it
        load_cifar10(root, "test")
