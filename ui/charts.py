"""Plotly figures readable on a projector: large fonts, axis titles with units, legends, and the same
colours for the same things on every page (before = blue, after = orange)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

BEFORE, AFTER, ACCENT, MUTED = "#1f77b4", "#ff7f0e", "#2ca02c", "#9e9e9e"
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
FONT = dict(size=16)
# Every figure starts from this template: plotly gives a new figure its default template without
# validating it again, while `update_layout(template=…)` validates the whole template each time
# (about 0.15 s of the server's time per chart, for the same figure).
pio.templates.default = "plotly_white"


def style(fig: go.Figure, title: str, x: str, y: str, height: int = 380) -> go.Figure:
    fig.update_layout(title=dict(text=title, font=dict(size=19)), font=FONT, height=height,
                      margin=dict(l=60, r=20, t=60, b=55), xaxis_title=x, yaxis_title=y,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0))
    return fig


def histogram_before_after(before, after=None, title="Weights", before_name="before", after_name="after",
                           levels=None, level_name="quantization levels") -> go.Figure:
    """Bars of `views.Histogram`s; `after` drawn over `before`. `levels` marks values with lines."""
    fig = go.Figure()
    fig.add_bar(x=before.centers, y=before.counts, width=before.width, name=before_name,
                marker_color=BEFORE, opacity=0.55)
    if after is not None:
        fig.add_bar(x=after.centers, y=after.counts, width=after.width, name=after_name,
                    marker_color=AFTER, opacity=0.75)
    if levels is not None and len(levels):
        ys = [0, max(before.counts.max(), after.counts.max() if after is not None else 0)]
        xs, yy = [], []
        for v in levels:
            xs += [v, v, None]
            yy += [ys[0], ys[1], None]
        fig.add_scatter(x=xs, y=yy, mode="lines", line=dict(color=ACCENT, width=1.5), name=level_name)
    fig.update_layout(barmode="overlay", bargap=0)
    return style(fig, title, "weight value", "number of weights")


def bars(names, values, title, y, color=AFTER, x="layer", reference=None, reference_name="before",
         y_range=None, text_format=None) -> go.Figure:
    fig = go.Figure()
    if reference is not None:
        fig.add_bar(x=names, y=reference, name=reference_name, marker_color=BEFORE)
    fig.add_bar(x=names, y=values, name="after" if reference is not None else y, marker_color=color,
                text=[text_format.format(v) for v in values] if text_format else None)
    fig.update_layout(barmode="group", xaxis_tickangle=-45)
    if y_range:
        fig.update_yaxes(range=y_range)
    return style(fig, title, x, y)


def allocation(names, auto, uniform, title, y, y_range=None) -> go.Figure:
    """Per-layer settings the tool chose (orange) beside the uniform ones at the same budget (blue)."""
    fig = go.Figure()
    if uniform is not None:
        fig.add_bar(x=names, y=uniform, name="uniform", marker_color=BEFORE)
    fig.add_bar(x=names, y=auto, name="auto (chosen per layer)", marker_color=AFTER)
    fig.update_layout(barmode="group", xaxis_tickangle=-45)
    if y_range:
        fig.update_yaxes(range=y_range)
    return style(fig, title, "layer", y, height=420)


def curve_with_marker(xs, ys, here_x, here_y, title, x, y, name="one-shot", x_is_percent=True,
                      extra: dict | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=name, line=dict(color=BEFORE, width=3))
    for label, (ex, ey) in (extra or {}).items():
        fig.add_scatter(x=ex, y=ey, mode="lines+markers", name=label)
    if here_x is not None and here_y is not None:
        fig.add_scatter(x=[here_x], y=[here_y], mode="markers+text", name="you are here",
                        marker=dict(color=AFTER, size=18, symbol="star"), text=["you are here"],
                        textposition="top center")
    fig = style(fig, title, x, y)
    if x_is_percent:
        fig.update_xaxes(ticksuffix=" %")
    return fig


def training_curves(events: list[dict], title="Training", second=None, label="") -> go.Figure:
    """Loss (left axis) and accuracy (right axis) against epoch from TrainEvent dicts.
    `second`: (label, events) of another run to draw dashed, for side-by-side comparisons."""
    fig = go.Figure()
    runs = [(label, events, "solid")] + ([(second[0], second[1], "dash")] if second else [])
    for label, evs, dash in runs:
        evs = [e for e in evs if "epoch" in e and e.get("kind") in ("step", "epoch", "done")]
        if not evs:
            continue
        prefix = f"{label} " if label else ""
        fig.add_scatter(x=[e["epoch"] for e in evs], y=[e["loss"] for e in evs], name=f"{prefix}loss",
                        line=dict(color=MUTED if dash == "solid" else "#555555", dash=dash))
        fig.add_scatter(x=[e["epoch"] for e in evs], y=[100 * e["train_acc"] for e in evs],
                        name=f"{prefix}train accuracy", yaxis="y2", line=dict(color=BEFORE, dash=dash))
        tests = [e for e in evs if e.get("test_acc") is not None]
        if tests:
            fig.add_scatter(x=[e["epoch"] for e in tests], y=[100 * e["test_acc"] for e in tests],
                            name=f"{prefix}eval accuracy", yaxis="y2", mode="lines+markers",
                            line=dict(color=AFTER, dash=dash, width=3))
    fig.update_layout(yaxis2=dict(title="accuracy (%)", overlaying="y", side="right", range=[0, 100]))
    return style(fig, title, "epoch", "loss")


def heatmap(matrix: np.ndarray, title: str, x: str, y: str) -> go.Figure:
    fig = go.Figure(go.Heatmap(z=matrix, colorscale=[[0, "#ffffff"], [1, BEFORE]], zmin=0, zmax=1,
                               showscale=False, hovertemplate="filter %{y}, weight %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    return style(fig, title, x, y, height=420)


def pareto(rows: list[dict], frontier_ids: list[str], title="Size against accuracy") -> go.Figure:
    fig = go.Figure()
    techniques = sorted({r["technique"] for r in rows})
    for i, t in enumerate(techniques):
        rs = [r for r in rows if r["technique"] == t]
        fig.add_scatter(x=[r["bytes_packed"] / 1024 for r in rs], y=[100 * (r["eval_accuracy"] or 0) for r in rs],
                        mode="markers", name=t, text=[r["name"] for r in rs],
                        marker=dict(size=14, color=PALETTE[i % len(PALETTE)]),
                        hovertemplate="%{text}<br>%{x:.1f} KiB, %{y:.1f} %<extra></extra>")
    front = sorted([r for r in rows if r["id"] in frontier_ids], key=lambda r: r["bytes_packed"])
    if front:
        fig.add_scatter(x=[r["bytes_packed"] / 1024 for r in front], y=[100 * r["eval_accuracy"] for r in front],
                        mode="lines", name="Pareto frontier", line=dict(color="#333333", dash="dot", width=2),
                        line_shape="hv")
    fig = style(fig, title, "packed size (KiB, log scale)", "eval accuracy (%)", height=440)
    fig.update_xaxes(type="log")
    return fig
