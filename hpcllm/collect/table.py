"""Build the seed's scaling table from completed runs' ``summary.json``.

The columns and their order are exactly the seed's (Modalities' README), so our tables can be put
next to theirs. MFU comes from the engine's summary, which computed it with ``hpcllm.perf``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from hpcllm.fsutil import read_json
from hpcllm.rundir import SUMMARY_KIND_PROBE, SUMMARY_STATUS_COMPLETED, find_run_dirs

COLUMNS = [
    "# Params (B)", "#GPUs", "Samples/s", "GradAccm", "MBS", "GBS", "Sequence Length",
    "Precision", "Sharding", "AC", "GPU Type", "MFU",
]

Format = Literal["markdown", "csv", "json"]


def _ac_label(summary: dict[str, Any]) -> str:
    ac = summary.get("activation_checkpointing", "none")
    if ac == "none":
        return "False"
    if ac == "full":
        return "True"
    return f"selective/{summary.get('ac_every')}"


def _params_b(n_params: float) -> float:
    """Billions with 3 significant digits (2.8, 0.124, 0.000131)."""
    return float(f"{n_params / 1e9:.3g}")


def _rounded(value: Any, digits: int) -> float | None:
    """None stays None (an empty cell): e.g. a run resumed at its last step measured no step."""
    return None if value is None else round(float(value), digits)


def summary_row(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "# Params (B)": _params_b(summary["n_params"]),
        "#GPUs": summary["world_size"],
        "Samples/s": _rounded(summary.get("samples_per_s"), 2),
        "GradAccm": summary["grad_accum"],
        "MBS": summary["micro_batch_size"],
        "GBS": summary["global_batch_size"],
        "Sequence Length": summary["seq_len"],
        "Precision": summary["precision"],
        "Sharding": summary["sharding"],
        "AC": _ac_label(summary),
        "GPU Type": summary.get("gpu_type") or "cpu",
        "MFU": _rounded(summary.get("mfu"), 4),
    }


def collect_table(root: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One row per completed run under ``root``, sorted by model size, GPUs, MBS and sharding.

    A summary that cannot be read or lacks a field is left out and described in ``problems``
    (one bad run must not hide the table of the others).
    """
    rows = []
    for run_dir in find_run_dirs(root):
        try:
            summary = read_json(run_dir.summary)
        except ValueError as exc:
            _note(problems, f"{run_dir.summary}: not valid JSON ({exc})")
            continue
        if not summary or summary.get("status") != SUMMARY_STATUS_COMPLETED:
            continue
        if summary.get("kind") == SUMMARY_KIND_PROBE:  # batch-size probes have their own table
            continue
        try:
            rows.append(summary_row(summary))
        except (KeyError, TypeError, ValueError) as exc:
            _note(problems, f"{run_dir.summary}: missing or bad field {exc}")
    table = pd.DataFrame(rows, columns=COLUMNS)
    if not table.empty:
        table = table.sort_values(["# Params (B)", "#GPUs", "MBS", "Sharding"], kind="stable")
    return table.reset_index(drop=True)


def _note(problems: list[str] | None, message: str) -> None:
    if problems is not None:
        problems.append(message)


def format_table(table: pd.DataFrame, fmt: Format) -> str:
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "csv":
        return table.to_csv(index=False)
    if fmt == "json":
        records = json.loads(table.to_json(orient="records"))
        return json.dumps(records, indent=2) + "\n"
    raise ValueError(f"unknown format {fmt!r}; use markdown, csv or json")


def _markdown(table: pd.DataFrame) -> str:
    """The seed's layout: ``| a | b |`` rows under a ``|---|`` rule; an empty MFU stays empty."""
    def cell(value: Any) -> str:
        return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for record in table.to_dict(orient="records"):
        lines.append("| " + " | ".join(cell(record[c]) for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"
