"""What ``collect`` says when there is nothing to tabulate: what is there, and what to do.

A header-only table that exits 0 reads as "all is well" to a script and to a tired user; these
messages name the folder, count what it holds, and give the command that would fill it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from hpcllm.collect.records import RunRecord


def _states(scanned: list[RunRecord]) -> str:
    """``2 failed, 1 running``; a run its manifest calls completed whose summary is unusable (warned
    about above) is not a completed row: "completed, summary unusable", not plain "completed"."""
    counts = Counter(_state(r) for r in scanned)
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def _state(record: RunRecord) -> str:
    if record.state == "completed" and not record.completed:
        return "completed, summary unusable"
    return record.state


def nothing_to_collect(root: Path, unreadable: int = 0) -> str:
    if unreadable:  # the runs may be in what could not be read: "submit some" would be wrong
        return (
            f"{root}: no run directory in what this user may read ({unreadable} folder(s) skipped, said "
            "above); ask their owner for read access, or name a results folder of your own"
        )
    return (
        f"{root}: no runs here (no run directory below it); submit some first "
        "(hpcllm submit experiments/smoke.yaml -c local), or name the results folder that holds them"
    )


def none_completed(root: Path, scanned: list[RunRecord]) -> str:
    return (
        f"{root}: {len(scanned)} run{'' if len(scanned) == 1 else 's'}, none completed ({_states(scanned)}); "
        f"`hpcllm status {root}` shows where each one is and why it stopped"
    )


def no_search(root: Path, scanned: list[RunRecord]) -> str:
    return (
        f"{root}: no search with a finished trial ({len(scanned)} runs: {_states(scanned)}); --best ranks the "
        "trials of `hpcllm search EXPERIMENT -c CLUSTER`; plain `hpcllm collect` tabulates every completed run"
    )
