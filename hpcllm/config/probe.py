"""The batch-size probe's contract: its settings in ``run.yaml`` and its answer in ``probe.json``.

A probe is a run whose ``run.yaml`` has a ``probe:`` section: instead of training to
``train.steps``, the engine (``hpcllm.engine.probe``) runs a few steps at each of a sequence of
micro-batch sizes and records, per size, samples/s, peak memory and whether it ran out of memory.
``hpcllm explore-batch`` writes such runs and reads their reports. Both sides import this module, so
the file format cannot drift; it is torch-free.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TrialStatus = Literal["ok", "oom", "over_budget", "crashed"]
StopReason = Literal["memory", "throughput", "max_mbs", "nothing fits"]


class ProbeConfig(BaseModel):
    """How a probe searches: start, bounds, steps per size, memory budget, throughput threshold."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    start_mbs: int = Field(
        1, gt=0, description="First micro-batch size tried (explore-batch: the estimate's largest fit)."
    )
    max_mbs: int = Field(512, gt=0, description="Never try a larger micro-batch.")
    warmup_steps: int = Field(1, ge=0, description="Unmeasured steps per size (allocator, optimizer state).")
    steps: int = Field(3, gt=0, description="Timed steps per size; their median step time gives samples/s.")
    memory_budget_gib: float | None = Field(
        None,
        gt=0,
        description="Per-rank limit a size must stay under: peak resident memory of a CPU rank, "
        "peak reserved GPU memory on CUDA (a real CUDA out-of-memory counts too). null: only real OOMs.",
    )
    min_gain: float | None = Field(
        0.03,
        ge=0,
        description="Stop growing once samples/s per GPU improves by less than this fraction "
        "from one size to the next; null: grow until memory or max_mbs stops it.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> ProbeConfig:
        if self.start_mbs > self.max_mbs:
            raise ValueError(f"start_mbs ({self.start_mbs}) must not exceed max_mbs ({self.max_mbs})")
        return self


def probe_default(name: str) -> Any:
    """The default of ``ProbeConfig.<name>``: the one home of the probe's defaults, which
    ``explore-batch``'s options and ``ProbeSettings`` read."""
    return ProbeConfig.model_fields[name].default


class ProbeTrial(BaseModel):
    """One micro-batch size: what it cost and whether it fitted."""

    model_config = ConfigDict(extra="forbid")

    mbs: int
    status: TrialStatus
    samples_per_s: float | None = None  # all ranks together
    samples_per_s_per_gpu: float | None = None
    tokens_per_s_per_gpu: float | None = None
    step_time_s: float | None = None  # median of the timed steps
    mem_peak_gib: float | None = None  # max over ranks: CUDA max allocated, or peak RSS of a CPU rank
    mem_reserved_gib: float | None = None  # CUDA: max reserved by the caching allocator (what OOMs)
    estimate_gib: float | None = None  # hpcllm.plan.memory's peak for this size, for comparison
    steps: int = 0  # timed steps completed
    error: str | None = None

    @property
    def fits(self) -> bool:
        return self.status == "ok"

    @property
    def memory_gib(self) -> float | None:
        """The figure a budget is compared with: reserved on CUDA (what runs out), else the peak."""
        return self.mem_reserved_gib if self.mem_reserved_gib is not None else self.mem_peak_gib


class ProbeReport(BaseModel):
    """``probe.json``: the setup probed, every trial in order, and the conclusion."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    status: Literal["running", "completed", "preempted", "failed"] = "running"
    model: str
    n_params: int
    seq_len: int
    world_size: int
    sharding: str
    precision: str
    activation_checkpointing: str
    ac_every: int
    cpu_offload: bool
    compile: bool
    grad_accum: int
    device: str
    gpu_type: str
    memory_budget_gib: float | None
    min_gain: float | None
    baseline_gib: float | None = None  # memory in use before the first trial (weights, optimizer, runtime)
    trying: int | None = None  # the size being tried: set before and cleared after each trial
    trials: list[ProbeTrial] = Field(default_factory=list)
    stop_reason: StopReason | None = None
    largest_fit: int | None = None
    best_mbs: int | None = None  # highest samples/s per GPU among the sizes that fitted

    def conclude(self, stop_reason: StopReason) -> None:
        fitted = [t for t in self.trials if t.fits]
        self.stop_reason = stop_reason
        self.largest_fit = max((t.mbs for t in fitted), default=None)
        best = best_trial(fitted, capacity_gib=None, margin=0.0)
        self.best_mbs = best.mbs if best else None


def best_trial(trials: list[ProbeTrial], *, capacity_gib: float | None, margin: float) -> ProbeTrial | None:
    """The fitted trial with the highest samples/s per GPU whose memory stays ``margin`` below capacity.

    The margin leaves room for what a short probe does not see: allocator fragmentation growing over
    hours, a checkpoint save, a longer document. Ties go to the smaller size (less memory).
    """
    limit = None if capacity_gib is None else capacity_gib * (1.0 - margin)
    candidates = [
        t
        for t in trials
        if t.fits
        and t.samples_per_s_per_gpu is not None
        and (limit is None or (t.memory_gib is not None and t.memory_gib <= limit))
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda t: (t.samples_per_s_per_gpu, -t.mbs))
