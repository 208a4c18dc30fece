"""The estimate of a resolved grid point on a cluster: what ``where:`` filters and ``submit`` see.

A point's per-rank memory depends on its training config, its node and rank counts, and on the
device it runs on: a GPU profile's ranks are GPUs (capacity ``gpu_memory_gib``), a CPU profile's are
processes whose capacity is the RAM one rank may use.
"""

from __future__ import annotations

from typing import Any

from hpcllm.config.cluster import ClusterProfile
from hpcllm.config.training import TrainingConfig
from hpcllm.plan.memory.activations import Device
from hpcllm.plan.memory.estimate import MemoryEstimate, MemorySpec, estimate_memory


def run_device(training: TrainingConfig, cluster: ClusterProfile) -> Device:
    """Where the ranks compute: CPU on a CPU profile or with ``device: cpu``, else CUDA."""
    return "cpu" if cluster.is_cpu or training.device == "cpu" else "cuda"


def run_spec(training: TrainingConfig, *, nodes: int, gpus_per_node: int, cluster: ClusterProfile) -> MemorySpec:
    return MemorySpec.of_training(
        training, nodes=nodes, ranks_per_node=gpus_per_node, device=run_device(training, cluster)
    )


def estimate_run(
    training: TrainingConfig, *, nodes: int, gpus_per_node: int, cluster: ClusterProfile
) -> MemoryEstimate:
    return estimate_memory(run_spec(training, nodes=nodes, gpus_per_node=gpus_per_node, cluster=cluster))


def where_names(training: TrainingConfig, *, nodes: int, gpus_per_node: int, cluster: ClusterProfile) -> dict[str, Any]:
    """``mem_gib`` (the estimated peak per rank) and ``fits`` (within the profile's ``gpu_memory_gib``;
    true when the profile states none, as there is nothing to check against) for ``where:`` filters."""
    est = estimate_run(training, nodes=nodes, gpus_per_node=gpus_per_node, cluster=cluster)
    capacity = cluster.gpu_memory_gib
    return {"mem_gib": round(est.peak_gib, 3), "fits": capacity is None or est.fits(capacity)}
