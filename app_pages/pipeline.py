import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from compression.share import K_CHOICES as CLUSTERS
from ui import charts, jobs, lesson, state, workspace
from ui.format import accuracy, plain

KINDS = ["Deep Compression", "Prune ↔ distill spiral"]


def intro() -> None:
    st.title("Pipelines")
    st.markdown(
        "Techniques add up. **Deep Compression** (Han et al. 2016) prunes, fine-tunes, shares weights and "
        "Huffman-codes the result — about 35× smaller AlexNet with no accuracy lost. The **prune ↔ distill "
        "spiral** prunes a little each round and lets the previous round's model teach the pruned one, so "
        "knowledge is handed on before more weights go. Every stage below joins the variants.")
    st.latex(r"\text{ratio} = \frac{32\,N}{\underbrace{b_\text{pos}\,\text{nnz}}_\text{where}"
             r" + \underbrace{\lceil\log_2 k\rceil\,\text{nnz}}_\text{which value} + 32\,k}"
             r"\qquad s_r = 1-(1-p)^r")


def deep_compression_job(data) -> tuple[str, dict]:
    """The Deep Compression controls; returns the task and spec to run them."""
    c1, c2, c3 = st.columns(3)
    percent = c1.slider("Prune to sparsity (%)", 0, 99, key="pipeline_sparsity")
    ft = c2.number_input("Fine-tune epochs after pruning", 0, 20, 1, key="pipeline_ft")
    k = c3.select_slider("Clusters per layer", CLUSTERS, key="pipeline_k")
    cft = c3.number_input("Centroid fine-tune epochs", 0, 20, 0, key="pipeline_cft")
    lesson.link(st, "pipeline", ["pipeline_kind", "pipeline_sparsity", "pipeline_k"])
    return "deep_compression", {"data": data.spec(), "sparsity": percent / 100, "clusters": k,
                                "finetune_epochs": int(ft), "centroid_epochs": int(cft)}


def spiral_job(data) -> tuple[str, dict]:
    """The spiral's controls; returns the task and spec to run them."""
    c1, c2, c3 = st.columns(3)
    rounds = c1.slider("Rounds", 1, 10, key="pipeline_rounds")
    per_round = c2.slider("Ratio pruned per round (% of what is left)", 5, 90, key="pipeline_per_round")
    T = c3.slider("KD temperature", 1.0, 20.0, step=0.5, key="pipeline_T")
    epochs = c1.number_input("Distillation epochs per round", 1, 20, 1, key="pipeline_epochs")
    amount = 1 - (1 - per_round / 100) ** rounds
    c2.caption(f"After {rounds} rounds: {100 * amount:.1f} % of the weights pruned.")
    lesson.link(st, "pipeline", ["pipeline_kind", "pipeline_rounds", "pipeline_per_round", "pipeline_T"])
    return "spiral", {"data": data.spec(), "rounds": rounds, "final_sparsity": amount,
                      "epochs_per_round": int(epochs), "T": T}


def stages_chart(stages: list[dict]) -> None:
    fig = go.Figure()
    fig.add_scatter(x=[s["bytes"] / 1024 for s in stages], y=[100 * s["eval_accuracy"] for s in stages],
                    mode="lines+markers+text", text=[s["stage"] for s in stages], textposition="top center",
                    marker=dict(size=14, color=charts.AFTER), line=dict(color=charts.BEFORE), name="stages")
    fig = charts.style(fig, "Size against accuracy, stage by stage", "size (KiB, log scale)", "eval accuracy (%)")
    fig.update_xaxes(type="log")
    st.plotly_chart(fig, key="pipeline_chart")
    st.dataframe(pd.DataFrame([{"stage": s["stage"], "variant": s["variant"],
                                "eval accuracy": accuracy(s["eval_accuracy"]),
                                "sparsity (%)": round(100 * s["sparsity"], 1), "KiB": round(s["bytes"] / 1024, 1),
                                "ratio": f"{s['ratio']:.1f}×"} for s in stages]), hide_index=True)


@jobs.live
def progress():
    title = getattr(jobs.latest("pipeline"), "title", "")
    record, points = jobs.status("pipeline", what="The pipeline", done=lambda made: (
        f"{title} finished: {len(made)} variants joined the table."))
    if record is None:
        st.info("Pick settings and run: each stage appears below as it finishes.")
        return
    stages = record.progress.get("stages") or [p for p in points if p.get("phase") == "stage"]
    train_points = [p for p in points if p.get("phase") == "train"]
    if stages:
        stages_chart(stages)
    if train_points and record.active:
        st.plotly_chart(charts.training_curves(train_points[-400:], "Current training stage"), key="pipeline_train")


def pipeline_page() -> None:
    intro()
    variant = workspace.require_current()
    data = state.data_in_use()
    lesson.restore("pipeline", {"pipeline_kind": "Deep Compression", "pipeline_sparsity": 90, "pipeline_k": 16,
                                "pipeline_rounds": 3, "pipeline_per_round": 50, "pipeline_T": 4.0},
                   choices={"pipeline_kind": KINDS, "pipeline_k": CLUSTERS},
                   bounds={"pipeline_sparsity": (0, 99), "pipeline_rounds": (1, 10), "pipeline_per_round": (5, 90),
                           "pipeline_T": (1.0, 20.0)})
    kind = st.radio("Pipeline", KINDS, horizontal=True, key="pipeline_kind")
    task, spec = deep_compression_job(data) if kind == KINDS[0] else spiral_job(data)
    if st.button(f"Run {kind} on “{plain(variant.name)}”", type="primary", icon=":material/play_arrow:"):
        jobs.start("pipeline", kind, task, spec, inputs={"parent": variant.id},
                   busy_message="A pipeline of yours is already running.")
    progress()


pipeline_page()
