"""Experiments (``experiments/*.yaml``): a base training config, resources and a grid over both.

``expand_experiment`` turns one experiment and one cluster profile into ``RunSpec``s, checking each
point against the profile (nodes, QoS, time, batch arithmetic) before anything is rendered, so a run
that would pend forever or fail at start-up is rejected on the login node with the reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hpcllm.collect.references import ClusterReferences, validate_metric_names
from hpcllm.config import NAME_PATTERN
from hpcllm.config import grid as gridlib
from hpcllm.config.cluster import ClusterProfile, SlurmTime, parse_slurm_time
from hpcllm.config.loader import format_validation_error, load_model
from hpcllm.config.qos import QosRefused, RefusedPoint, auto_qos_refusals, default_qos
from hpcllm.config.search import SearchConfig
from hpcllm.config.text import OneLine
from hpcllm.config.training import TrainingConfig
from hpcllm.errors import ConfigError
from hpcllm.memory.runs import where_names as memory_where_names
from hpcllm.sitepaths import resolve_on_login


class Resources(BaseModel):
    """What one run asks of the scheduler."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    nodes: int = Field(1, gt=0)
    gpus_per_node: int | None = Field(None, gt=0, description="Ranks per node; default: the profile's.")
    time: SlurmTime = Field("00:30:00", description="Wall-time limit, [D-]HH:MM:SS.")
    qos: OneLine | None = Field(None, description="QoS name from the profile; default: its default_qos.")
    max_restarts: int | None = Field(None, ge=0, description="Requeue budget; default: the profile's.")


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


# Names a `where:` filter may use beside the resolved config: the memory estimate (hpcllm.memory.runs).
MEMORY_WHERE_NAMES = ("mem_gib", "fits")


def expand_experiment(
    exp: Experiment,
    cluster: ClusterProfile,
    source: str,
    *,
    account: str | None = None,
    refused: list[RefusedPoint] | None = None,
) -> list[RunSpec]:
    """Every point of ``exp`` as a RunSpec for ``cluster``; errors name ``source`` and the point.

    ``account`` fills ``{account}`` in the profile's storage roots. A point that no QoS of the
    profile's ``auto_qos`` admits is an error, unless the caller passes ``refused``: then it is
    listed there and left out (a grid may hold rows that need a special allocation).
    """
    try:
        points = gridlib.expand(exp.grid, exp.zip)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    base = {"resources": exp.resources.model_dump(exclude_none=True), **exp.training}
    try:  # parsed once for the whole grid; the estimate is only made for filters that read it
        filters = [gridlib.compile_where(expr) for expr in exp.where]
        with_memory = any(name in MEMORY_WHERE_NAMES for expr in exp.where for name in gridlib.where_names(expr))
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    specs: list[RunSpec] = []
    seen: dict[str, dict[str, Any]] = {}
    for point in points:
        where = f"{source}: point {_point_label(point)}"
        try:
            doc = gridlib.apply_point(base, point)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        try:
            view = _where_view(doc, cluster, where, with_memory) if filters else doc
            if not all(keep(view) for keep in filters):
                continue
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        try:
            spec = _resolve_point(exp.name, point, doc, cluster, where, account)
        except QosRefused as exc:
            if refused is None:
                raise
            refused.append(RefusedPoint(point, str(exc).removeprefix(f"{where}: ")))
            continue
        if spec.run_id in seen:
            raise ConfigError(
                f"{source}: points {_point_label(seen[spec.run_id])} and {_point_label(point)} resolve "
                "to the same run (the grid repeats a value)"
            )
        seen[spec.run_id] = point
        specs.append(spec)
    return specs


def _point_label(point: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in point.items()) + "}" if point else "(base)"


