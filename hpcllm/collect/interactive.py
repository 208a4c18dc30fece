"""The report's plots, interactive (plotly): hovering a point names its run and its values.

The same lines as the PNG plots of ``collect --plot`` (``hpcllm.collect.plot``): scaling per
experiment, cluster and setup, efficiency against that group's smallest run; loss curves per run.
Each figure is an HTML fragment; the first carries plotly.js inline (``include_plotlyjs=True``,
~4 MB) so the page opens offline, the others reuse it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from hpcllm.collect.plot import efficiency, loss_curves, restart_steps, run_label, scaling_groups
from hpcllm.collect.records import RunRecord

if TYPE_CHECKING:
    import plotly.graph_objects as go

HEIGHT_PX = 460
_HOVER = "run %{customdata}<br>%{x} GPUs<br>%{meta}: %{y:.4g}<extra>%{fullData.name}</extra>"


def _html(fig: go.Figure, div_id: str, include_js: bool) -> str:
    fig.update_layout(height=HEIGHT_PX, margin={"l": 50, "r": 20, "t": 60, "b": 40}, hovermode="closest")
    return str(
        fig.to_html(
            full_html=False,
            include_plotlyjs=include_js,
            div_id=div_id,
            default_width="100%",
            default_height=f"{HEIGHT_PX}px",
            config={"responsive": True, "displaylogo": False},
        )
    )


def _group_traces(fig: Any, label: str, points: list[dict[str, Any]], color: str) -> None:
    """One group's lines: samples/s (with linear scaling dotted), MFU where known, efficiency."""
    import plotly.graph_objects as go

    gpus = [p["gpus"] for p in points]
    runs = [p["run"] for p in points]
    common: dict[str, Any] = {"name": label, "legendgroup": label, "customdata": runs, "hovertemplate": _HOVER}
    line = {"color": color}
    fig.add_trace(
        go.Scatter(
            x=gpus,
            y=[p["samples_per_s"] for p in points],
            mode="lines+markers",
            line=line,
            meta="samples/s",
            **common,
        ),
        row=1,
        col=1,
    )
    ideal = [points[0]["samples_per_s"] * g / points[0]["gpus"] for g in gpus]
    fig.add_trace(
        go.Scatter(
            x=gpus,
            y=ideal,
            mode="lines",
            line={"color": color, "dash": "dot", "width": 1},
            name=label,
            legendgroup=label,
            showlegend=False,
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )
    with_mfu = [p for p in points if p["mfu"] is not None]
    if with_mfu:
        fig.add_trace(
            go.Scatter(
                x=[p["gpus"] for p in with_mfu],
                y=[p["mfu"] for p in with_mfu],
                mode="lines+markers",
                line=line,
                showlegend=False,
                meta="MFU",
                **{**common, "customdata": [p["run"] for p in with_mfu]},
            ),
            row=1,
            col=2,
        )
    fig.add_trace(
        go.Scatter(
            x=gpus,
            y=efficiency(points),
            mode="lines+markers",
            line=line,
            showlegend=False,
            meta="efficiency",
            **common,
        ),
        row=1,
        col=3,
    )


def scaling_html(records: Iterable[RunRecord], div_id: str, include_js: bool) -> str:
    """Throughput, MFU and scaling efficiency against #GPUs, one line per group."""
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    groups = scaling_groups(records)
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=(
            "Throughput (dotted: linear scaling)",
            "MFU (seed's convention)",
            "Scaling efficiency (vs the group's smallest run)",
        ),
    )
    palette = qualitative.Plotly
    for n, (label, points) in enumerate(groups.items()):
        _group_traces(fig, label, points, palette[n % len(palette)])
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="#GPUs", type="log", dtick=0.30103, row=1, col=col)  # log2 ticks
    fig.update_yaxes(type="log", title_text="samples/s", row=1, col=1)
    fig.update_yaxes(title_text="MFU", row=1, col=2)
    fig.update_yaxes(title_text="per-GPU throughput / smallest run's", row=1, col=3)
    if not groups:
        fig.add_annotation(text="no completed runs", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    elif all(p["mfu"] is None for points in groups.values() for p in points):
        # An empty panel reads as a bug: say why there is no MFU (no peak FLOP/s to divide by). In
        # page coordinates: plotly draws no axes for a panel without traces, so "x2 domain" would
        # place the note in the first panel.
        left, right = fig.layout.xaxis2.domain
        fig.add_annotation(
            text="no MFU: no run knows its device's peak FLOP/s<br>(CPU runs: set metrics.cpu_peak_flops)",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=(left + right) / 2,
            y=0.5,
        )
    fig.update_layout(legend={"orientation": "h", "y": -0.2, "font": {"size": 11}})
    return _html(fig, div_id, include_js)


def loss_html(records: Iterable[RunRecord], div_id: str, include_js: bool) -> str:
    """Training loss per run against its step; evaluation losses as squares."""
    import plotly.graph_objects as go

    fig = go.Figure()
    curves = loss_curves(records)
    shown = len(curves)
    for r, metrics in curves:
        label = run_label(r)
        hover = "run %{customdata}<br>step %{x}<br>%{meta}: %{y:.4g}<extra></extra>"
        fig.add_trace(
            go.Scatter(
                x=[m["step"] for m in metrics],
                y=[m["loss"] for m in metrics],
                mode="lines+markers",
                marker={"size": 3},
                name=label,
                legendgroup=r.run_id,
                customdata=[r.run_id] * len(metrics),
                meta="loss",
                hovertemplate=hover,
            )
        )
        for step in restart_steps(metrics):
            fig.add_vline(x=step, line={"dash": "dash", "width": 1}, annotation_text="restart")
        evals = [(m["step"], m["eval_loss"]) for m in r.metrics if m.get("eval_loss") is not None]
        if evals:
            fig.add_trace(
                go.Scatter(
                    x=[s for s, _ in evals],
                    y=[v for _, v in evals],
                    mode="markers",
                    marker={"symbol": "square", "size": 7},
                    name=f"{label} (eval)",
                    legendgroup=r.run_id,
                    showlegend=False,
                    customdata=[r.run_id] * len(evals),
                    meta="eval loss",
                    hovertemplate=hover,
                )
            )
    if shown == 0:
        fig.add_annotation(text="no metrics logged", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    fig.update_layout(
        title={
            "text": "Training loss (dashed: a restart resumed here; squares: evaluation loss)",
            "font": {"size": 13},
        },
        xaxis_title="step",
        yaxis_title="loss",
        legend={"orientation": "h", "y": -0.2, "font": {"size": 11}},
    )
    return _html(fig, div_id, include_js)
