"""The pages' Auto mode and ONNX section (ui/auto.py, ui/onnx_download.py), on a tiny model: what the worker
runs and what the page draws from it, without a browser (test_app.py renders the pages)."""
import pytest
import torch

from compression.auto_prune import AutoPruneConfig
from compression.auto_quant import AutoQuantConfig
from compression.jobs import auto_prune_variants, auto_quantize_variants
from compression.models import create_model
from compression.onnx_export import OnnxModel
from compression.packed import pack_model
from compression.prune import prunable_layers, sparsity
from compression.quantize import quantize_weights
from compression.variant import measure_variant
from compression.worker import Job
from helpers import toy_set

pytest.importorskip("streamlit")
from ui.auto import allocation_chart, run_auto  # noqa: E402
from ui.onnx_download import report_table, run_export, upload_message  # noqa: E402

LEVELS = (0.0, 0.3, 0.5, 0.7, 0.9)


@pytest.fixture(scope="module")
def parent():
    torch.manual_seed(0)
    return measure_variant(create_model("resnet8", width=0.25).eval(), "trained", name="tiny", eval_set=toy_set(40))


def test_auto_prune_job_returns_both_variants_and_the_bars_draw_its_allocation(parent):
    job = Job("auto", fn=None)
    config = AutoPruneConfig(target_sparsity=0.6, levels=LEVELS, calib_images=32)
    variants = run_auto(job, auto_prune_variants, parent, config, toy_set(32), toy_set(40, seed=1))
    auto, uniform = variants
    n = sum(m.weight.numel() for m in prunable_layers(parent.model).values())
    assert sparsity(auto.model) == sparsity(uniform.model) == round(0.6 * n) / n
    events = job.snapshot()
    steps = [e for e in events if "total_steps" in e]
    assert steps and steps[-1]["step"] == steps[-1]["total_steps"] == len(prunable_layers(parent.model))
    chosen = next(e for e in events if e.get("phase") == "allocation")
    assert [r["layer"] for r in chosen["rows"]] == list(prunable_layers(parent.model))
    fig = allocation_chart(chosen["rows"], "sparsity (%)", "t", percent=True)
    uniform_bars, auto_bars = fig.data
    assert (uniform_bars.name, auto_bars.name) == ("uniform", "auto")
    assert list(auto_bars.y) == [100 * r["auto"] for r in chosen["rows"]]
    zeros = {name: int((m.weight == 0).sum()) for name, m in prunable_layers(auto.model).items()}
    assert [r["auto"] * r["params"] for r in chosen["rows"]] == pytest.approx([zeros[r["layer"]] for r in chosen["rows"]])


def test_auto_quantize_job_fits_the_budget_and_draws_widths_beside_uniform(parent):
    job = Job("auto", fn=None)
    budget = len(pack_model(quantize_weights(parent.model, 4)))
    config = AutoQuantConfig(budget, criterion="sqnr")
    variants = run_auto(job, auto_quantize_variants, parent, config, None, toy_set(40, seed=1))
    assert len(pack_model(variants[0].model)) <= budget and variants[1].settings == {"bits": 4}
    chosen = next(e for e in job.snapshot() if e.get("phase") == "allocation")
    uniform_bars, auto_bars = allocation_chart(chosen["rows"], "bits", "t", percent=False).data
    assert set(uniform_bars.y) == {4} and set(auto_bars.y) <= set(range(2, 9))


def test_onnx_job_result_and_its_table(parent):
    job = Job("onnx", fn=None)
    eval_set = toy_set(40, seed=2)
    data, report = run_export(job, parent, eval_set, False, None)
    first = job.snapshot()[0]
    assert (first["phase"], first["variant"], first["int8"]) == ("onnx_for", parent.id, False)
    assert "onnx_int8" not in parent.artifacts                         # only an int8 file joins the downloads
    with torch.no_grad():
        x = torch.rand(3, 3, 32, 32)
        assert (OnnxModel(data)(x) - parent.model(x)).abs().max().item() <= 1e-4
    table = report_table(report)
    assert list(table["runtime"]) == ["ONNX Runtime", "pytorch fp32"]
    assert table["accuracy"][0] == f"{100 * report['onnx']['accuracy']:.1f} %"
    assert table["same top-1 as ONNX"][1] == "100.0 %"
    assert all(cell.endswith(" ms") for cell in table["batch 256"])
    kind, message = upload_message(data, "tiny.onnx", eval_set)             # the same file, uploaded
    assert kind == "success" and message.startswith(f"tiny.onnx in ONNX Runtime: {table['accuracy'][0]} on 40 ")
    kind, message = upload_message(data[: len(data) // 2], "cut.onnx", eval_set)
    assert kind == "error" and message.startswith("Could not use cut.onnx: cut.onnx ") and "Export the model again" in message


def test_the_quantize_pages_auto_mode_runs_as_a_job_and_its_variants_join_the_table(tmp_path, monkeypatch):
    """The page itself (Streamlit's AppTest): set a size budget, press the button, the job's two variants join
    the session's variants and the bars are drawn. Data-free SQNR sensitivity keeps it quick."""
    import json
    import time
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from compression.files import save_model
    from compression.worker import shutdown_all

    models = {arch: create_model(arch) for arch in ("resnet20", "resnet8")}     # resnet20 is the model in hand
    for arch, model in models.items():
        save_model(model, tmp_path / f"{arch}.safetensors")
        (tmp_path / f"{arch}.json").write_text(json.dumps({"arch": arch, "epochs": 0, "test_accuracy": 0.1}))
    budget_kib = len(pack_model(quantize_weights(models["resnet20"], 4))) / 1024 + 1      # uniform 4-bit fits
    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv("PLAYGROUND_ASSETS", str(tmp_path))
    monkeypatch.chdir(root)
    at = AppTest.from_file(str(root / "app.py"), default_timeout=180)
    try:
        at.run()
        at.switch_page("app_pages/quantize.py")
        at.run()
        at.radio(key="auto_quant_criterion").set_value("sqnr")
        at.number_input(key="auto_quant_kib").set_value(round(budget_kib, 1))
        at.button(key="auto_quant_go").click().run()
        assert not at.exception, [e.value for e in at.exception]
        job = at.session_state["jobs"]["quantize_auto"]
        deadline = time.time() + 600
        while job.active and time.time() < deadline:
            time.sleep(1)
        assert job.status == "done", job.error
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        names = [v.name for v in at.session_state["book"]]
        assert any(" auto " in n for n in names) and any(n.endswith("uniform w4") for n in names), names
        titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
        assert "Bit width per layer: auto beside uniform" in titles
    finally:
        shutdown_all()
