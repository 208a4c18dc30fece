"""Performance references (ReFrame-style): expected values with tolerances, checked by ``collect``.

An experiment may say, per cluster, what a metric of ``summary.json`` should be::

    expected:
      leonardo:
        mfu: [0.55, -0.10, null]                 # value, lower and upper bound as fractions; null = unbounded
        tokens_per_s_per_gpu: [3000, -0.05, 0.5]

``hpcllm submit`` copies the cluster's references into each run's manifest, so the collector checks a
run against what was expected when it was submitted, without the experiment file at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from hpcllm.fsutil import read_json
from hpcllm.rundir import SUMMARY_STATUS_COMPLETED, find_run_dirs

# summary.json metrics a reference may name (all medians over the measured steps).
CHECKABLE = ("mfu", "samples_per_s", "tokens_per_s", "tokens_per_s_per_gpu", "step_time_s", "mem_peak_gib")


class Reference(BaseModel):
    """``[value, lower, upper]``: accepted range value*(1+lower) .. value*(1+upper)."""

    model_config = ConfigDict(extra="forbid")

    value: float
    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) != 3:
                raise ValueError(f"a reference is [value, lower, upper], got {list(data)!r}")
            return {"value": data[0], "lower": data[1], "upper": data[2]}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> "Reference":
        if self.lower is not None and self.lower > 0:
            raise ValueError(f"lower bound {self.lower} must be <= 0 (a fraction below the value)")
        if self.upper is not None and self.upper < 0:
            raise ValueError(f"upper bound {self.upper} must be >= 0 (a fraction above the value)")
        return self

    def bounds(self) -> tuple[float | None, float | None]:
        lo = None if self.lower is None else self.value * (1 + self.lower)
        hi = None if self.upper is None else self.value * (1 + self.upper)
        return lo, hi

    def accepts(self, measured: float) -> bool:
        lo, hi = self.bounds()
        return (lo is None or measured >= lo) and (hi is None or measured <= hi)


def validate_metric_names(references: dict[str, dict[str, Reference]]) -> None:
    for cluster, metrics in references.items():
        for name in metrics:
            if name not in CHECKABLE:
                raise ValueError(f"expected.{cluster}.{name}: not a checkable metric; use one of {', '.join(CHECKABLE)}")


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
            verdicts.append(Verdict(run_dir.run_id, metric, None if value is None else float(value),
                                    Reference.model_validate(ref)))
    return verdicts
