"""What the collector knows of one run: its folder, its summary, and (read only when asked) its
manifest and metrics. Tables, comparisons, plots and the HTML report all start from these records.

No pydantic, and orjson rather than ``json``, on purpose: ``collect`` reads 10,000 summaries and
manifests in under a second (benchmarks/cli_scale.py), and a manifest or metrics file is opened
only when a column or a plot needs it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson

from hpcllm import rundir
from hpcllm.rundir import SUMMARY_STATUS_COMPLETED, RunDir, find_run_dirs

# Files of a run are joined as strings, not Paths: pathlib costs more than the JSON parsing when a
# command reads 10,000 runs.


def _read_bytes(path: str) -> bytes:
    """The whole file, through the raw descriptor: for a file of a few hundred bytes, Python's
    buffered ``open().read()`` costs as much again as the read itself (20,000 files: 0.2 s vs 0.1)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def parse_json(data: bytes) -> Any:
    """orjson (a third of the time of ``json.loads``), and ``json`` for what only it reads: the
    ``NaN``/``Infinity`` that Python's ``json.dumps`` writes for a non-finite float, as the summary
    of a run stopped by a non-finite loss may hold. ValueError when neither reads it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _read_json_object(path: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the file's JSON object, None), (None, None) when it does not exist, (None, why) when unusable."""
    try:
        data = parse_json(_read_bytes(path))
    except FileNotFoundError:
        return None, None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, f"{path}: not valid JSON ({exc})"
    if not isinstance(data, dict):
        return None, f"{path}: not a JSON object"
    return data, None


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
        data, problem = _read_json_object(self.run_dir.file(rundir.MANIFEST))
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
        """Every complete line of ``metrics.jsonl``; a torn line is skipped, and said in ``problems``
        unless it is the last (which a running engine may be writing)."""
        try:
            with open(self.run_dir.file(rundir.METRICS), "rb") as fh:
                lines = fh.read().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for number, line in enumerate(lines, 1):
            try:
                record = parse_json(line)
            except ValueError:
                if number < len(lines):  # the last line may be being written; an earlier one is torn
                    self.problems.append(f"{self.run_dir.metrics}: line {number} is torn (a writer died); skipped")
                continue
            if isinstance(record, dict) and "step" in record:
                out.append(record)
        return out


def scan(root: Path, skipped: list[str] | None = None) -> list[RunRecord]:
    """A record per run directory below ``root``, sorted by path; summaries read, nothing else.
    ``skipped``: one line per folder that could not be read (``find_run_dirs``)."""
    records = []
    for run_dir in find_run_dirs(root, skipped):
        summary, problem = _read_json_object(run_dir.file(rundir.SUMMARY))
        records.append(RunRecord(run_dir, summary, [problem] if problem else []))
    return records