def _split_with_defaults(
    doc: dict[str, Any], cluster: ClusterProfile, where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(resources, training) documents of a point, with the profile's defaults filled in."""
    if not isinstance(doc.get("resources", {}), dict):
        raise ConfigError(
            f"{where}: resources: must be a mapping (nodes, gpus_per_node, time, qos, "
            f"max_restarts), got {doc['resources']!r}"
        )
    resources_doc = dict(doc.get("resources", {}))
    resources_doc.setdefault("gpus_per_node", cluster.gpus_per_node)
    resources_doc.setdefault("max_restarts", cluster.max_restarts)
    if not resources_doc.get("qos"):
        resources_doc["qos"] = _qos_for(resources_doc, cluster)
    training_doc = {k: v for k, v in doc.items() if k != "resources"}
    training_doc.setdefault("metrics", {})
    training_doc["metrics"] = {**training_doc["metrics"], "gpu_type": cluster.gpu_type}
    return resources_doc, training_doc


def _qos_for(resources_doc: dict[str, Any], cluster: ClusterProfile) -> str | None:
    """The profile's choice of QoS for a point that names none (None: none admits it, or the
    resources do not validate, which is reported on its own)."""
    try:
        resources = Resources.model_validate(resources_doc)
    except ValidationError:
        return None
    return default_qos(cluster, resources.nodes, resources.time)


def _where_view(doc: dict[str, Any], cluster: ClusterProfile, where: str, with_memory: bool) -> dict[str, Any]:
    """The point as ``where`` sees it: every resolved value (defaults, preset fields, the profile's
    gpus_per_node and QoS) plus, when ``with_memory``, the memory estimate's ``mem_gib`` and ``fits``
    (hpcllm.memory.runs), or only what the YAML says when the point does not validate (it is then
    rejected later unless the filter drops it); ``cluster`` is the profile's name, so one grid can
    hold different rows for different machines."""
    resources_doc, training_doc = _split_with_defaults(doc, cluster, where)
    try:
        resources = Resources.model_validate(resources_doc)
        training = TrainingConfig.model_validate(training_doc)
    except ValidationError:
        return {**doc, "cluster": cluster.name}
    view = {"resources": resources.model_dump(mode="json"), **training.model_dump(mode="json"), "cluster": cluster.name}
    if with_memory:
        assert resources.gpus_per_node is not None
        view.update(
            memory_where_names(training, nodes=resources.nodes, gpus_per_node=resources.gpus_per_node, cluster=cluster)
        )
    return view


def _resolve_point(
    experiment: str,
    point: dict[str, Any],
    doc: dict[str, Any],
    cluster: ClusterProfile,
    where: str,
    account: str | None,
) -> RunSpec:
    resources_doc, training_doc = _split_with_defaults(doc, cluster, where)
    try:
        resources = Resources.model_validate(resources_doc)
        training = TrainingConfig.model_validate(training_doc)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, TrainingConfig, where)) from None
    _check_against_cluster(resources, training, cluster, where)
    training = resolve_on_login(training, cluster.storage_roots(account), where, f"cluster {cluster.name!r}")
    training = _with_global_batch(training, resources, where)
    run_id = _run_id(training, resources)
    training = training.model_copy(update={"run_id": run_id})
    return RunSpec(experiment, cluster.name, run_id, point, resources, training)


