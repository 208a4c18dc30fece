"""``hpcllm collect --check``: each completed run's measured metrics against the references its
manifest stores (copied there by ``hpcllm submit`` from the experiment's ``expected:``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hpcllm.config.references import Reference
from hpcllm.fsutil import read_json
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
        summary = read_json(run_dir.summary) or {}
        manifest = read_json(run_dir.manifest) or {}
        if summary.get("status") != SUMMARY_STATUS_COMPLETED:
            continue
        for metric, ref in (manifest.get("expected") or {}).items():
            value = summary.get(metric)
            verdicts.append(
                Verdict(run_dir.run_id, metric, None if value is None else float(value), Reference.model_validate(ref))
            )
    return verdicts
