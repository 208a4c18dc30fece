"""Experiments (``experiments/*.yaml``): a base training config, resources and a grid over both.

The schema and its loading; ``hpcllm.plan.expand`` turns one experiment and one cluster profile into
``RunSpec``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hpcllm.config import NAME_PATTERN
from hpcllm.config.cluster import SlurmTime
from hpcllm.config.loader import load_model
from hpcllm.config.references import ClusterReferences, validate_metric_names
from hpcllm.config.search import SearchConfig
from hpcllm.config.text import OneLine
from hpcllm.config.training import TrainingConfig
from hpcllm.errors import ConfigError


class Resources(BaseModel):
    """What one run asks of the scheduler."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    nodes: int = Field(1, gt=0)
    gpus_per_node: int | None = Field(None, gt=0, description="Ranks per node; default: the profile's.")
    time: SlurmTime = Field("00:30:00", description="Wall-time limit, [D-]HH:MM:SS.")
    qos: OneLine | None = Field(None, description="QoS name from the profile; default: its default_qos.")
    max_restarts: int | None = Field(None, ge=0, description="Requeue budget; default: the profile's.")
    preflight: bool | None = Field(
        None, description="Measure the nodes before training; default: from the profile's preflight_from_nodes."
    )
    spare_nodes: int = Field(0, ge=0, description="Ask for nodes + spare_nodes; the pre-flight keeps the best.")


class Experiment(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    name: str = Field(description="Names the results folder: results/<name>/<cluster>/<run>/.", pattern=NAME_PATTERN)
    description: str = ""
    resources: Resources = Field(default_factory=Resources)
    training: dict[str, Any] = Field(description="Base TrainingConfig (see `hpcllm schema training`).")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted key -> values (cross product).")
    zip: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="Groups of dotted keys whose lists advance together."
    )
    where: list[str] = Field(default_factory=list, description="Keep only points where all are true.")
    expected: dict[str, ClusterReferences] = Field(
        default_factory=dict,
        description="Per cluster: metric -> [value, lower, upper] (fractions; null = unbounded), and "
        "seed: {metric: [lower, upper]} for the seed's row of each point; checked by `hpcllm collect --check`.",
    )
    search: SearchConfig | None = Field(
        None, description="A hyper-parameter search per grid point (`hpcllm search run`; docs/search.md)."
    )

    @model_validator(mode="after")
    def _search_apart_from_grid(self) -> Experiment:
        if self.search is not None:
            gridded = set(self.grid).union(*self.zip) & set(self.search.parameters)
            if gridded:
                raise ValueError(
                    f"search.parameters: {', '.join(sorted(gridded))} also in grid/zip; "
                    "a key is either a grid axis (groups) or searched, not both"
                )
        return self

    @field_validator("expected")
    @classmethod
    def _checkable(cls, value: dict[str, ClusterReferences]) -> dict[str, ClusterReferences]:
        validate_metric_names(value)
        return value

    @field_validator("where", mode="before")
    @classmethod
    def _where_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("grid", "zip")
    @classmethod
    def _known_roots(cls, value: Any) -> Any:
        groups = value if isinstance(value, list) else [value]
        allowed = ["resources", *TrainingConfig.model_fields]
        for group in groups:
            for key in group:
                if key.split(".")[0] not in allowed:
                    raise ValueError(f"grid key {key!r} must start with one of: {', '.join(allowed)}")
                if not group[key]:
                    raise ValueError(f"grid key {key!r} has an empty list of values")
        return value


@dataclass(frozen=True)
class RunSpec:
    """One grid point, fully resolved against a cluster: everything needed to render and run it."""

    experiment: str
    cluster: str
    run_id: str
    point: dict[str, Any]
    resources: Resources  # gpus_per_node, qos and max_restarts filled in from the profile
    training: TrainingConfig

    @property
    def world_size(self) -> int:
        assert self.resources.gpus_per_node is not None
        return self.resources.nodes * self.resources.gpus_per_node


def load_experiment(path: Path) -> Experiment:
    if not Path(path).exists():
        raise ConfigError(f"{path}: no such experiment file")
    return load_model(Experiment, Path(path))
