"""Experiments (``experiments/*.yaml``): a base training config, resources and a grid over both.

The schema and its loading; ``hpcllm.plan.expand`` turns one experiment and one cluster profile into
``RunSpec``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hpcllm.config import NAME_PATTERN
from hpcllm.config.cluster import SlurmTime
from hpcllm.config.loader import field_problems, one_refusal, read_yaml
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
    """The experiment, or one ConfigError line naming every wrong key: those of the experiment itself
    and, in the same line, those of its base training config (checked for real once per grid point by
    ``hpcllm.plan.expand``; a user who fixes ``resources`` should not then learn of ``optim.lr``)."""
    if not Path(path).exists():
        raise ConfigError(f"{path}: no such experiment file")
    data = read_yaml(Path(path))
    try:
        return Experiment.model_validate({} if data is None else data)
    except ValidationError as exc:
        problems = field_problems(exc.errors(), Experiment) + _base_training_problems(data)
        raise ConfigError(one_refusal(str(path), problems)) from None


def _base_training_problems(data: Any) -> list[str]:
    """What is wrong in ``training`` as written: not what it lacks (a grid may supply it, a profile
    fills some), nor a key that the grid, zip or search sets for every run."""
    training = data.get("training") if isinstance(data, dict) else None
    if not isinstance(training, dict):
        return []
    try:
        TrainingConfig.model_validate(training)
    except ValidationError as exc:
        varied = _varied_keys(data)
        errors = [e for e in exc.errors() if e["type"] != "missing" and not _under(e["loc"], varied)]
        return [f"training.{p}" for p in field_problems(errors, TrainingConfig)]
    return []


def _varied_keys(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """The training keys (as paths) that a grid, zip or search sets per run, overriding the base."""
    search = data.get("search")
    zips = data.get("zip")
    sections = [
        data.get("grid"),
        search.get("parameters") if isinstance(search, dict) else None,
        *(zips if isinstance(zips, list) else []),
    ]
    return [tuple(str(key).split(".")) for section in sections if isinstance(section, dict) for key in section]


def _under(loc: tuple[int | str, ...], varied: list[tuple[str, ...]]) -> bool:
    parts = tuple(str(p) for p in loc)
    return any(parts[: len(key)] == key for key in varied)
