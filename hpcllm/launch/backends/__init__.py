"""Scheduler backends behind one interface (``Backend``); ``backend_for`` picks one per profile."""

from __future__ import annotations

from hpcllm.config.cluster import ClusterProfile
from hpcllm.launch.backends.base import Backend


def backend_for(cluster: ClusterProfile) -> Backend:
    if cluster.scheduler == "local":
        from hpcllm.launch.backends.local import LocalBackend

        return LocalBackend(cluster)
    from hpcllm.launch.backends.slurm import SlurmBackend

    return SlurmBackend(cluster)
