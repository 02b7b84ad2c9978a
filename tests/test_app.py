"""The app, driven headlessly with Streamlit's AppTest: every page renders without an exception, the
controls do what they say, and bad input ends in a message, not a traceback."""
import json

import pytest
import torch

from compression.files import state_dict_bytes
from compression.models import create_model

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402
from app_fixtures import ROOT, goto, kept, model_in_hand, my_workspace, new_app, pretrained, store, wait_for_job  # noqa: E402,E501


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def chart_titles(at) -> list[str]:
    """The titles of the plotly charts on the page, as drawn."""
    return [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]


def test_overview_shows_the_model_in_hand(app):
    assert app.title[0].value == "Model Compression Playground"
    assert metric(app, "Parameters") == "68,786"                     # resnet20 at half width (the stand-in)
    assert "10.3 M" == metric(app, "Multiply-accumulates / image")
    assert app.dataframe[0].value.shape[0] == 22          # 21 convs + the classifier


def test_every_page_renders(app):
    for page in ("train", "prune", "compare", "overview"):
        goto(app, page)


def test_ratio_slider_sets_the_shown_sparsity_and_changes_accuracy(app):
    goto(app, "prune")
    shown = {}
    for ratio in (30, 90):
        app.slider(key="prune_ratio").set_value(ratio).run()
        assert not app.exception
        assert metric(app, "Sparsity (prunable layers)") == f"{ratio:.1f} %"
        shown[ratio] = metric(app, "Eval accuracy")
    assert shown[30] != shown[90]


def test_structured_pruning_really_shrinks_the_model(app):
    goto(app, "prune")
    app.radio(key="prune_method").set_value("structured").run()
    app.slider(key="prune_ratio").set_value(50).run()
    assert not app.exception
    params = int(metric(app, "Parameters").replace(",", ""))
    assert params < 0.35 * 68_786, "half the channels in every layer leaves about a quarter of the weights"


def test_keep_adds_a_variant_to_the_table(app):
    goto(app, "prune")
    app.slider(key="prune_ratio").set_value(70).run()
    next(b for b in app.button if b.label == "Keep this variant").click().run()
    assert not app.exception
    goto(app, "compare")
    table = app.dataframe[0]
    kept_row = table.value[table.value["name"].str.contains("pruned 70%")]
    assert len(kept_row) == 1
    assert kept_row["test_accuracy"].isna().all() and table.proto.placeholder == "—"     # not "None"


def test_training_one_epoch_on_the_sample_joins_the_table(app):
    goto(app, "train")
    app.number_input[0].set_value(1)
    app.form_submit_button[0].click()   # Start training (resnet8, 1 epoch on the 5,000 sample images)
    app.run()
    assert not app.exception
    job = wait_for_job(app, "train")
    assert job.status == "done", job.error
    goto(app, "compare")
    names = list(app.dataframe[0].value["name"])
    assert any(n.startswith("resnet8 trained (1 ep)") for n in names), names
    (made,) = job.result
    accuracy = store().variant(my_workspace(app), made).metrics.eval_accuracy
    assert accuracy > 0.2, "one epoch on 5,000 real images must beat chance (10 %) clearly"



def test_a_reload_during_a_training_run_shows_the_run_s_settings(app, assets, monkeypatch):
    goto(app, "train")
    next(n for n in app.number_input if n.label == "Epochs").set_value(7)
    next(n for n in app.select_slider if n.label == "Batch size").set_value(64)
    next(b for b in app.form_submit_button if b.label == "Start training").click()
    app.run()
    assert not app.exception
    reloaded = new_app(assets, monkeypatch, ws=app.query_params["ws"])      # F5: the session's state is gone
    reloaded.run()
    goto(reloaded, "train")
    try:
        record = next(r for r in store().jobs.list(my_workspace(app)) if r.kind == "train")
        assert record.active, "the run ended before the reload: this test needs a run of 7 epochs to be going"
        assert next(n for n in reloaded.number_input if n.label == "Epochs").value == 7      # not the default 3
        assert next(n for n in reloaded.select_slider if n.label == "Batch size").value == 64
    finally:
        next(b for b in reloaded.button if b.label == "Stop").click()
        reloaded.run()
    assert wait_for_job(reloaded, "train").status == "cancelled"

