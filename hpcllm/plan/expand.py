"""Grid expansion: one experiment and one cluster profile -> ``RunSpec``s.

``expand_experiment`` checks each point against the profile (nodes, QoS, time, batch arithmetic)
before anything is rendered, so a run that would pend forever or fail at start-up is rejected on the
login node with the reason.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import ValidationError

from hpcllm.config import grid as gridlib
from hpcllm.config.cluster import ClusterProfile, parse_slurm_time
from hpcllm.config.experiment import Experiment, Resources, RunSpec
from hpcllm.config.loader import field_problems, one_refusal
from hpcllm.config.training import TrainingConfig
from hpcllm.errors import ConfigError
from hpcllm.plan.memory.runs import where_names as memory_where_names
from hpcllm.plan.qos import QosRefused, RefusedPoint, auto_qos_refusals, check_named_qos, default_qos
from hpcllm.sitepaths import resolve_on_login

# Names a `where:` filter may use beside the resolved config: the memory estimate (hpcllm.plan.memory.runs).
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
    (hpcllm.plan.memory.runs), or only what the YAML says when the point does not validate (it is then
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
    resources, training = _validate_point(resources_doc, training_doc, where)
    _check_against_cluster(resources, training, cluster, where)
    training = resolve_on_login(training, cluster.storage_roots(account), where, f"cluster {cluster.name!r}")
    training = _with_global_batch(training, resources, where)
    run_id = _run_id(training, resources)
    training = training.model_copy(update={"run_id": run_id})
    return RunSpec(experiment, cluster.name, run_id, point, resources, training)


def _validate_point(
    resources_doc: dict[str, Any], training_doc: dict[str, Any], where: str
) -> tuple[Resources, TrainingConfig]:
    """Both halves of a point, every wrong field of either said in one refusal line."""
    problems: list[str] = []
    try:
        resources = Resources.model_validate(resources_doc)
    except ValidationError as exc:
        problems += [f"resources.{p}" for p in field_problems(exc.errors(), Resources)]
    try:
        training = TrainingConfig.model_validate(training_doc)
    except ValidationError as exc:
        problems += field_problems(exc.errors(), TrainingConfig)
    if problems:
        raise ConfigError(one_refusal(where, problems))
    return resources, training


def _check_against_cluster(resources: Resources, training: TrainingConfig, cluster: ClusterProfile, where: str) -> None:
    _check_preflight(resources, cluster, where)
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
        check_named_qos(cluster, resources.qos, resources.nodes, resources.time, where)
    assert resources.gpus_per_node is not None
    tp_problem = training.parallel.tensor_parallel_problem(training.model, resources.gpus_per_node)
    if tp_problem:
        raise ConfigError(f"{where}: parallel.tensor_parallel: {tp_problem}")
    if training.device == "cuda" and cluster.is_cpu:
        raise ConfigError(f"{where}: device: 'cuda' on cluster {cluster.name!r}, which has no GPUs")
    if parse_slurm_time(resources.time) <= cluster.signal_before_end_s and cluster.scheduler == "slurm":
        raise ConfigError(
            f"{where}: resources.time: {resources.time} is not longer than the profile's "
            f"signal_before_end_s ({cluster.signal_before_end_s} s): the job would stop at once"
        )


def _check_preflight(resources: Resources, cluster: ClusterProfile, where: str) -> None:
    """The pre-flight and its spare nodes: SLURM only, spares need the pre-flight, and all must fit."""
    if (resources.preflight or resources.spare_nodes) and cluster.scheduler != "slurm":
        raise ConfigError(f"{where}: resources.preflight/spare_nodes: the pre-flight runs on SLURM clusters only")
    if resources.spare_nodes and resources.preflight is False:
        raise ConfigError(
            f"{where}: resources.spare_nodes: {resources.spare_nodes} spare nodes need the pre-flight to choose "
            "the nodes that train; drop --no-preflight or the spares"
        )
    if resources.spare_nodes and resources.nodes + resources.spare_nodes > cluster.max_nodes:
        raise ConfigError(
            f"{where}: resources.spare_nodes: {resources.nodes} + {resources.spare_nodes} spare nodes requested, but "
            f"cluster {cluster.name!r} has at most {cluster.max_nodes}"
        )


def _with_global_batch(training: TrainingConfig, resources: Resources, where: str) -> TrainingConfig:
    """GBS = MBS x grad_accum x data-parallel size: fill it in, or check the one the user gave."""
    assert resources.gpus_per_node is not None
    dp = training.parallel.data_parallel_size(resources.nodes * resources.gpus_per_node)
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
        f"{'-compile' if p.compile else ''}{f'-tp{p.tensor_parallel}' if p.tensor_parallel > 1 else ''}"
        f"-seq{training.model.seq_len}"
    )
    return f"{name}-{digest}"
