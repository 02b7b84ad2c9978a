import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from compression.jobs import run_pipeline
from compression.pipelines import deep_compression, spiral
from compression.share import K_CHOICES as CLUSTERS
from ui import charts, lesson, safety, state
from ui.format import accuracy, plain
from ui.jobs import job_status, start_job

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


def deep_compression_job(variant, data):
    """The Deep Compression controls; returns the job function to run them."""
    c1, c2, c3 = st.columns(3)
    percent = c1.slider("Prune to sparsity (%)", 0, 99, key="pipeline_sparsity")
    ft = c2.number_input("Fine-tune epochs after pruning", 0, 20, 1, key="pipeline_ft")
    k = c3.select_slider("Clusters per layer", CLUSTERS, key="pipeline_k")
    cft = c3.number_input("Centroid fine-tune epochs", 0, 20, 0, key="pipeline_cft")
    lesson.link(st, "pipeline", ["pipeline_kind", "pipeline_sparsity", "pipeline_k"])
    train_set = data.train
    return lambda j: run_pipeline(deep_compression(
        variant, train_set, data.eval, percent / 100, k, ft, cft, stop=j.should_stop), j.report)


def spiral_job(variant, data):
    """The spiral's controls; returns the job function to run them."""
    c1, c2, c3 = st.columns(3)
    rounds = c1.slider("Rounds", 1, 10, key="pipeline_rounds")
    per_round = c2.slider("Ratio pruned per round (% of what is left)", 5, 90, key="pipeline_per_round")
    T = c3.slider("KD temperature", 1.0, 20.0, step=0.5, key="pipeline_T")
    epochs = c1.number_input("Distillation epochs per round", 1, 20, 1, key="pipeline_epochs")
    amount = 1 - (1 - per_round / 100) ** rounds
    c2.caption(f"After {rounds} rounds: {100 * amount:.1f} % of the weights pruned.")
    lesson.link(st, "pipeline", ["pipeline_kind", "pipeline_rounds", "pipeline_per_round", "pipeline_T"])
    train_set = data.train
    return lambda j: run_pipeline(spiral(
        variant, train_set, data.eval, rounds, amount, epochs, T, stop=j.should_stop), j.report)


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


@safety.fragment(run_every=1.0)
def progress():
    job, events = job_status("pipeline", what="The pipeline", done=lambda job: (
        f"{job.title} finished: {len(job.result)} variants joined the table."))
    if job is None:
        st.info("Pick settings and run: each stage appears below as it finishes.")
        return
    stages = [e for e in events if e.get("phase") == "stage"]
    train_events = [e for e in events if e.get("phase") == "train"]
    if stages:
        stages_chart(stages)
    if train_events and job.active:
        st.plotly_chart(charts.training_curves(train_events[-400:], "Current training stage"), key="pipeline_train")


def pipeline_page() -> None:
    intro()
    variant = state.require_current()
    data = state.data_in_use()
    lesson.restore("pipeline", {"pipeline_kind": "Deep Compression", "pipeline_sparsity": 90, "pipeline_k": 16,
                                "pipeline_rounds": 3, "pipeline_per_round": 50, "pipeline_T": 4.0},
                   choices={"pipeline_kind": KINDS, "pipeline_k": CLUSTERS},
                   bounds={"pipeline_sparsity": (0, 99), "pipeline_rounds": (1, 10), "pipeline_per_round": (5, 90),
                           "pipeline_T": (1.0, 20.0)})
    kind = st.radio("Pipeline", KINDS, horizontal=True, key="pipeline_kind")
    run = deep_compression_job(variant, data) if kind == KINDS[0] else spiral_job(variant, data)
    if st.button(f"Run {kind} on “{plain(variant.name)}”", type="primary", icon=":material/play_arrow:"):
        start_job("pipeline", kind, run, "A pipeline of yours is already running.")
    progress()


pipeline_page()
