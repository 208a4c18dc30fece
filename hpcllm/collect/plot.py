"""Scaling plots: throughput and MFU against GPU count, one line per (model, sharding, MBS)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_scaling(table: pd.DataFrame, output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on login nodes
    import matplotlib.pyplot as plt

    fig, (ax_tp, ax_mfu) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (params, sharding, mbs), group in table.groupby(["# Params (B)", "Sharding", "MBS"]):
        group = group.sort_values("#GPUs")
        label = f"{params}B {sharding} mbs={mbs}"
        ax_tp.plot(group["#GPUs"], group["Samples/s"], marker="o", label=label)
        if group["MFU"].notna().any():
            ax_mfu.plot(group["#GPUs"], group["MFU"], marker="o", label=label)
        # Ideal linear scaling from the smallest run of the group.
        first = group.iloc[0]
        ideal = first["Samples/s"] * group["#GPUs"] / first["#GPUs"]
        ax_tp.plot(group["#GPUs"], ideal, linestyle=":", color="grey", linewidth=0.8)
    for ax, ylabel in ((ax_tp, "samples/s"), (ax_mfu, "MFU")):
        ax.set_xlabel("#GPUs")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.grid(True, which="both", alpha=0.3)
    if table["MFU"].isna().all():
        ax_mfu.text(0.5, 0.5, "no MFU: no known peak FLOPs\n(CPU runs)", ha="center", va="center",
                    transform=ax_mfu.transAxes, color="grey")
    ax_tp.set_yscale("log")
    ax_tp.set_title("Throughput (dotted: linear scaling)")
    ax_mfu.set_title("Model FLOPs utilisation")
    ax_tp.legend(fontsize=7)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=120)
    plt.close(fig)
    return output
