"""The class board's chart: every entry of a challenge on size against eval accuracy, the Pareto frontier,
the constraints as shaded regions, the starting model and (optionally) reference points.

Everything drawn comes from compression.board.board(): the page only converts units (bytes → KiB,
fractions → %) and escapes what students typed. The allowed side of each constraint on the chart's two
axes is a translucent green band; where the bands overlap is the target. Constraints on other metrics
(sparsity, bits per weight) cannot be drawn on these axes: the page lists them under the chart.
"""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from compression.board import Board

from .charts import ACCENT, BEFORE, MUTED, style

PASS, FAIL, REFERENCE = ACCENT, "#d62728", "#6a3d9a"
# metric -> (axis title, factor from the board's unit to the axis unit)
X_AXES = {"bytes_packed": ("packed size (KiB, log scale)", 1 / 1024), "macs": ("MACs (millions, log scale)", 1e-6),
          "nonzero_macs": ("MACs of nonzero weights (millions, log scale)", 1e-6),
          "bits_per_weight": ("bits per weight (log scale)", 1.0),
          "int8_latency_ms": ("int8 latency at batch 1 (ms, log scale)", 1.0)}
LABELLED = 12                       # name every point up to this many; beyond, only the first LABELLED ranks


def drawable(b: Board) -> tuple[list[dict], list[dict]]:
    """(regions on this chart's axes, regions on other metrics: listed in words under the chart)."""
    on = [r for r in b.regions if r["metric"] in (b.x, "eval_accuracy")]
    return on, [r for r in b.regions if r not in on]


def board_chart(b: Board, references: bool = False, height: int = 560) -> go.Figure:
    """The board's figure (module docstring). `references`: also the published and project points."""
    title, scale = X_AXES[b.x]
    points = [p for p in b.points if p["x"] is not None and p["y"] is not None]
    refs = [r for r in b.references if r.get("bytes") and r.get("accuracy")] if references and b.x == "bytes_packed" else []
    xs = [p["x"] * scale for p in points] + [r["bytes"] * scale for r in refs]
    ys = [100 * p["y"] for p in points] + [100 * r["accuracy"] for r in refs]
    if b.start.get(b.x) and b.start.get("eval_accuracy") is not None:
        xs.append(b.start[b.x] * scale)
        ys.append(100 * b.start["eval_accuracy"])
    on, _ = drawable(b)
    limits_x = [(r.get("max") or r.get("min")) * scale for r in on if r["metric"] == b.x]
    limits_y = [100 * (r.get("max") if r.get("max") is not None else r["min"]) for r in on if r["metric"] != b.x]
    x_lo, x_hi = min(xs + limits_x, default=1) / 1.6, max(xs + limits_x, default=100) * 1.6
    y_lo, y_hi = max(0.0, min(ys + limits_y, default=0) - 5), min(100.0, max(ys + limits_y, default=100) + 3)
    fig = go.Figure()
    for region in on:
        _shade(fig, region, b.x, scale, (x_lo, x_hi), (y_lo, y_hi))
    _entries(fig, points, b.frontier, scale)
    _start(fig, b, scale)
    for kind, symbol in (("published", "diamond-open"), ("project", "square-open")):
        _references(fig, [r for r in refs if r["kind"] == kind], kind, symbol, scale)
    fig = style(fig, "", title, "eval accuracy (%), 1,000-image eval subset", height=height)
    fig.update_xaxes(type="log", range=[_log10(x_lo), _log10(x_hi)])
    fig.update_yaxes(range=[y_lo, y_hi])
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.14, xanchor="left", x=0),
                      margin=dict(t=20, b=120))
    return fig


def _log10(v: float) -> float:
    return math.log10(max(v, 1e-12))


def _shade(fig: go.Figure, region: dict, x_metric: str, scale: float, xr: tuple, yr: tuple) -> None:
    """The allowed side of one constraint as a filled rectangle (a trace: it has a legend entry)."""
    if region["metric"] == x_metric:
        x0, x1 = (xr[0], region["max"] * scale) if "max" in region else (region["min"] * scale, xr[1])
        y0, y1 = yr
    else:
        x0, x1 = xr
        y0, y1 = (yr[0], 100 * region["max"]) if "max" in region else (100 * region["min"], yr[1])
    fig.add_scatter(x=[x0, x1, x1, x0, x0], y=[y0, y0, y1, y1, y0], fill="toself", mode="lines",
                    line=dict(width=1, color=PASS, dash="dot"), fillcolor="rgba(44,160,44,0.10)",
                    name=f"allowed: {html.escape(region['rule'])}", hoverinfo="skip")


def _label(p: dict) -> str:
    return (f"#{p['rank']} " if p["rank"] else "") + p["name_html"]


def _entries(fig: go.Figure, points: list[dict], frontier: list[str], scale: float) -> None:
    """Passing entries green, the others red; the frontier joins the entries nobody beats on both axes."""
    named = {p["id"] for p in points} if len(points) <= LABELLED else {
        p["id"] for p in points if p["rank"] and p["rank"] <= LABELLED}
    for passed, colour, name in ((True, PASS, "meets every constraint"), (False, FAIL, "misses a constraint")):
        group = [p for p in points if p["passed"] == passed]
        if not group:
            continue
        fig.add_scatter(
            x=[p["x"] * scale for p in group], y=[100 * p["y"] for p in group], mode="markers+text", name=name,
            text=[_label(p) if p["id"] in named else "" for p in group], textposition="top center",
            textfont=dict(size=15), customdata=[[_label(p), html.escape(p["recipe"])] for p in group],
            marker=dict(size=[22 if p["mine"] else 16 for p in group], color=colour,
                        line=dict(width=[3 if p["mine"] else 1 for p in group], color="#222222")),
            hovertemplate="%{customdata[0]}<br>%{customdata[1]}<br>%{x:.3g}, %{y:.1f} %<extra></extra>")
    front = sorted((p for p in points if p["id"] in frontier), key=lambda p: p["x"])
    if len(front) > 1:
        fig.add_scatter(x=[p["x"] * scale for p in front], y=[100 * p["y"] for p in front], mode="lines",
                        name="Pareto frontier", line=dict(color="#333333", dash="dot", width=2), line_shape="hv",
                        hoverinfo="skip")


def _start(fig: go.Figure, b: Board, scale: float) -> None:
    if not b.start.get(b.x) or b.start.get("eval_accuracy") is None:
        return
    fig.add_scatter(x=[b.start[b.x] * scale], y=[100 * b.start["eval_accuracy"]], mode="markers+text",
                    name=html.escape(b.start["label"]), text=["start"], textposition="bottom center",
                    marker=dict(size=18, color=BEFORE, symbol="star"),
                    hovertemplate="the starting model<br>%{x:.3g}, %{y:.1f} %<extra></extra>")


def _references(fig: go.Figure, refs: list[dict], kind: str, symbol: str, scale: float) -> None:
    """Reference points: marked as such, with their source and what they were measured on."""
    if not refs:
        return
    fig.add_scatter(
        x=[r["bytes"] * scale for r in refs], y=[100 * r["accuracy"] for r in refs], mode="markers",
        name=f"reference ({'published' if kind == 'published' else 'this project, docs/RESULTS.md'})",
        marker=dict(size=15, color=REFERENCE if kind == "published" else MUTED, symbol=symbol, line=dict(width=2)),
        customdata=[[html.escape(r["label"]), html.escape(r["bytes_kind"]), html.escape(r["source"][:90])]
                    for r in refs],
        hovertemplate="reference: %{customdata[0]}<br>%{customdata[1]}<br>%{customdata[2]}<extra></extra>")