def _check_against_cluster(resources: Resources, training: TrainingConfig, cluster: ClusterProfile, where: str) -> None:
    if resources.nodes > cluster.max_nodes:
        raise ConfigError(
            f"{where}: resources.nodes: {resources.nodes} nodes requested, but cluster {cluster.name!r} "
            f"has at most {cluster.max_nodes} (the job would pend forever)"
        )
    if not cluster.is_cpu and (resources.gpus_per_node or 0) > cluster.gpus_per_node:
        raise ConfigError(
            f"{where}: resources.gpus_per_node: {resources.gpus_per_node} ranks per node, but a node of cluster "
            f"{cluster.name!r} has {cluster.gpus_per_node} GPUs (one rank per GPU)"
        )
    if cluster.scheduler == "local" and resources.nodes != 1:
        raise ConfigError(f"{where}: resources.nodes: the local cluster runs 1 node, got {resources.nodes}")
    if resources.qos is None and cluster.auto_qos:
        raise QosRefused(
            f"{where}: resources.nodes: no QoS of {cluster.name!r} admits {resources.nodes} nodes for "
            f"{resources.time}: {'; '.join(auto_qos_refusals(cluster, resources.nodes, resources.time))} "
            "(a larger allocation's QoS can be added to the profile)"
        )
    if resources.qos is not None:
        if cluster.qos and resources.qos not in cluster.qos:
            raise ConfigError(
                f"{where}: resources.qos: {resources.qos!r} is not a QoS of {cluster.name!r}; "
                f"allowed: {', '.join(cluster.qos)}"
            )
        spec = cluster.qos.get(resources.qos)
        if spec is not None:
            if parse_slurm_time(resources.time) > parse_slurm_time(spec.max_time):
                raise ConfigError(
                    f"{where}: resources.time: {resources.time} exceeds QoS {resources.qos!r} limit {spec.max_time}"
                )
            if spec.max_nodes is not None and resources.nodes > spec.max_nodes:
                raise ConfigError(
                    f"{where}: resources.nodes: {resources.nodes} exceeds QoS {resources.qos!r} limit of "
                    f"{spec.max_nodes} nodes"
                )
            if spec.min_nodes is not None and resources.nodes < spec.min_nodes:
                raise ConfigError(
                    f"{where}: resources.nodes: {resources.nodes} is below QoS {resources.qos!r} minimum of "
                    f"{spec.min_nodes} nodes (the job would pend forever)"
                )
    if training.device == "cuda" and cluster.is_cpu:
        raise ConfigError(f"{where}: device: 'cuda' on cluster {cluster.name!r}, which has no GPUs")
    if parse_slurm_time(resources.time) <= cluster.signal_before_end_s and cluster.scheduler == "slurm":
        raise ConfigError(
            f"{where}: resources.time: {resources.time} is not longer than the profile's "
            f"signal_before_end_s ({cluster.signal_before_end_s} s): the job would stop at once"
        )


def _with_global_batch(training: TrainingConfig, resources: Resources, where: str) -> TrainingConfig:
    """GBS = MBS x grad_accum x data-parallel size: fill it in, or check the one the user gave."""
    assert resources.gpus_per_node is not None
    dp = resources.nodes * resources.gpus_per_node
    gbs = training.train.micro_batch_size * training.train.grad_accum * dp
    given = training.train.global_batch_size
    if given is not None and given != gbs:
        raise ConfigError(
            f"{where}: train.global_batch_size: {given} != micro_batch_size "
            f"({training.train.micro_batch_size}) x grad_accum ({training.train.grad_accum}) x "
            f"data-parallel size ({dp}) = {gbs}"
        )
    train = training.train.model_copy(update={"global_batch_size": gbs})
    return training.model_copy(update={"train": train})


_SHARDING_ABBREV = {"FULL_SHARD": "fs", "HYBRID_SHARD": "hs", "NO_SHARD": "ns"}


def _run_id(training: TrainingConfig, resources: Resources) -> str:
    """Readable name + 8 hex digits of the resolved config, so equal configs share one directory."""
    identity = {
        "training": training.model_dump(mode="json", exclude={"run_id"}),
        "nodes": resources.nodes,
        "gpus_per_node": resources.gpus_per_node,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    p, t = training.parallel, training.train
    name = (
        f"{training.model.name}-n{resources.nodes}x{resources.gpus_per_node}-mbs{t.micro_batch_size}"
        f"-ga{t.grad_accum}-{_SHARDING_ABBREV[p.sharding]}-ac{p.activation_checkpointing}"
        f"{'-compile' if p.compile else ''}-seq{training.model.seq_len}"
    )
    return f"{name}-{digest}"
