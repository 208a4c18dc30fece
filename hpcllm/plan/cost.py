"""What one grid point costs before it runs: wall time, requeue chunks, node-hours and GPU-hours.

Pure arithmetic on a RunSpec, its profile and a step time that the caller found (``hpcllm plan``
looks in this cluster's finished runs, then the seed's rows, then the scaling fit:
``hpcllm.collect.steptimes``). The last source lives here because it needs nothing but the model
and the hardware: the FLOPs of a step at a stated MFU (``hpcllm.perf`` holds the peaks and the FLOPs
per token).

A point's wall time is its steps times the step time plus the checkpoints it writes: those its
config asks for (``every_steps``, ``every_minutes``, ``at_end``), one at each requeue (the engine saves
when the batch script is signalled ``signal_before_end_s`` before the time limit) and one load per
requeue. A job holds its nodes for at most ``time - signal_before_end_s`` of training, so a run longer
than that takes ``ceil(wall / usable)`` jobs ("chunks"). Without a step time the point is priced at
its time limit, once: an upper bound of one job, no more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hpcllm import perf
from hpcllm.config.cluster import ClusterProfile, parse_slurm_time
from hpcllm.config.experiment import RunSpec
from hpcllm.plan.memory.checkpoint import checkpoint_bytes

GIB = 1 << 30

SOURCE_MEASURED, SOURCE_SEED, SOURCE_FIT, SOURCE_FLOPS, SOURCE_LIMIT = "measured", "seed", "fit", "flops", "time limit"


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step, where they came from (one of the SOURCE_ kinds) and the detail."""

    seconds: float
    source: str
    detail: str
    uncertainty_s: float | None = None  # two standard errors, for a fit


@dataclass(frozen=True)
class PointCost:
    run_id: str
    nodes: int
    gpus: int
    steps: int
    step: StepTime
    checkpoints: int  # saves and loads priced
    checkpoint_s: float | None  # one save (None: no bandwidth known)
    wall_s: float  # over all chunks
    chunks: int
    max_jobs: int  # 1 + the requeues the run may use

    @property
    def node_hours(self) -> float:
        return self.nodes * self.wall_s / 3600.0

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.wall_s / 3600.0

    def tres_minutes(self, tres: str, cpus_per_node: int) -> float | None:
        """This point in a SLURM TRES's minutes (GrpTRESMins units); None for a TRES it does not price.

        ``billing`` is SLURM's default without TRESBillingWeights: the allocated CPUs (whole nodes).
        """
        per_node = {"node": 1.0, "cpu": float(cpus_per_node), "billing": float(cpus_per_node)}
        if tres in per_node:
            return self.node_hours * 60.0 * per_node[tres]
        if tres in ("gres/gpu", "gpu"):
            return self.gpu_hours * 60.0
        return None


def flops_step_time(spec: RunSpec, cluster: ClusterProfile, mfu: float, mfu_source: str) -> StepTime | None:
    """A step's FLOPs (the seed's convention, as the MFU column) at ``mfu`` of the GPUs' peak; None
    on hardware without a known peak (CPU ranks)."""
    try:
        peak = perf.peak_flops(cluster.gpu_type)
    except perf.UnknownGPUError:
        return None
    m, t = spec.training.model, spec.training.train
    assert t.global_batch_size is not None  # resolved with the point
    tokens = t.global_batch_size * m.seq_len
    flops = tokens * perf.seed_flops_per_token(m.n_layers, m.seq_len, m.d_model)
    seconds = flops / (spec.world_size * peak * mfu)
    return StepTime(seconds, SOURCE_FLOPS, f"{flops / tokens / 1e9:.3g} GFLOP/token at MFU {mfu:.2f} ({mfu_source})")


def checkpoint_seconds(spec: RunSpec, cluster: ClusterProfile) -> float | None:
    """One save of this model at the profile's write bandwidth (None when the profile states none)."""
    bandwidth = cluster.accounting.checkpoint_write_gib_s
    if bandwidth is None:
        return None
    return checkpoint_bytes(spec.training.model, spec.world_size) / GIB / bandwidth


def point_cost(spec: RunSpec, cluster: ClusterProfile, step: StepTime | None) -> PointCost:
    """The cost of ``spec`` with ``step`` (None: priced at its time limit, see the module's doc)."""
    limit_s = float(parse_slurm_time(spec.resources.time))
    usable_s = max(limit_s - cluster.signal_before_end_s, 1.0)
    restarts = spec.resources.max_restarts if spec.resources.max_restarts is not None else cluster.max_restarts
    steps = spec.training.train.steps
    nodes, gpus = spec.resources.nodes, spec.world_size
    if step is None:
        limit = StepTime(
            limit_s / steps, SOURCE_LIMIT, f"no step time known: priced at the time limit {spec.resources.time}"
        )
        return PointCost(spec.run_id, nodes, gpus, steps, limit, 0, None, limit_s, 1, restarts + 1)
    train_s = steps * step.seconds
    ckpt = spec.training.checkpoint
    planned = (steps // ckpt.every_steps if ckpt.every_steps else 0) + (1 if ckpt.at_end else 0)
    if ckpt.every_minutes:
        planned += int(train_s / 60.0 / ckpt.every_minutes)
    save_s = checkpoint_seconds(spec, cluster)
    chunks, wall_s = 1, train_s
    for _ in range(100):  # a requeue adds a save and a load, which may need another chunk: iterate to a fixed point
        saves = planned + 2 * (chunks - 1)
        wall_s = train_s + saves * (save_s or 0.0)
        needed = max(1, math.ceil(wall_s / usable_s))
        if needed == chunks:
            break
        chunks = needed
    return PointCost(
        spec.run_id, nodes, gpus, steps, step, planned + 2 * (chunks - 1), save_s, wall_s, chunks, restarts + 1
    )


@dataclass(frozen=True)
class PlanTotal:
    node_hours: float
    gpu_hours: float
    billed: float | None  # in the profile's billing unit, where it states one
    unit: str | None


def total(costs: list[PointCost], cluster: ClusterProfile) -> PlanTotal:
    node_hours = sum(c.node_hours for c in costs)
    billing = cluster.accounting.billing
    return PlanTotal(
        node_hours,
        sum(c.gpu_hours for c in costs),
        node_hours * billing.per_node_hour if billing else None,
        billing.unit if billing else None,
    )
