"""Scaling plots and loss curves (matplotlib, no display: login nodes have none).

Scaling: samples/s, MFU and scaling efficiency against #GPUs, one line per experiment, cluster and
setup (model size, sharding, MBS, AC, sequence length), the ideal (linear) throughput dotted. Loss curves: the
training loss of each run against its step from ``metrics.jsonl``, each restart marked where the run
resumed, evaluation losses as points when the engine logged them.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcllm.collect import columns as cols
from hpcllm.collect.records import RunRecord
from hpcllm.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_LEGEND = 12  # more lines than this get no legend (it would cover the plot)


def _use_agg() -> None:
    """Matplotlib's file-only backend, chosen before pyplot is imported (a login node has no display).

    Each caller then imports pyplot itself, so that its figures keep matplotlib's types."""
    import matplotlib

    matplotlib.use("Agg")


def setup_label(summary: dict[str, Any]) -> str:
    """What a configuration is, in the words of the table: size, sharding, MBS, AC, sequence length."""
    s = summary
    return (
        f"{cols.params_billions(float(s.get('n_params', 0))):g}B {s.get('sharding')} "
        f"mbs={s.get('micro_batch_size')} AC={cols.ac_label(s.get('activation_checkpointing'), s.get('ac_every'))} "
        f"seq={s.get('seq_len')}"
    )


def group_label(record: RunRecord) -> str:
    """A line of the scaling plots: one experiment on one cluster in one setup (never mixed, so that
    no line joins a tutorial's 1-GPU run to a fine-tune's, and efficiency has a like-for-like base)."""
    return f"{record.experiment}/{record.cluster}: {setup_label(record.summary or {})}"


def run_label(record: RunRecord) -> str:
    """A run in a legend: its group, its GPUs, and the grid values the table does not show already."""
    s = record.summary or {}
    point = record.manifest.get("point") or {}
    extra = " ".join(f"{k}={v}" for k, v in point.items() if k not in cols.COVERED_BY_SEED)
    return f"{group_label(record)} ×{s.get('world_size', '?')}" + (f" {extra}" if extra else "")


def scaling_groups(records: Iterable[RunRecord]) -> dict[str, list[dict[str, Any]]]:
    """Completed runs with a throughput, grouped by experiment, cluster and setup, each group sorted by #GPUs."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        s = r.summary or {}
        if not r.completed or s.get("samples_per_s") is None or not s.get("world_size"):
            continue
        groups.setdefault(group_label(r), []).append(
            {
                "gpus": int(s["world_size"]),
                "samples_per_s": float(s["samples_per_s"]),
                "mfu": s.get("mfu"),
                "run": r.run_id,
            }
        )
    for points in groups.values():
        points.sort(key=lambda p: p["gpus"])
    return dict(sorted(groups.items()))


def efficiency(points: list[dict[str, Any]]) -> list[float]:
    """Per-GPU throughput relative to the group's smallest run (1.0 = linear scaling)."""
    base = points[0]["samples_per_s"] / points[0]["gpus"]
    return [p["samples_per_s"] / p["gpus"] / base for p in points]


def scaling_figure(records: Iterable[RunRecord]) -> Figure:
    _use_agg()
    import matplotlib.pyplot as plt

    groups = scaling_groups(records)
    fig, (ax_tp, ax_mfu, ax_eff) = plt.subplots(1, 3, figsize=(15, 4.4))
    for label, points in groups.items():
        gpus = [p["gpus"] for p in points]
        (line,) = ax_tp.plot(gpus, [p["samples_per_s"] for p in points], marker="o", label=label)
        ideal = [points[0]["samples_per_s"] * g / points[0]["gpus"] for g in gpus]
        ax_tp.plot(gpus, ideal, linestyle=":", color=line.get_color(), linewidth=1)
        mfu = [(g, p["mfu"]) for g, p in zip(gpus, points, strict=True) if p["mfu"] is not None]
        if mfu:
            ax_mfu.plot(*zip(*mfu, strict=True), marker="o", color=line.get_color(), label=label)
        ax_eff.plot(gpus, efficiency(points), marker="o", color=line.get_color(), label=label)
    for ax, ylabel, title in (
        (ax_tp, "samples/s", "Throughput (dotted: linear scaling)"),
        (ax_mfu, "MFU", "Model FLOPs utilisation (seed's convention)"),
        (ax_eff, "per-GPU throughput / smallest run's", "Scaling efficiency"),
    ):
        ax.set_xlabel("#GPUs")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    ax_tp.set_yscale("log")
    ax_eff.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    if not any(p["mfu"] is not None for points in groups.values() for p in points):
        ax_mfu.text(
            0.5,
            0.5,
            "no MFU: no known peak FLOPs\n(CPU runs)",
            ha="center",
            va="center",
            transform=ax_mfu.transAxes,
            color="grey",
        )
    if not groups:
        ax_tp.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax_tp.transAxes, color="grey")
    elif len(groups) <= MAX_LEGEND:
        ax_tp.legend(fontsize=7)
    fig.tight_layout()
    return fig


def restart_steps(metrics: list[dict[str, Any]]) -> list[int]:
    """Steps at which a new attempt started logging (the ``restart`` count changed, or the step
    counter went back: a resumed run re-runs the steps after its last checkpoint)."""
    out = []
    for prev, cur in itertools.pairwise(metrics):
        if cur.get("restart") != prev.get("restart") or cur["step"] <= prev["step"]:
            out.append(cur["step"])
    return out


def loss_curves(records: Iterable[RunRecord]) -> list[tuple[RunRecord, list[dict[str, Any]]]]:
    """The runs that logged a loss, each with its metrics lines that have one: what both loss plots draw."""
    curves: list[tuple[RunRecord, list[dict[str, Any]]]] = []
    for r in records:
        metrics = [m for m in r.metrics if m.get("loss") is not None]
        if metrics:
            curves.append((r, metrics))
    return curves


def loss_figure(records: Iterable[RunRecord]) -> Figure:
    _use_agg()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.4))
    curves = loss_curves(records)
    shown = len(curves)
    for r, metrics in curves:
        (line,) = ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], linewidth=1, label=run_label(r))
        for step in restart_steps(metrics):
            ax.axvline(step, color=line.get_color(), linestyle="--", linewidth=0.8, alpha=0.8)
            ax.annotate(
                "restart",
                (step, 1.0),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=7,
                va="top",
                ha="right",
                color=line.get_color(),
            )
        evals = [(m["step"], m["eval_loss"]) for m in r.metrics if m.get("eval_loss") is not None]
        if evals:
            ax.plot(*zip(*evals, strict=True), linestyle="none", marker="s", markersize=4, color=line.get_color())
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss (dashed: a restart resumed here; squares: evaluation loss)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if shown == 0:
        ax.text(0.5, 0.5, "no metrics logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    elif shown <= MAX_LEGEND:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    _use_agg()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _save(fig: Figure, output: Path) -> Path:
    output = Path(output)
    atomic_write_bytes(output, png_bytes(fig))  # a full disk: one line, no half-written PNG
    return output


def plot_scaling(records: Iterable[RunRecord], output: Path) -> Path:
    return _save(scaling_figure(records), output)


def plot_losses(records: Iterable[RunRecord], output: Path) -> Path:
    return _save(loss_figure(records), output)
