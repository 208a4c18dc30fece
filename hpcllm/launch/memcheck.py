"""Submit-time memory check: which grid points cannot fit the profile's GPU memory, and why.

A point whose estimated per-rank peak (hpcllm.plan.memory) exceeds ``gpu_memory_gib`` would start, wait
in the queue, and die of out-of-memory; ``hpcllm submit`` leaves it out and says why, with the
largest micro-batch that would fit. A measurement beats the estimate: a point whose setup a probe
(``hpcllm explore-batch``) ran at this micro-batch size or a larger one is kept.
``--no-memory-check`` submits every point.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pydantic import BaseModel

from hpcllm.config.cluster import ClusterProfile
from hpcllm.config.experiment import RunSpec
from hpcllm.launch.probeindex import probe_key
from hpcllm.plan.memory import MemoryEstimate, MemorySpec, estimate_memory, largest_fitting_mbs
from hpcllm.plan.memory.runs import run_spec

# The terms named in a reason: the largest ones explain a miss.
TERMS_IN_REASON = 3


@dataclass(frozen=True)
class Unfit:
    """A point whose estimate exceeds the device memory."""

    spec: RunSpec
    estimate: MemoryEstimate
    capacity_gib: float
    largest_mbs: int  # 0: not even one sequence fits

    @property
    def reason(self) -> str:
        top = sorted(self.estimate.terms, key=lambda t: t.bytes, reverse=True)[:TERMS_IN_REASON]
        why = ", ".join(f"{t.name} {t.gib:.1f}" for t in top)
        if self.largest_mbs:
            hint = f"MBS <= {self.largest_mbs} fits"
        else:
            hint = "not even MBS 1 fits: activation checkpointing, more GPUs or cpu_offload"
        return f"needs {self.estimate.peak_gib:.1f} of {self.capacity_gib:g} GiB ({why} GiB); {hint}"


def split_by_fit(
    specs: list[RunSpec], cluster: ClusterProfile, measured: dict[str, int] | None = None
) -> tuple[list[RunSpec], list[Unfit]]:
    """(points that fit, points that do not). Every point fits a profile that states no memory.

    ``measured``: probe key -> the largest micro-batch size a probe of that setup ran.
    """
    capacity = cluster.gpu_memory_gib
    if capacity is None:
        return list(specs), []
    fitting: list[RunSpec] = []
    unfit: list[Unfit] = []
    # Points that differ only in what memory does not depend on (a learning rate, a seed) share one
    # estimate: a 1,000-point grid over 10 learning rates has 100 distinct ones.
    estimates: dict[tuple[object, ...], tuple[MemoryEstimate, int | None]] = {}
    for spec in specs:
        assert spec.resources.gpus_per_node is not None
        mspec = run_spec(
            spec.training, nodes=spec.resources.nodes, gpus_per_node=spec.resources.gpus_per_node, cluster=cluster
        )
        key = _memory_key(mspec)
        if key not in estimates:
            estimate = estimate_memory(mspec)
            estimates[key] = (estimate, None if estimate.fits(capacity) else largest_fitting_mbs(mspec, capacity))
        estimate, largest_mbs = estimates[key]
        if largest_mbs is None or (measured or {}).get(probe_key(spec), 0) >= spec.training.train.micro_batch_size:
            fitting.append(spec)
        else:
            unfit.append(Unfit(spec, estimate, capacity, largest_mbs))
    return fitting, unfit


def _memory_key(spec: MemorySpec) -> tuple[object, ...]:
    """Every field of ``spec`` (all the estimate depends on), hashable: configs as their JSON."""
    values = (getattr(spec, f.name) for f in dataclasses.fields(spec))
    return tuple(v.model_dump_json() if isinstance(v, BaseModel) else v for v in values)
