"""Read a run's progress from its directory: the last metrics line, the summary. Cheap on big logs."""

from __future__ import annotations

import math
from typing import Any

from hpcllm import runfiles
from hpcllm.rundir import METRICS, RunDir

METRICS_NUMBERS = ("loss", "eval_loss", "lr", "grad_norm")


def last_metrics(run_dir: RunDir, problems: list[str] | None = None) -> dict[str, Any] | None:
    """The last complete training line of metrics.jsonl (evaluation lines, which have no ``loss``,
    are skipped), reading only the file's tail.

    A 4 KiB window holds a dozen lines; it grows only when no complete line is in it (``status``
    reads this for every run, so 10,000 runs cost 40 MB of reads, not 640). ``problems`` receives one
    line when the file cannot be read (a directory, a FIFO, unreadable) or a line of that tail is
    damaged (``runfiles.tail_record``); a missing file is a run that has not started, no problem.
    """
    return runfiles.tail_record(run_dir.file(METRICS), _training_line, check=metrics_problem, problems=problems)


def metrics_problem(record: dict[str, Any]) -> str | None:
    """Why a metrics line is not one the engine writes: a step that is not a finite number, or a string
    where a number belongs. A non-finite loss is not damage: the engine logs the step that diverged
    before it stops the run, and ``status`` shows it as it is."""
    if record.get("step") is None:
        return "no field 'step'"
    reason = runfiles.wrong_field(record, ("step", *METRICS_NUMBERS))
    if reason is None and not math.isfinite(record["step"]):
        reason = f"field 'step' holds {record['step']}, not a step number"
    return reason


def _training_line(record: dict[str, Any]) -> bool:
    """A training line (an evaluation line has no ``loss``)."""
    return "loss" in record


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
