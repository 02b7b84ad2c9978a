"""The class board's chart: every entry of a challenge on size against eval accuracy, the Pareto frontier,
the constraints as shaded regions, the starting model and (optionally) reference points.

Everything drawn comes from compression.board.board(): the page only converts units (bytes → KiB,
fractions → %) and escapes what students typed. The allowed side of each constraint on the chart's two
axes is a translucent green band; where the bands overlap is the target. Constraints on other metrics
(sparsity, bits per weight) cannot be drawn on these axes: the page lists them under the chart.

The log-scaled x axis gets few, round ticks: sizes at powers of two labelled with their unit ("16 KiB",
"64 KiB", "1 MiB"; ×2 apart, or ×4, ×16 when the range is wide), other metrics at 1-2-5 steps (decades
when the range is wide). The range widens to the nearest ticks when fewer than two fall inside it.
"""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go

from compression.board import Board

from .charts import ACCENT, BEFORE, MUTED, style

PASS, FAIL, REFERENCE = ACCENT, "#d62728", "#6a3d9a"
# metric -> (axis title, factor from the board's unit to the axis unit)
X_AXES = {"bytes_packed": ("packed size (log scale)", 1 / 1024), "macs": ("MACs (millions, log scale)", 1e-6),
          "nonzero_macs": ("MACs of nonzero weights (millions, log scale)", 1e-6),
          "bits_per_weight": ("bits per weight (log scale)", 1.0),
          "int8_latency_ms": ("int8 latency at batch 1 (ms, log scale)", 1.0)}
LABELLED = 12                       # name every point up to this many; beyond, only the first CROWDED_LABELS ranks
CROWDED_LABELS = 3                  # (names of points close together overlap; hovering names every point)
MAX_TICKS = 8                       # on the log-scaled x axis


def drawable(b: Board) -> tuple[list[dict], list[dict]]:
    """(regions on this chart's axes, regions on other metrics: listed in words under the chart)."""
    on = [r for r in b.regions if r["metric"] in (b.x, "eval_accuracy")]
    return on, [r for r in b.regions if r not in on]


def board_chart(b: Board, references: bool = False, height: int = 560, large: bool = False) -> go.Figure:
    """The board's figure (module docstring). `references`: also the published and project points;
    `large`: type for a projector (presenter mode)."""
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
    ticks, labels, (x_lo, x_hi) = (size_ticks if b.x == "bytes_packed" else number_ticks)(x_lo, x_hi)
    y_lo, y_hi = max(0.0, min(ys + limits_y, default=0) - 5), min(100.0, max(ys + limits_y, default=100) + 6)  # labels
    fig = go.Figure()
    for region in on:
        _shade(fig, region, b.x, scale, (x_lo, x_hi), (y_lo, y_hi))
    _entries(fig, points, b.frontier, scale)
    _start(fig, b, scale)
    for kind, symbol in (("published", "diamond-open"), ("project", "square-open")):
        _references(fig, [r for r in refs if r["kind"] == kind], kind, symbol, scale)
    fig = style(fig, "", title, "eval accuracy (%), 1,000-image eval subset", height=height)
    fig.update_xaxes(type="log", range=[_log10(x_lo), _log10(x_hi)], tickmode="array", tickvals=ticks,
                     ticktext=labels, minor=dict(showgrid=False))
    fig.update_yaxes(range=[y_lo, y_hi])
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=-0.14, xanchor="left", x=0),
                      margin=dict(t=20, b=120))
    if large:
        fig.update_layout(font=dict(size=20))
        fig.update_traces(textfont=dict(size=22), selector=dict(mode="markers+text"))
    return fig


def _log10(v: float) -> float:
    return math.log10(max(v, 1e-12))


def size_ticks(lo: float, hi: float) -> tuple[list[float], list[str], tuple[float, float]]:
    """Ticks between lo and hi KiB at powers of two, at most MAX_TICKS (module docstring):
    (values in KiB, labels, the axis range)."""
    lo, hi = max(lo, 1e-6), max(hi, 2e-6)
    k0, k1 = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    stride = 1
    while (k1 - k0) // stride + 1 > MAX_TICKS:
        stride *= 2
    return _within([2.0 ** k for k in range(k0 - stride, k1 + stride + 1) if k % stride == 0], lo, hi, size_label)


def size_label(kib: float) -> str:
    if kib >= 1024:
        return f"{kib / 1024:g} MiB"
    return f"{kib:g} KiB" if kib >= 1 else f"{kib * 1024:g} B"


def number_ticks(lo: float, hi: float) -> tuple[list[float], list[str], tuple[float, float]]:
    """Ticks between lo and hi at 1-2-5 steps, or decades when those are more than MAX_TICKS."""
    lo, hi = max(lo, 1e-12), max(hi, 2e-12)
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for steps in ((1, 2, 5), (1,)):
        values = [float(f"{m}e{e}") for e in decades for m in steps]
        if sum(lo <= v <= hi for v in values) <= MAX_TICKS:
            break
    return _within(values, lo, hi, lambda v: f"{v:,g}")


def _within(values: list[float], lo: float, hi: float, label) -> tuple[list[float], list[str], tuple[float, float]]:
    """The values inside [lo, hi] with their labels, and the range, widened to the nearest values outside
    when fewer than two are inside."""
    inside = [v for v in values if lo <= v <= hi]
    if len(inside) < 2:
        lo = max((v for v in values if v <= lo), default=lo)
        hi = min((v for v in values if v >= hi), default=hi)
        inside = [v for v in values if lo <= v <= hi]
    return inside, [label(v) for v in inside], (lo, hi)


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
        p["id"] for p in points if p["rank"] and p["rank"] <= CROWDED_LABELS}
    for passed, colour, name in ((True, PASS, "meets every constraint"), (False, FAIL, "misses a constraint")):
        group = [p for p in points if p["passed"] == passed]
        if not group:
            continue
        fig.add_scatter(
            x=[p["x"] * scale for p in group], y=[100 * p["y"] for p in group], mode="markers+text", name=name,
            text=[_label(p) if p["id"] in named else "" for p in group],
            textposition=["bottom center" if (p["rank"] or 0) % 2 == 0 else "top center" for p in group],
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
