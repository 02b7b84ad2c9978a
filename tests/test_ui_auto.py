"""The Auto mode of the Prune and Quantize pages (ui/auto.py), driven with AppTest on the stand-in resnet8: the
job's variants join the workspace meeting the budget, and the allocation is drawn again after a reload."""
import json

import pytest

pytest.importorskip("streamlit")
from app_fixtures import goto, my_workspace, new_app, pretrained, store, wait_for_job  # noqa: E402

from ui.format import accuracy  # noqa: E402


def in_hand(at, arch: str) -> str:
    vid = pretrained(at, arch).id
    at.sidebar.selectbox(key="model_in_hand_select").set_value(vid).run()
    assert not at.exception
    return vid


def click(at, label: str):
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, [e.value for e in at.exception]


def chart(at, title: str) -> dict:
    """The plotly figure of that title, as the page sent it."""
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(s for s in specs if s["layout"]["title"]["text"] == title)


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def reload(at, assets, monkeypatch, page: str):
    """The same workspace in a fresh tab (a reload): nothing of the old session's state."""
    again = new_app(assets, monkeypatch, ws=at.session_state["_workspace"][0])
    again.run()
    goto(again, page)
    again.radio(key=f"mode_{page}").set_value("Auto").run()
    assert not again.exception
    return again


def made(at, kind: str):
    job = wait_for_job(at, kind)
    assert job.status == "done", job.error
    return [store().variant(my_workspace(at), i) for i in job.result]


def test_auto_prune_meets_the_target_exactly_and_its_allocation_is_drawn_after_a_reload(app, assets, monkeypatch):
    parent = in_hand(app, "resnet8")
    goto(app, "prune")
    app.radio(key="mode_prune").set_value("Auto").run()
    assert not app.exception
    app.slider(key="auto_prune_target").set_value(60)
    app.select_slider(key="auto_prune_calib").set_value(64).run()
    click(app, "Find per-layer sparsities")
    auto, uniform = made(app, "auto_prune")
    assert auto.parent == uniform.parent == parent and auto.technique == uniform.technique == "pruned"
    (alloc,) = [h for h in auto.history if "allocation" in h]
    n = sum(r["params"] for r in alloc["layers"])
    zeros = sum(round(r["auto"] * r["params"]) for r in alloc["layers"])
    assert zeros == round(0.6 * n) and auto.metrics.sparsity == pytest.approx(zeros / n, abs=1e-9)
    assert len({round(r["auto"], 2) for r in alloc["layers"]}) > 1, "the layers get different sparsities"

    at = reload(app, assets, monkeypatch, "prune")
    fig = chart(at, "Sparsity per layer: auto against uniform")
    bars = {trace["name"]: trace["y"] for trace in fig["data"]}
    assert bars["auto (chosen per layer)"] == pytest.approx([100 * r["auto"] for r in alloc["layers"]])
    assert bars["uniform"] == pytest.approx([100 * r["uniform"] for r in alloc["layers"]])
    assert metric(at, "Auto: eval accuracy") == accuracy(auto.metrics.eval_accuracy)
    assert metric(at, "Uniform: eval accuracy") == accuracy(uniform.metrics.eval_accuracy)


def test_auto_quantize_fits_the_budget_and_its_allocation_is_drawn_after_a_reload(app, assets, monkeypatch):
    from compression.auto_prune import packed_size
    from compression.quantize import quantize_weights

    parent = in_hand(app, "resnet8")
    goto(app, "quantize")
    app.radio(key="mode_quantize").set_value("Auto").run()
    model = store().model(my_workspace(app), parent)
    budget_kib = round(packed_size(quantize_weights(model, 4)) / 1024 + 1, 1)
    app.number_input(key="auto_quant_budget").set_value(budget_kib)
    app.select_slider(key="auto_quant_calib").set_value(64).run()
    click(app, "Find per-layer bit widths")
    auto, uniform = made(app, "auto_quant")
    assert auto.parent == uniform.parent == parent and uniform.settings["bits"] == 4
    (alloc,) = [h for h in auto.history if "allocation" in h]
    assert auto.metrics.bytes_packed == alloc["packed_bytes"] <= int(budget_kib * 1024)
    assert uniform.metrics.bytes_packed <= int(budget_kib * 1024)

    at = reload(app, assets, monkeypatch, "quantize")
    bars = {t["name"]: t["y"] for t in chart(at, "Bits per layer: auto against uniform")["data"]}
    assert bars["auto (chosen per layer)"] == [r["auto"] for r in alloc["layers"]] and set(bars["uniform"]) == {4}
    assert metric(at, "Packed size (auto)") == f"{alloc['packed_bytes'] / 1024:.1f} KiB"
    assert metric(at, "Auto: eval accuracy") == accuracy(auto.metrics.eval_accuracy)


def test_a_budget_below_two_bits_everywhere_is_a_message_not_a_job(app):
    in_hand(app, "resnet8")
    goto(app, "quantize")
    app.radio(key="mode_quantize").set_value("Auto").run()
    app.number_input(key="auto_quant_budget").set_value(1.0).run()
    assert not app.exception and "below what 2 bits in every layer take" in app.error[0].value
    assert not [b for b in app.button if b.label == "Find per-layer bit widths"]
