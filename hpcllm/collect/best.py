"""``hpcllm collect --best``: the best run of every search group, with its parameters and score.

Reads the searches' ``search.json`` (torch-free, like the rest of ``collect``): per group, the trial
with the lowest metric at the longest rung any trial finished (``hpcllm.collect.searches.best_trial``),
then that run's ``summary.json`` for the scaling-table columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from hpcllm.collect import columns as cols
from hpcllm.collect.records import RunRecord, read_summary
from hpcllm.collect.searches import best_trial, find_searches
from hpcllm.errors import HpcllmError
from hpcllm.rundir import RunDir, check_name

LEAD_COLUMNS = ["Search", "Group", "Run", "Steps"]


def best_table(root: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """One row per search group under ``root``: search and group, the searched values, the metric
    at the rung the best trial reached, then the scaling-table columns of its run."""
    rows: list[dict[str, Any]] = []
    for folder, state in find_searches(root):
        for group in state.groups:
            best = best_trial(state, group)
            if best is None:
                continue
            try:  # a run id read from the search's state file: one folder of ``folder``, nothing else
                run_dir = RunDir(folder / check_name(best.run_id, f"{folder}: search state: run id"))
            except HpcllmError as exc:
                _note(problems, str(exc))
                continue
            summary, problem = read_summary(run_dir)
            if problem:
                _note(problems, problem)
                continue
            steps = max(int(s) for s, v in best.scores.items() if v is not None)
            row: dict[str, Any] = {
                "Search": f"{state.experiment}/{state.cluster}",
                "Group": group.label,
                "Run": best.run_id,
                "Steps": steps,
                **best.params,
                state.metric: round(best.score_at(steps), 4),
            }
            try:
                row.update(_scaling_columns(RunRecord(run_dir, summary or {})))
            except (KeyError, TypeError, ValueError) as exc:
                _note(problems, f"{run_dir.summary}: missing or bad field {exc}")
            if state.metric == "eval_loss":
                row.pop("Eval Loss", None)  # the metric column already says it, at the rung it was ranked
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    lead = [c for c in LEAD_COLUMNS if c in table.columns]
    return table[lead + [c for c in table.columns if c not in lead]]


def _note(problems: list[str] | None, message: str) -> None:
    if problems is not None:
        problems.append(message)


def _scaling_columns(record: RunRecord) -> dict[str, Any]:
    """The run's cells of the seed's table and its eval loss, under the collector's headers."""
    chosen = [cols.COLUMNS[c] for c in (*cols.SEED, "eval_loss")]
    return {c.header: c.get(record) for c in chosen}