def test_downloads_reload_to_the_same_accuracy(app):
    from compression.data import eval_subset, load_sample
    from compression.export import packed_bytes, safetensors_bytes
    from compression.files import load_any_bytes
    from compression.train import evaluate

    goto(app, "prune")
    app.slider(key="prune_ratio").set_value(60).run()
    next(b for b in app.button if b.label == "Keep this variant").click().run()
    goto(app, "compare")
    record = kept(app)[-1]
    assert "pruned 60%" in record.name
    ws = my_workspace(app)
    ev = eval_subset(load_sample()[1])
    variant = record.as_variant(store().model(ws, record.id))
    made = {"cmpk": packed_bytes(variant), "safetensors": safetensors_bytes(variant)}   # what the buttons send
    for ext, data in made.items():
        model, meta = load_any_bytes(data, f"download.{ext}")
        assert evaluate(model, ev).accuracy == record.metrics.eval_accuracy, ext
        assert meta["eval_accuracy"] == f"{record.metrics.eval_accuracy:.4f}" and meta["name"] == record.name, ext


@pytest.mark.parametrize("name,content", [
    ("truncated.safetensors", state_dict_bytes(create_model("resnet8"), {"arch": "resnet8"})[:5000]),
    ("evil.safetensors", b"\x80\x04\x95" + b"cos\nsystem\n" * 50),
    ("wrong.safetensors", state_dict_bytes(create_model("resnet8"), {"arch": "resnet20"})),
])
def test_bad_uploads_show_an_error_not_an_exception(app, name, content):
    goto(app, "compare")
    before = [r.id for r in kept(app)]
    app.file_uploader(key="upload_file").set_value((name, content, "application/octet-stream")).run()
    assert not app.exception
    assert app.error and name in app.error[0].value
    assert [r.id for r in kept(app)] == before, "nothing is lost, nothing half-added"


def test_nan_upload_is_refused(app):
    model = create_model("resnet8")
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    goto(app, "compare")
    app.file_uploader(key="upload_file").set_value(
        ("nan.safetensors", state_dict_bytes(model, {"arch": "resnet8"}), "application/octet-stream")).run()
    assert not app.exception and "NaN" in app.error[0].value


def test_good_upload_is_evaluated_and_added(app):
    goto(app, "compare")
    before = len(kept(app))
    data = state_dict_bytes(create_model("resnet8"), {"arch": "resnet8"})
    app.file_uploader(key="upload_file").set_value(("mine.safetensors", data, "application/octet-stream")).run()
    assert not app.exception and not app.error
    assert [r.name for r in kept(app)[before:]] == ["mine.safetensors (uploaded)"]


