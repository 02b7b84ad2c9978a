"""ONNX on Compare & Download (ui/onnx_files.py), driven with AppTest: the check in ONNX Runtime shows each
file's accuracy, the int8 file the page offers runs in a fresh Python that has only onnxruntime and numpy
and gives that accuracy, and an uploaded .onnx is evaluated (a malformed one is a message)."""
import re
import time

import pytest

pytest.importorskip("streamlit")
pytest.importorskip("onnxruntime")
from app_fixtures import goto, kept, pretrained  # noqa: E402
from test_onnx import run_without_torch  # noqa: E402

from compression import data as D  # noqa: E402


def finished(key, timeout_s=900):
    from ui import analyses
    deadline = time.time() + timeout_s
    while analyses.task(key).active and time.time() < deadline:
        time.sleep(0.5)
    return analyses.task(key)


@pytest.mark.slow
def test_the_int8_onnx_the_page_offers_runs_without_torch_to_the_accuracy_it_shows(app, tmp_path):
    from ui import onnx_files

    goto(app, "compare")
    record = pretrained(app, "resnet8")
    next(b for b in app.button if b.key == f"onnx-check-{record.id}").click().run()
    assert not app.exception, [e.value for e in app.exception]
    train, test = D.load_sample()
    task = finished(onnx_files.check_key(record.id, train))
    assert task.status == "done", task.error
    app.run()
    shown = next(m.value for m in app.markdown if "ONNX Runtime, int8" in m.value)
    int8_shown = re.search(r"ONNX Runtime, int8\*\*: ([\d.]+) %", shown).group(1)
    assert re.search(r"int8\*\*: .* batch 1: [\d.]+ ms \(PyTorch [\d.]+ ms\) · batch 256: [\d.]+ ms", shown), shown
    assert re.search(r"ONNX Runtime, fp32\*\*: ([\d.]+) %", shown).group(1) == f"{100 * task.result['fp32']['pytorch']:.1f}"

    data = onnx_files.offered(record.id, "int8", train)       # what the download button sends
    assert len(data) == task.result["int8"]["bytes"]
    eval_set = D.eval_subset(test)
    result = run_without_torch(data, eval_set, tmp_path)
    assert not result["torch_found"] and result["packages"] == ["numpy", "onnxruntime"]
    assert result["correct"] == round(task.result["int8"]["onnx"] * len(eval_set))
    assert f"{100 * result['correct'] / len(eval_set):.1f}" == int8_shown


def test_an_uploaded_onnx_is_evaluated_and_a_malformed_one_is_a_message(app):
    from compression.onnx_export import export_fp32
    from compression.models import create_model

    goto(app, "compare")
    before = [r.id for r in kept(app)]
    good = export_fp32(create_model("resnet8", 0.25))
    app.file_uploader(key="upload_file").set_value(("tiny.onnx", good, "application/octet-stream")).run()
    assert not app.exception and "tiny.onnx runs in ONNX Runtime: eval accuracy" in app.success[0].value
    app.file_uploader(key="upload_file").set_value(("broken.onnx", good[:len(good) // 2], "application/octet-stream")).run()
    assert not app.exception and app.error and "broken.onnx" in app.error[0].value
    assert [r.id for r in kept(app)] == before, "an .onnx is evaluated, not added"
