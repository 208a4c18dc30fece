"""Read a run's progress from its directory: the last metrics line, the summary. Cheap on big logs."""

from __future__ import annotations

from typing import Any

from hpcllm import runfiles
from hpcllm.rundir import METRICS, RunDir


def last_metrics(run_dir: RunDir) -> dict[str, Any] | None:
    """The last complete training line of metrics.jsonl (evaluation lines, which have no ``loss``,
    are skipped), reading only the file's tail.

    A 4 KiB window holds a dozen lines; it grows only when no complete line is in it (``status``
    reads this for every run, so 10,000 runs cost 40 MB of reads, not 640).
    """
    try:
        return runfiles.last_json_line(run_dir.file(METRICS), _training_line)
    except runfiles.RunFileProblem:  # missing (not started yet), or not a file: no progress to show
        return None


def _training_line(record: dict[str, Any]) -> bool:
    """A training line whose step and loss are numbers (a damaged line is not progress)."""
    loss = record.get("loss")
    return runfiles.is_number(record.get("step")) and (loss is None or runfiles.is_number(loss)) and "loss" in record


def last_step(run_dir: RunDir) -> int | None:
    """The highest step the run has logged so far (the last line's), or None before the first."""
    last = last_metrics(run_dir)
    return None if last is None else last.get("step")


def summary(run_dir: RunDir) -> dict[str, Any] | None:
    """The run's summary; None when it is missing or damaged (``collect`` says which)."""
    try:
        return runfiles.read_json_object(run_dir.summary)
    except runfiles.RunFileProblem:
        return None


def summary_error(run_dir: RunDir) -> str | None:
    """Why the engine failed, in one line (the message, or a traceback's last line), from summary.json."""
    error = (summary(run_dir) or {}).get("error")
    if not isinstance(error, str):
        return None
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1][:500] if lines else None
