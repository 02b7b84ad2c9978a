"""What one Prune-page chart costs the server to build, in CPU seconds (time.process_time: the same on a
busy machine), the way the pages build them (ui/charts.py) and the way they did before issue 19, when
style() set `template="plotly_white"` with update_layout, which validates the whole template again.

    python bench/chart_cost.py [--repeat 20]

Both ways give the same figure (asserted: equal JSON once parsed).
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from compression.views import histogram  # noqa: E402  (the app's modules, from this checkout)
from ui import charts  # noqa: E402

NAMES = [f"layer{i}.conv" for i in range(20)]


def page_charts() -> list:
    """The Prune page's four charts for a resnet20 layer of 16 filters × 144 weights."""
    rng = np.random.default_rng(0)
    h = histogram(torch.from_numpy(rng.normal(size=2304)), value_range=(-3.0, 3.0))
    return [charts.bars(NAMES, list(rng.uniform(0, 100, 20)), "Sparsity per layer", "sparsity (%)", y_range=[0, 100]),
            charts.histogram_before_after(h, h, "Weights of layer1.1.conv2"),
            charts.heatmap((rng.uniform(size=(16, 144)) > 0.5).astype(float), "Mask", "weight", "filter"),
            charts.curve_with_marker(list(range(100)), list(range(100)), 50, 50, "AGP", "progress", "sparsity")]


def cpu_seconds(repeat: int) -> tuple[float, list]:
    page_charts()
    t0 = time.process_time()
    for _ in range(repeat):
        figures = page_charts()
    return (time.process_time() - t0) / repeat, [json.loads(f.to_json()) for f in figures]


def old_style(fig, title, x, y, height=380):
    """ui/charts.style as it was: the template set on every figure."""
    fig.update_layout(title=dict(text=title, font=dict(size=19)), font=charts.FONT, height=height,
                      margin=dict(l=60, r=20, t=60, b=55), xaxis_title=x, yaxis_title=y,
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
                      template="plotly_white")
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=20)
    repeat = p.parse_args().repeat
    now, now_json = cpu_seconds(repeat)
    new_style, charts.style = charts.style, old_style
    before, before_json = cpu_seconds(repeat)
    charts.style = new_style
    assert now_json == before_json, "the two ways must draw the same figures"
    print(f"4 Prune-page charts, CPU s per page: before {before:.3f}, now {now:.3f} ({before / now:.1f}x less)")


if __name__ == "__main__":
    main()
