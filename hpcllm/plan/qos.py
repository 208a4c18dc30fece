"""Which QoS admits a run: node range and wall time against a profile's QoS facts.

A QoS is a window, not only a cap: Leonardo's ``boost_qos_bprod`` takes 65 to 256 nodes and nothing
smaller, ``normal`` at most 64. A job outside its QoS's window pends forever (``QOSMinNodes``,
``QOSMaxNodePerJobLimit``) or is rejected at submission, so hpcllm checks on the login node and,
where the profile lists ``auto_qos``, picks the first QoS whose window holds the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpcllm.config.cluster import ClusterProfile, QosSpec, parse_slurm_time
from hpcllm.errors import ConfigError


class QosRefused(ConfigError):
    """No QoS the profile may choose admits the point: only a larger allocation can run it."""


@dataclass(frozen=True)
class RefusedPoint:
    """A grid point left out because no QoS admits it, and why (each QoS's limit)."""

    point: dict[str, Any]
    reason: str


def qos_refusal(name: str, spec: QosSpec, nodes: int, time: str) -> str | None:
    """Why QoS ``name`` does not admit ``nodes`` nodes for ``time``, or None when it does."""
    if spec.min_nodes is not None and nodes < spec.min_nodes:
        return f"{name} needs at least {spec.min_nodes} nodes"
    if spec.max_nodes is not None and nodes > spec.max_nodes:
        return f"{name} allows at most {spec.max_nodes} nodes"
    if parse_slurm_time(time) > parse_slurm_time(spec.max_time):
        return f"{name} allows at most {spec.max_time}"
    return None


def check_named_qos(cluster: ClusterProfile, qos: str, nodes: int, time: str, where: str) -> None:
    """A point that names its QoS (or got the profile's ``default_qos``): it must be one of the
    profile's, and its window must hold the run (``qos_refusal``: the same rule ``auto_qos`` picks by)."""
    if cluster.qos and qos not in cluster.qos:
        raise ConfigError(
            f"{where}: resources.qos: {qos!r} is not a QoS of {cluster.name!r}; allowed: {', '.join(cluster.qos)}"
        )
    spec = cluster.qos.get(qos)
    refusal = None if spec is None else qos_refusal(qos, spec, nodes, time)
    if refusal is not None:
        raise ConfigError(
            f"{where}: resources: QoS {qos!r} does not admit {nodes} nodes for {time}: {refusal} "
            "(the job would pend forever or be rejected)"
        )


def auto_qos_refusals(cluster: ClusterProfile, nodes: int, time: str) -> list[str]:
    """For each QoS of ``auto_qos``, in order, why it refuses the run (empty entries are not listed)."""
    return [r for name in cluster.auto_qos if (r := qos_refusal(name, cluster.qos[name], nodes, time))]


def default_qos(cluster: ClusterProfile, nodes: int, time: str) -> str | None:
    """The QoS of a run that names none: the first of ``auto_qos`` that admits it (None when none
    does), else the profile's ``default_qos``."""
    if not cluster.auto_qos:
        return cluster.default_qos
    return next((q for q in cluster.auto_qos if qos_refusal(q, cluster.qos[q], nodes, time) is None), None)