def test_missing_data_folder_is_a_message_and_the_sample_stays(app, tmp_path, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_DATA_ROOTS", str(tmp_path))       # AppTest's visitor is not on localhost
    app.run()
    app.sidebar.radio(key="data_choice").set_value("Local folder").run()
    app.sidebar.text_input(key="data_folder").set_value(str(tmp_path / "nothing-here")).run()
    assert not app.exception
    assert any("no CIFAR-10 folder" in e.value for e in app.sidebar.error)
    assert any("bundled sample" in c.value for c in app.sidebar.caption)


# --- part 2: quantize, distill, weight sharing, pipelines, lesson links ----------------------------------

def test_bits_slider_bounds_the_distinct_weight_values(app):
    goto(app, "quantize")
    for bits in (2, 3, 5):
        app.select_slider(key="quantize_bits").set_value(bits).run()
        assert not app.exception
        per_filter = int(metric(app, "Distinct values per filter").replace(",", ""))
        assert per_filter <= 2 ** bits
    app.radio(key="quantize_granularity").set_value("per-tensor").run()
    assert int(metric(app, "Distinct values in the layer").replace(",", "")) <= 2 ** 5


def test_activation_quantization_and_reduced_floats_show_their_accuracy(app):
    from compression.activations import quantize_model, to_reduced_float
    from compression.data import eval_subset, load_sample
    from compression.train import evaluate
    from ui.format import accuracy

    goto(app, "quantize")
    app.radio(key="quantize_what").set_value("weights + activations").run()
    app.slider(key="quantize_abits").set_value(4).run()
    assert not app.exception
    model, ev = model_in_hand(app), eval_subset(load_sample(splits=("test",)))
    calib = load_sample(splits=("train",)).subset(slice(0, 256))
    expected = evaluate(quantize_model(model, 8, 4, calib, symmetric=True, per_channel=True, batches=2), ev).accuracy
    assert metric(app, "Eval accuracy") == accuracy(expected)
    assert "Weights of layer1.1.conv2 (grid of filter 0)" in chart_titles(app)
    app.select_slider(key="quantize_bits").set_value("bf16").run()
    assert not app.exception
    assert metric(app, "Eval accuracy") == accuracy(evaluate(to_reduced_float(model, "bf16"), ev).accuracy)
    assert any(c.value == "Activations rounded through bf16 too." for c in app.caption)
    assert "Weights of layer1.1.conv2" in chart_titles(app), "a float format has no grid to draw"


def test_temperature_raises_the_entropy_of_the_teachers_answer(app):
    from compression.distill import entropy, softened_probabilities
    from ui.state import gallery

    goto(app, "distill")
    teacher = store().model(my_workspace(app), pretrained(app, "resnet20").id)
    entropies = []
    for t in (1.0, 4.0, 10.0):
        app.slider(key="distill_T").set_value(t).run()
        assert not app.exception
        entropies.append(float(metric(app, "Entropy of the teacher's answer").split()[0]))
        expected = float(entropy(softened_probabilities(teacher, gallery().images[0], t)))
        assert metric(app, "Entropy of the teacher's answer") == f"{expected:.2f} nats"
        assert f"Teacher's probabilities at T = {t:g}" in chart_titles(app)
    assert entropies == sorted(entropies) and entropies[0] < entropies[-1]


def test_clusters_slider_bounds_the_distinct_values(app):
    from compression.views import distinct_values, layer_names
    from ui import cached
    from ui.state import eval_set

    from compression.packed import pack_model
    from ui.format import kib

    goto(app, "share")
    for k in (4, 16):
        app.select_slider(key="share_k").set_value(k).run()
        assert not app.exception
        variant_id = app.session_state["current"]
        shared, _ = cached.shared(variant_id, k, model_in_hand(app), eval_set())
        for name in layer_names(shared):
            assert distinct_values(shared, name) <= k + 1     # k centroids, and zero if pruned
        assert metric(app, "Packed size") == kib(len(pack_model(shared)))
        assert f"Weights of layer1.1.conv2: {k} shared values" in chart_titles(app)
        assert "Bits per nonzero weight, per layer" in chart_titles(app)


def test_pipeline_page_runs_deep_compression_and_adds_its_stages(app):
    goto(app, "pipeline")
    app.slider(key="pipeline_sparsity").set_value(80).run()
    app.number_input(key="pipeline_ft").set_value(0).run()
    next(b for b in app.button if b.label.startswith("Run Deep Compression")).click().run()
    job = wait_for_job(app, "pipeline")
    assert job.status == "done", job.error
    app.run()
    assert any(s.value == "Deep Compression finished: 2 variants joined the table." for s in app.success)
    assert "Size against accuracy, stage by stage" in chart_titles(app)
    stages = app.dataframe[0].value
    assert list(stages["stage"]) == ["1 pruned", "3 weight sharing", "4 Huffman coding"]
    assert list(stages["sparsity (%)"]) == [80.0, 80.0, 80.0]
    goto(app, "compare")
    names = list(app.dataframe[0].value["name"])
    assert any("DC pruned 80%" in n for n in names) and any("shared k=16" in n for n in names)


def test_a_lesson_link_restores_the_page(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    at.query_params.update({"bits": "3", "granularity": "per-channel", "mode": "asymmetric"})
    at.switch_page("app_pages/quantize.py").run()
    assert not at.exception
    assert at.select_slider(key="quantize_bits").value == 3
    assert at.radio(key="quantize_granularity").value == "per-channel"
    assert at.radio(key="quantize_mode").value == "asymmetric"
    assert at.query_params["bits"] == ["3"] or at.query_params["bits"] == "3"   # the URL mirrors the page


def test_a_bad_lesson_link_falls_back_to_defaults(app):
    app.query_params.update({"bits": "banana", "ratio": "250"})
    goto(app, "quantize")
    assert app.select_slider(key="quantize_bits").value == 8


# --- hostile and careless input (issue 16) -----------------------------------------------------------------

def test_a_data_folder_with_string_labels_is_a_message_not_a_traceback(app, tmp_path, monkeypatch):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batch = pickle.dumps({"data": np.zeros((10, 3072), np.uint8), "labels": ["cat"] * 10}, protocol=2)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch)
    monkeypatch.setenv("PLAYGROUND_DATA_ROOTS", str(tmp_path))
    app.run()
    app.sidebar.radio(key="data_choice").set_value("Local folder").run()
    app.sidebar.text_input(key="data_folder").set_value(str(tmp_path)).run()
    assert not app.exception
    assert any("labels" in e.value and "whole numbers" in e.value for e in app.sidebar.error)


def test_nobody_reads_server_folders_when_the_operator_says_off(assets, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_DATA_ROOTS", "off")
    at = new_app(assets, monkeypatch)
    at.run()
    assert "Local folder" not in at.sidebar.radio(key="data_choice").options


def test_visitors_from_elsewhere_cannot_read_server_folders_by_default(assets, monkeypatch):
    monkeypatch.delenv("PLAYGROUND_DATA_ROOTS", raising=False)
    at = new_app(assets, monkeypatch)                  # AppTest's visitor has no loopback address
    at.run()
    assert "Local folder" not in at.sidebar.radio(key="data_choice").options


def test_local_folders_are_confined_to_the_operators_roots(assets, monkeypatch, tmp_path):
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("PLAYGROUND_DATA_ROOTS", str(allowed))
    at = new_app(assets, monkeypatch)
    at.run()
    at.sidebar.radio(key="data_choice").set_value("Local folder").run()
    at.sidebar.text_input(key="data_folder").set_value(str(allowed / ".." / "elsewhere")).run()
    assert not at.exception
    assert any("outside the folders" in e.value for e in at.sidebar.error)


def test_link_values_are_shown_as_text_not_markdown(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    at.query_params.update({"method": "[x](http://evil.example)", "scope": "![i](http://evil.example/i.png)"})
    at.switch_page("app_pages/prune.py").run()
    assert not at.exception
    toasts = [t.value for t in at.toast]
    assert len(toasts) == 2, toasts
    for toast in toasts:
        assert "](http" not in toast and "\\[" in toast, toast     # escaped: shown as the characters they are


def test_a_huge_link_value_is_ignored_with_a_short_message(assets, monkeypatch):
    at = new_app(assets, monkeypatch)
    at.run()
    at.query_params.update({"ratio": "7" * 100_000})
    at.switch_page("app_pages/prune.py").run()
    assert not at.exception
    assert at.slider(key="prune_ratio").value == 50
    assert len(at.toast) == 1 and len(at.toast[0].value) < 200 and "100,000 characters" in at.toast[0].value


def test_file_metadata_in_an_error_is_shown_as_text(app):
    model = create_model("resnet8")
    data = state_dict_bytes(model, {"arch": "[click me](http://evil.example)"})
    goto(app, "compare")
    app.file_uploader(key="upload_file").set_value(("m.safetensors", data, "application/octet-stream")).run()
    assert not app.exception
    assert app.error and "](http" not in app.error[0].value and "click me" in app.error[0].value


def test_an_upload_far_larger_than_the_app_makes_is_refused_at_once(app):
    from helpers import zero_packed

    goto(app, "compare")
    before = [r.id for r in kept(app)]
    app.file_uploader(key="upload_file").set_value(("huge.cmpk", zero_packed("resnet56", 8.0), "x")).run()
    assert not app.exception
    assert "largest model this app evaluates" in app.error[0].value
    assert [r.id for r in kept(app)] == before


def test_a_failing_fragment_shows_a_message_not_a_traceback(tmp_path, monkeypatch):
    script = tmp_path / "fragment_app.py"
    script.write_text("from ui import safety\n\n"
                      "@safety.fragment(run_every=None)\n"
                      "def part():\n"
                      "    raise TypeError('internal detail /srv/secret/path.py')\n\n"
                      "part()\n")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(script), default_timeout=60)
    at.run()
    assert not at.exception
    assert "unexpected error (TypeError)" in at.error[0].value
    assert "/srv/secret" not in at.error[0].value
