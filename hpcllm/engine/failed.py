"""The failed summary.json: one writer for the entry point (an exception) and the watchdog (a hang)."""

from __future__ import annotations

from typing import Any

from hpcllm.fsutil import write_json_in
from hpcllm.rundir import SUMMARY_STATUS_FAILED, RunDir


def write_failed(run_dir: RunDir, summary: dict[str, Any], error: str, rank: int) -> None:
    """Rank 0 writes ``summary`` as failed with ``error``; other ranks write nothing."""
    if rank == 0:
        summary.update(status=SUMMARY_STATUS_FAILED, error=error)
        summary.setdefault("steps_completed", 0)
        write_json_in(run_dir.path, run_dir.summary, summary)
