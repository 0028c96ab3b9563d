"""Plotly figures for the app (numpy in, figure out)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

BASE_C, TUNED_C, GOLD_C = "#9aa5b1", "#2563eb", "#f59e0b"
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#e377c2", "#8c564b", "#7f7f7f", "#bcbd22"]  # D3
LAYOUT = dict(template="plotly_white", margin=dict(l=40, r=20, t=50, b=40), font=dict(size=13))


def scatter_vs_gold(gold: Sequence[float], sides: dict[str, tuple[Sequence[float], float | None]]) -> go.Figure:
    """Cosine vs human score, one series per side: {name: (cosines, Spearman x100 or None)}."""
    fig = go.Figure()
    for (name, (cos, rho)), color in zip(sides.items(), (BASE_C, TUNED_C)):
        fig.add_trace(go.Scattergl(x=gold, y=cos, mode="markers", name=f"{name} (ρ={rho:.1f})" if rho is not None else name,
                                   marker=dict(color=color, size=7, opacity=0.7)))
    fig.update_layout(title="Cosine vs human score (Spearman ρ ×100)", xaxis_title="human score",
                      yaxis_title="cosine", height=420, legend=dict(orientation="h", y=-0.2), **LAYOUT)
    return fig


def cosine_histogram(sides: dict[str, np.ndarray], title: str) -> go.Figure:
    """Overlaid histograms of cosines, one per side: {name: (n,) cosines}."""
    fig = go.Figure()
    bins = dict(start=-0.2, end=1.0, size=0.02)
    for (name, cos), color in zip(sides.items(), (BASE_C, TUNED_C)):
        fig.add_trace(go.Histogram(x=cos, xbins=bins, name=f"{name}: mean {cos.mean():.2f}", marker_color=color, opacity=0.75))
    fig.update_layout(barmode="overlay", title=title, xaxis_title="cosine of a random pair", yaxis_title="pairs",
                      height=380, legend=dict(orientation="h", y=-0.25), **LAYOUT)
    return fig


def twin_maps(xy_a: np.ndarray, xy_b: np.ndarray, texts: Sequence[str], labels: Sequence[str],
              titles: tuple[str, str], queries: tuple[np.ndarray, np.ndarray, list[str]] | None = None) -> go.Figure:
    """Two side-by-side scatter maps (side A, side B: (N, 2) each), coloured by label, hover = text."""
    # "A: <spec>" on two lines: on a phone the two titles are ~170 px apart and ran into each other
    titles = tuple(t.replace(": ", ":<br>", 1) for t in titles)
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.04)
    fig.update_annotations(font_size=13)
    uniq = list(dict.fromkeys(labels))
    hover = [t if len(t) <= 120 else t[:117] + "…" for t in texts]
    lab = np.asarray(labels)
    for col, xy in ((1, xy_a), (2, xy_b)):
        for i, u in enumerate(uniq):
            m = lab == u
            fig.add_trace(go.Scattergl(
                x=xy[m, 0], y=xy[m, 1], mode="markers", name=str(u), legendgroup=str(u), showlegend=col == 1,
                text=[h for h, k in zip(hover, m) if k], hovertemplate="%{text}<extra>" + str(u) + "</extra>",
                marker=dict(size=6, color=PALETTE[i % len(PALETTE)], opacity=0.75)), row=1, col=col)
        if queries is not None:
            qxy = queries[col - 1]
            fig.add_trace(go.Scattergl(x=qxy[:, 0], y=qxy[:, 1], mode="markers+text", text=queries[2],
                                       textposition="top center", name="your text", legendgroup="q",
                                       showlegend=col == 1, marker=dict(symbol="star", size=16, color="#111827")),
                          row=1, col=col)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(height=560, legend=dict(orientation="h", y=-0.05), **LAYOUT)
    return fig


def grouped_bars(tasks: Sequence[str], series: dict[str, Sequence[float]]) -> go.Figure:
    fig = go.Figure()
    for i, (name, vals) in enumerate(series.items()):
        fig.add_trace(go.Bar(x=list(tasks), y=list(vals), name=name, marker_color=PALETTE[i % len(PALETTE)]))
    fig.update_layout(barmode="group", title="STS Spearman ×100", yaxis_title="Spearman ×100", height=460,
                      legend=dict(orientation="h", y=-0.2), **LAYOUT)
    return fig


def loss_curve(curves: dict[str, Sequence[Sequence[float]]]) -> go.Figure:
    fig = go.Figure()
    for i, (name, pts) in enumerate(curves.items()):
        pts = np.asarray(pts, dtype=float)
        fig.add_trace(go.Scatter(x=pts[:, 0], y=pts[:, 1], mode="lines", name=name, line=dict(color=PALETTE[i % len(PALETTE)])))
    fig.update_layout(title="Training loss (InfoNCE)", xaxis_title="step", yaxis_title="loss", height=360, **LAYOUT)
    return fig
