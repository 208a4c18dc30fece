"""How a node's cores are shared: the launcher step holds them all, each rank gets its share.

SLURM 22.05 and 23.02 do not pass the batch job's ``--cpus-per-task`` on to ``srun`` (23.11 reads
``SLURM_CPUS_PER_TASK`` again), so an ``srun`` that does not restate it may bind torchrun, its ranks
and their loader workers to fewer cores than the job holds: nothing fails, the GPUs starve. The
rendered step therefore names its CPUs and its binding explicitly (the same line is right on both
sides of 23.11), and each rank's OpenMP threads are its share of the node minus its loader workers.
"""

from __future__ import annotations

# Bind the one launcher task per node to the cores it was given: all of the node's CPUs that the
# job holds, no fewer (the 22.05 failure) and none outside the allocation (a shared node). Ranks
# are not pinned one by one: which cores sit next to which GPU differs per site (docs/sites.md).
CPU_BIND = "cores"


def rank_share(cpus_per_node: int, ranks_per_node: int) -> int:
    """Cores per rank: the node's cores split evenly between its ranks (at least one)."""
    return max(1, cpus_per_node // ranks_per_node)


def threads_per_rank(cpus_per_node: int, ranks_per_node: int, loader_workers: int) -> int:
    """OMP_NUM_THREADS of a rank: its share of the cores less one per loader worker (at least one)."""
    return max(1, rank_share(cpus_per_node, ranks_per_node) - loader_workers)
