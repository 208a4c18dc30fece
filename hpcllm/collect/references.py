"""``hpcllm collect --check``: each completed run's measured metrics against the references its
manifest stores (copied there by ``hpcllm submit`` from the experiment's ``expected:``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcllm import runfiles
from hpcllm.config.references import Reference
from hpcllm.rundir import SUMMARY_STATUS_COMPLETED, find_run_dirs


@dataclass
class Verdict:
    run_id: str
    metric: str
    measured: float | None
    reference: Reference

    @property
    def ok(self) -> bool:
        return self.measured is not None and self.reference.accepts(self.measured)


def check_references(root: Path) -> list[Verdict]:
    """One verdict per (completed run, referenced metric) under ``root``."""
    verdicts = []
    for run_dir in find_run_dirs(root):
        try:
            summary = runfiles.read_json_object(run_dir.summary)
            manifest = runfiles.read_json_object(run_dir.manifest)
        except runfiles.RunFileProblem:  # collect's reading of the same files says what is wrong
            continue
        if summary.get("status") != SUMMARY_STATUS_COMPLETED or not isinstance(manifest.get("expected"), dict):
            continue
        for metric, ref in manifest["expected"].items():
            value = summary.get(metric)
            measured = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
            verdicts.append(Verdict(run_dir.run_id, metric, measured, Reference.model_validate(ref)))
    return verdicts
