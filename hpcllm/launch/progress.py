"""Read a run's progress from its directory: the last metrics line, the summary. Cheap on big logs."""

from __future__ import annotations

import json
import os
from typing import Any

from hpcllm.fsutil import read_json
from hpcllm.rundir import RunDir


def last_metrics(run_dir: RunDir) -> dict[str, Any] | None:
    """The last complete training line of metrics.jsonl (eval lines skipped), reading only the tail."""
    path = run_dir.metrics
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - 65536, 0))
            tail = fh.read().splitlines()
    except FileNotFoundError:
        return None
    for line in reversed(tail):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line being written right now, or the cut start of the window
        if "loss" in record:  # not an eval line (docs/run-contract.md)
            return record
    return None


def last_step(run_dir: RunDir) -> int | None:
    """The highest step the run has logged so far (the last line's), or None before the first."""
    last = last_metrics(run_dir)
    return None if last is None else last.get("step")


def summary(run_dir: RunDir) -> dict[str, Any] | None:
    return read_json(run_dir.summary)


def summary_error(run_dir: RunDir) -> str | None:
    """Why the engine failed, in one line (the message, or a traceback's last line), from summary.json."""
    error = (summary(run_dir) or {}).get("error")
    if not isinstance(error, str):
        return None
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1][:500] if lines else None
