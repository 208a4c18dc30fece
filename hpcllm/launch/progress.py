"""Read a run's progress from its directory: the last metrics line, the summary. Cheap on big logs."""

from __future__ import annotations

import json
import os
from typing import Any

from hpcllm.fsutil import read_json
from hpcllm.rundir import METRICS, RunDir


def last_metrics(run_dir: RunDir) -> dict[str, Any] | None:
    """The last complete training line of metrics.jsonl (evaluation lines, which have no ``loss``,
    are skipped), reading only the file's tail.

    A 4 KiB window holds a dozen lines; it grows only when no complete line is in it (``status``
    reads this for every run, so 10,000 runs cost 40 MB of reads, not 640).
    """
    try:
        with open(run_dir.file(METRICS), "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            window = 4096
            while True:
                fh.seek(max(size - window, 0))
                for line in reversed(fh.read().splitlines()):
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue  # a line being written right now, or the cut start of the window
                    if isinstance(record, dict) and "loss" in record:
                        return record
                if window >= size or window >= 1 << 20:
                    return None
                window *= 4
    except FileNotFoundError:
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
