"""Every verb of `python -m compression`, run as a student runs it: in its own process, on a tiny model
file, on the bundled sample, with --json; what it prints and writes is checked against what it promises."""
import csv
import functools
import hashlib
import http.server
import io
import json
import pickle
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import torch

from compression import data as D
from compression.activations import quantize_model
from compression.files import load_model, save_model
from compression.prune import FIRST_AND_LAST, prunable_layers
from compression.share import cluster_weights
from compression.train import evaluate
from compression.variant import REPORT_COLUMNS
from compression.views import distinct_values, layer_names
from helpers import confident_model, on_grid

ROOT = Path(__file__).resolve().parent.parent


def run(*args, check=True) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "compression", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert "Traceback" not in done.stderr, done.stderr
    if check:
        assert done.returncode == 0, done.stderr
    return done


def verb(*args) -> dict | list:
    """Run a verb with --sample --json; its JSON."""
    return json.loads(run(*args, "--sample", "--json").stdout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """resnet8 at width 0.25 (4/8/16 channels) with confident, varied answers."""
    return save_model(confident_model(), tmp_path_factory.mktemp("cli") / "tiny.safetensors")


@pytest.fixture(scope="module")
def original(tiny):
    return load_model(tiny)[0]


@pytest.fixture(scope="module")
def pruned(tiny, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("pruned") / "p.cmpk"
    return verb("prune", tiny, "--amount", 0.6, "--out", out), out


def weights(model) -> dict[str, torch.Tensor]:
    return {name: m.weight.detach() for name, m in prunable_layers(model).items()}


# --- prune -----------------------------------------------------------------------------------------------

def test_prune_removes_exactly_the_amount_of_the_smallest_weights(pruned, original):
    out, path = pruned
    assert out["technique"] == "pruned" and out["settings"] == {"method": "magnitude", "scope": "global", "amount": 0.6}
    before, after = weights(original), weights(load_model(path)[0])
    n = sum(w.numel() for w in before.values())
    zeros = sum(int((w == 0).sum()) for w in after.values())
    assert zeros == round(0.6 * n) and out["sparsity"] == pytest.approx(zeros / n)
    removed = torch.cat([before[k][after[k] == 0].abs() for k in before])
    kept = torch.cat([before[k][after[k] != 0].abs() for k in before])
    assert removed.max() <= kept.min(), "global magnitude pruning removes the smallest |w| of the whole network"
    assert all(torch.equal(after[k][after[k] != 0], before[k][after[k] != 0]) for k in before), "no fine-tuning"


def test_prune_per_layer_keeps_first_and_last_dense_and_fine_tunes_with_the_mask(tiny, original, tmp_path):
    path = tmp_path / "layer.safetensors"
    out = verb("prune", tiny, "--amount", 0.6, "--scope", "layer", "--keep-first-last", "--finetune-epochs", 0.05,
               "--out", path)
    assert out["settings"]["finetune_epochs"] == 0.05 and out["settings"]["scope"] == "layer"
    before, after = weights(original), weights(load_model(path)[0])
    for name in FIRST_AND_LAST:
        assert int((after[name] == 0).sum()) == 0, f"{name} stays dense with --keep-first-last"
    for name in set(before) - set(FIRST_AND_LAST):
        zero = after[name] == 0
        assert int(zero.sum()) == round(0.6 * zero.numel()), f"{name}: every layer loses the same share"
        assert before[name][zero].abs().max() <= before[name][~zero].abs().min()
    changed = [k for k in before if not torch.equal(before[k][after[k] != 0], after[k][after[k] != 0])]
    assert changed, "--finetune-epochs trains the weights that stay"


def test_structured_prune_really_removes_filters(tiny, original, tmp_path):
    path = tmp_path / "filters.safetensors"
    out = verb("prune", tiny, "--structured", "--amount", 0.5, "--out", path)
    assert out["technique"] == "filter-pruned" and out["settings"]["ratio"] == 0.5
    model = load_model(path)[0]
    assert model.layer1[0].conv1.out_channels == 2 and model.layer3[0].conv1.out_channels == 8   # half of 4, 16
    params = sum(p.numel() for p in original.parameters())
    assert out["params"] == sum(p.numel() for p in model.parameters()) < 0.35 * params
    assert out["sparsity"] == 0.0, "what is left is dense"


# --- quantize --------------------------------------------------------------------------------------------

def test_quantize_puts_weights_on_the_grid_and_calibrates_activations(tiny, original, tmp_path):
    path = tmp_path / "q.safetensors"
    out = verb("quantize", tiny, "--bits", 4, "--granularity", "per-tensor", "--activation-bits", 2, "--out", path)
    assert out["technique"] == "quantized" and out["settings"]["a_bits"] == 2
    model = load_model(path)[0]
    for name, w in weights(model).items():
        assert on_grid(w, 4, per_channel=False), name
        assert distinct_values(model, name) <= 15, "one 4-bit symmetric grid per layer: at most 15 values"
    train, ev = D.load_sample()[0], D.eval_subset(D.load_sample(splits=("test",)))
    with_activations = evaluate(quantize_model(original, 4, 2, train, per_channel=False), ev).accuracy
    weights_only = evaluate(quantize_model(original, 4, per_channel=False), ev).accuracy
    assert abs(with_activations - weights_only) > 0.01, "the check below can tell the two apart"
    assert out["eval_accuracy"] == pytest.approx(with_activations, abs=0.002)


def test_quantization_aware_training_ends_on_the_grid(tiny, original, tmp_path):
    from compression.quantize import quantize_weights

    path = tmp_path / "qat.safetensors"
    out = verb("quantize", tiny, "--bits", 4, "--qat-epochs", 0.05, "--activation-bits", 8, "--out", path)
    assert out["technique"] == "QAT" and out["settings"]["qat_epochs"] == 0.05 and out["settings"]["a_bits"] == 8
    trained = weights(load_model(path)[0])
    assert all(on_grid(w, 4, per_channel=True) for w in trained.values())
    plain = weights(quantize_weights(original, 4))
    assert any(not torch.equal(plain[k], trained[k]) for k in plain), "training moved weights to other levels"


# --- distill, cluster, pipelines ------------------------------------------------------------------------------

def test_distill_trains_the_student_it_is_asked_for_at_the_temperature_given(tiny, tmp_path):
    students = {}
    for T in (2, 8):
        path = tmp_path / f"student{T}.safetensors"
        out = verb("distill", "--teacher", tiny, "--student-arch", "resnet8", "--student-width", 0.25, "-T", T,
                   "--alpha", 0.5, "--epochs", 0.05, "--out", path)
        assert out["technique"] == "distilled"
        assert out["settings"] == {"teacher": "tiny", "T": T, "alpha": 0.5, "epochs": 0.05}
        students[T] = load_model(path)[0]
    assert students[2].fc.in_features == 16 and students[2].width == 0.25
    assert not torch.equal(students[2].fc.weight, students[8].fc.weight), "the temperature changes the student"


def test_cluster_shares_k_values_per_layer_and_fine_tunes_them(tiny, original, tmp_path):
    path = tmp_path / "c.safetensors"
    out = verb("cluster", tiny, "-k", 4, "--centroid-epochs", 0.05, "--out", path)
    assert out["technique"] == "shared" and out["settings"] == {"clusters": 4, "centroid_epochs": 0.05}
    model = load_model(path)[0]
    for name, w in weights(model).items():
        assert torch.unique(w[w != 0]).numel() <= 4, name
    kmeans = weights(cluster_weights(original, 4))
    assert any(not torch.equal(kmeans[k], w) for k, w in weights(model).items()), "the centroids were trained"


def test_deep_compression_pipeline_prunes_shares_and_packs(tiny, tmp_path):
    path = tmp_path / "dc.cmpk"
    out = verb("pipeline", "deep-compression", tiny, "--sparsity", 0.8, "--clusters", 4, "--finetune-epochs", 0.05,
               "--out", path)
    assert [s["stage"] for s in out["stages"]] == ["1 pruned", "2 fine-tuned", "3 weight sharing", "4 Huffman coding"]
    assert out["final"]["sparsity"] == pytest.approx(0.8, abs=0.002)
    model = load_model(path)[0]
    assert all(distinct_values(model, name) <= 4 + 1 for name in layer_names(model))   # k values and zero
    assert out["stages"][-1]["bytes"] == out["final"]["bytes_packed"] < out["stages"][2]["bytes"]


def test_spiral_pipeline_prunes_further_each_round(tiny):
    out = verb("pipeline", "spiral", tiny, "--rounds", 2, "--amount", 0.75, "--epochs-per-round", 0.05)
    assert [s["stage"] for s in out["stages"]] == ["pruned", "distilled"] * 2
    sparsities = [s["sparsity"] for s in out["stages"]]
    assert sparsities[0] == pytest.approx(0.5, abs=0.01) and sparsities[-1] == pytest.approx(0.75, abs=0.01)


# --- export, report ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["packed", "safetensors"])
def test_export_writes_a_file_that_computes_the_same_logits(pruned, tmp_path, fmt):
    _, source = pruned
    path = tmp_path / f"export.{fmt}"
    out = verb("export", source, "--format", fmt, "--out", path)
    assert out["format"] == fmt and out["bytes"] == path.stat().st_size
    assert (path.read_bytes()[:4] == b"CMPK") == (fmt == "packed")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_model(path)[0](x), load_model(source)[0](x))


@pytest.mark.slow
def test_export_int8_writes_a_pt2_archive(tiny, tmp_path):
    path = tmp_path / "m.int8.pt2"
    out = verb("export", tiny, "--format", "int8", "--out", path)
    assert out["bytes"] == path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        assert any(n.endswith("models/model.json") for n in archive.namelist())


def test_report_lists_the_models_as_json_and_csv(tiny, pruned):
    out, path = pruned
    rows = verb("report", tiny, path)
    assert [r["name"] for r in rows] == ["tiny", "tiny pruned"] and list(rows[0]) == list(REPORT_COLUMNS)
    assert rows[1]["sparsity"] == pytest.approx(out["sparsity"]) and rows[0]["sparsity"] == 0.0
    assert rows[1]["compression_ratio"] == pytest.approx(rows[0]["bytes_fp32"] / rows[1]["bytes_packed"])
    table = list(csv.DictReader(io.StringIO(run("report", tiny, path, "--sample", "--csv").stdout)))
    assert [r["name"] for r in table] == ["tiny", "tiny pruned"]
    assert [int(r["bytes_packed"]) for r in table] == [r["bytes_packed"] for r in rows]


# --- download ----------------------------------------------------------------------------------------------

@pytest.fixture
def archive_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving a small archive in CIFAR-10's official layout."""
    folder = tmp_path / "src" / D.FOLDER
    folder.mkdir(parents=True)
    for i, name in enumerate(D.TRAIN_FILES + D.TEST_FILES):
        images = torch.randint(0, 256, (10, 3072), generator=torch.Generator().manual_seed(i), dtype=torch.uint8)
        batch = {"data": images.numpy(), "labels": [i % 10] * 10}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / D.ARCHIVE_NAME, "w:gz") as tar:
        tar.add(folder, arcname=D.FOLDER)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{D.ARCHIVE_NAME}"
    yield url, hashlib.md5((served / D.ARCHIVE_NAME).read_bytes()).hexdigest()
    server.shutdown()


def test_download_fetches_checks_and_unpacks_then_leaves_it_alone(archive_server, tmp_path):
    url, md5 = archive_server
    dest = tmp_path / "data"
    done = run("download", "--data", dest, "--url", url, "--md5", md5)
    assert f"unpacked into {dest / D.FOLDER}" in done.stdout
    assert len(D.load_cifar10(dest, "train")) == 50 and len(D.load_cifar10(dest, "test")) == 10
    again = run("download", "--data", dest, "--url", url + ".missing")
    assert again.stdout.strip() == f"CIFAR-10 is already in {dest / D.FOLDER}"


def test_download_with_a_wrong_checksum_is_an_error_message(archive_server, tmp_path):
    url, _ = archive_server
    done = run("download", "--data", tmp_path / "data", "--url", url, "--md5", "0" * 32, check=False)
    assert done.returncode == 2 and "failed its checksum" in done.stderr
    assert not D.has_cifar10(tmp_path / "data")
