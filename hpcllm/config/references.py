"""Performance references (ReFrame-style): the schema of ``expected:``; values with tolerances.

An experiment may say, per cluster, what a metric of ``summary.json`` should be::

    expected:
      leonardo:
        seed: {samples_per_s: [-0.05, null], mfu: [-0.05, null]}   # per point, from the seed's row
        mem_peak_gib: [60, null, 0.05]           # value, lower and upper bound as fractions; null = unbounded

``seed:`` takes the reference values of each grid point from the seed's own row for that point's
resolved configuration (``hpcllm.plan.seed``; points the seed did not run get none), with the
given ``[lower, upper]`` tolerances. Other keys are fixed references for every point.

``hpcllm submit`` copies each point's references into its manifest, so the collector checks a run
against what was expected when it was submitted, without the experiment file at hand. Each point's
references are resolved in ``hpcllm.plan.references``; ``hpcllm.collect.references`` checks the runs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# summary.json metrics a reference may name (all medians over the measured steps).
CHECKABLE = ("mfu", "samples_per_s", "tokens_per_s", "tokens_per_s_per_gpu", "step_time_s", "mem_peak_gib")


def _bounds_ok(lower: float | None, upper: float | None) -> None:
    if lower is not None and lower > 0:
        raise ValueError(f"lower bound {lower} must be <= 0 (a fraction below the value)")
    if upper is not None and upper < 0:
        raise ValueError(f"upper bound {upper} must be >= 0 (a fraction above the value)")


class Reference(BaseModel):
    """``[value, lower, upper]``: accepted range value*(1+lower) .. value*(1+upper)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    value: float
    lower: float | None = None
    upper: float | None = None
    source: str | None = Field(None, description="Where the value comes from, e.g. 'seed leonardo row 3'.")

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) != 3:
                raise ValueError(f"a reference is [value, lower, upper], got {list(data)!r}")
            return {"value": data[0], "lower": data[1], "upper": data[2]}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Reference:
        _bounds_ok(self.lower, self.upper)
        return self

    def as_manifest(self) -> dict[str, Any]:
        """What ``manifest.json`` stores: value and bounds (null = unbounded), and the source if any."""
        return self.model_dump(exclude=set() if self.source else {"source"})

    def bounds(self) -> tuple[float | None, float | None]:
        lo = None if self.lower is None else self.value * (1 + self.lower)
        hi = None if self.upper is None else self.value * (1 + self.upper)
        return lo, hi

    def accepts(self, measured: float) -> bool:
        lo, hi = self.bounds()
        return (lo is None or measured >= lo) and (hi is None or measured <= hi)


class Tolerance(BaseModel):
    """``[lower, upper]`` around a value taken from elsewhere (fractions; null = unbounded)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    lower: float | None = None
    upper: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_list(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            if len(data) != 2:
                raise ValueError("a tolerance is [lower, upper]")  # the loader adds what it got
            return {"lower": data[0], "upper": data[1]}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Tolerance:
        _bounds_ok(self.lower, self.upper)
        return self

    def around(self, value: float, source: str) -> Reference:
        return Reference(value=value, lower=self.lower, upper=self.upper, source=source)


class SeedTolerances(BaseModel):
    """The seed's two measured columns a point can be held to."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    samples_per_s: Tolerance | None = None
    mfu: Tolerance | None = None


class ClusterReferences(BaseModel):
    """What one cluster's runs should reach: ``seed:`` per point, other keys fixed references."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, Reference] = Field(init=False)  # metric -> [value, lower, upper]

    seed: SeedTolerances | None = Field(
        None, description="Per point: the seed's row of the same configuration, within these tolerances."
    )

    def fixed(self) -> dict[str, Reference]:
        return dict(self.__pydantic_extra__ or {})


def validate_metric_names(references: dict[str, ClusterReferences]) -> None:
    """Every fixed reference must name a metric that ``summary.json`` has."""
    for cluster, refs in references.items():
        for name in refs.fixed():
            if name not in CHECKABLE:
                raise ValueError(
                    f"expected.{cluster}.{name}: not a checkable metric; use one of {', '.join(CHECKABLE)}, or seed"
                )
