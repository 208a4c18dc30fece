"""What the collector knows of one run: its folder, its summary, and (read only when asked) its
manifest and metrics. Tables, comparisons, plots and the HTML report all start from these records.

No pydantic, and orjson rather than ``json``, on purpose: ``collect`` reads 10,000 summaries and
manifests in under a second (benchmarks/cli_scale.py), and a manifest or metrics file is opened
only when a column or a plot needs it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hpcllm import rundir, runfiles
from hpcllm.rundir import SUMMARY_STATUS_COMPLETED, RunDir, find_run_dirs

# Files of a run are joined as strings, not Paths: pathlib costs more than the JSON parsing when a
# command reads 10,000 runs. Every read goes through hpcllm.runfiles (bounded, never blocking).

# summary.json fields the table reads, by the JSON type they must hold: a run whose summary holds a
# string where a number belongs is one warning, not a crash in a format string later.
SUMMARY_NUMBERS = (
    "world_size", "grad_accum", "micro_batch_size", "global_batch_size", "seq_len", "n_params",
    "samples_per_s", "mfu", "mfu_with_head", "hfu", "tokens_per_s_per_gpu", "step_time_s", "mem_peak_gib",
    "final_loss", "eval_loss", "eval_ppl", "wall_time_s", "steps_completed", "ac_every",
)  # fmt: skip
# ... and of those, the counts, which readers pass to int() and divide by: whole numbers >= 0.
SUMMARY_COUNTS = (
    "world_size", "grad_accum", "micro_batch_size", "global_batch_size", "seq_len", "n_params",
    "steps_completed", "ac_every",
)  # fmt: skip
SUMMARY_TEXTS = ("status", "kind", "precision", "sharding", "model", "gpu_type", "activation_checkpointing")
MANIFEST_OBJECTS = ("point",)


def _read_json_object(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the file's JSON object, None), (None, None) when it does not exist, (None, why) when unusable."""
    try:
        return runfiles.read_json_object(path), None
    except runfiles.MissingFile:
        return None, None
    except runfiles.RunFileProblem as exc:
        return None, str(exc)


def read_summary(run_dir: RunDir) -> tuple[dict[str, Any] | None, str | None]:
    """A run's summary as ``_read_json_object``, with the fields the table reads checked for type."""
    path = run_dir.file(rundir.SUMMARY)
    summary, problem = _read_json_object(path)
    if summary is not None:
        try:
            runfiles.check_fields(path, summary, SUMMARY_NUMBERS, SUMMARY_TEXTS, SUMMARY_COUNTS)
        except runfiles.RunFileProblem as exc:
            return None, str(exc)
    return summary, problem


@dataclass
class RunRecord:
    """One run directory as the collector sees it."""

    run_dir: RunDir
    summary: dict[str, Any] | None
    problems: list[str] = field(default_factory=list)  # why a file of this run could not be used

    @property
    def run_id(self) -> str:
        return self.run_dir.run_id

    @property
    def cluster(self) -> str:
        return self.run_dir.cluster

    @property
    def experiment(self) -> str:
        return self.run_dir.experiment

    @property
    def completed(self) -> bool:
        return self.summary is not None and self.summary.get("status") == SUMMARY_STATUS_COMPLETED

    @cached_property
    def manifest(self) -> dict[str, Any]:
        """The manifest as plain JSON ({} when there is none or it is unreadable: see ``problems``)."""
        path = self.run_dir.file(rundir.MANIFEST)
        data, problem = _read_json_object(path)
        if data is not None:
            wrong = [k for k in MANIFEST_OBJECTS if data.get(k) is not None and not isinstance(data[k], dict)]
            if not isinstance(data.get("state", ""), str):
                wrong.append("state")
            if not isinstance(data.get("restarts", []), list):
                wrong.append("restarts")
            if wrong:
                problem, data = f"{path}: field {wrong[0]!r} holds a value of the wrong type", None
        if problem:
            self.problems.append(problem)
        return data or {}

    @property
    def state(self) -> str:
        """The orchestrator's state (manifest), else the engine's status (summary), else ``unknown``."""
        return self.manifest.get("state") or (self.summary or {}).get("status") or "unknown"

    def has_metrics(self) -> bool:
        """Whether ``metrics.jsonl`` has anything, without reading it."""
        try:
            return os.path.getsize(self.run_dir.file(rundir.METRICS)) > 0
        except OSError:
            return False

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """Every complete line of ``metrics.jsonl`` with a numeric step, streamed a bounded line at a
        time; a torn line is skipped, and said in ``problems`` unless it is the last (which a running
        engine may be writing)."""
        path = self.run_dir.file(rundir.METRICS)
        torn: list[int] = []
        try:
            lines = [r for r in runfiles.iter_json_lines(path, torn=torn) if _metrics_line(r)]
        except runfiles.MissingFile:
            return []
        except runfiles.RunFileProblem as exc:
            self.problems.append(str(exc))
            return []
        if torn:  # one warning for the file, however many lines a crashing writer left torn
            more = f" (and {len(torn) - 1} more torn line(s))" if len(torn) > 1 else ""
            self.problems.append(f"{path}: line {torn[0]} is torn (a writer died){more}; skipped")
        return lines


def _metrics_line(record: dict[str, Any]) -> bool:
    """A training or evaluation line: a numeric step, and numbers (or nothing) where losses belong."""
    return runfiles.is_number(record.get("step")) and all(
        record.get(key) is None or runfiles.is_number(record[key]) for key in ("loss", "eval_loss", "lr")
    )


def scan(root: Path, skipped: list[str] | None = None) -> list[RunRecord]:
    """A record per run directory below ``root``, sorted by path; summaries read, nothing else.
    ``skipped``: one line per folder that could not be read (``find_run_dirs``)."""
    records = []
    for run_dir in find_run_dirs(root, skipped):
        summary, problem = read_summary(run_dir)
        records.append(RunRecord(run_dir, summary, [problem] if problem else []))
    return records
