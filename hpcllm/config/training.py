"""The training config: the contract between the orchestrator and the engine (``run.yaml``).

Every field here changes what the engine does; docs/run-contract.md describes each. The
orchestrator writes a fully resolved copy of this model into each run directory, the engine reads
it back with ``TrainingConfig.model_validate``; neither side invents defaults the other lacks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator

from hpcllm.config.choices import Checkpointing, Precision, Sharding
from hpcllm.config.evaluation import EvalConfig, HoldoutConfig, eval_data_error, one_source_shorthand
from hpcllm.config.model import ModelConfig
from hpcllm.config.probe import ProbeConfig
from hpcllm.config.profiling import ProfileConfig
from hpcllm.config.tracking import TrackingConfig
from hpcllm.config.watchdog import WatchdogConfig
from hpcllm.sitepaths import SitePath, site_path

DataParallelism = Literal["fsdp", "ddp", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"


class TrainConfig(_Strict):
    steps: int = Field(20, gt=0, description="Optimizer steps to run in total (across restarts).")
    micro_batch_size: int = Field(2, gt=0, description="MBS: sequences per rank per micro-step.")
    grad_accum: int = Field(1, gt=0, description="Micro-steps per optimizer step (sync on the last).")
    global_batch_size: int | None = Field(
        None, gt=0, description="GBS; if given, must equal MBS x grad_accum x data-parallel size."
    )
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the global grad norm; null = off.")
    log_every: int = Field(1, gt=0, description="Write a metrics.jsonl line every N steps.")
    summary_warmup_steps: int = Field(
        2, ge=0, description="Steps left out of summary.json's medians (compile, allocator warm-up)."
    )


class LossScaleConfig(_Strict):
    """FP_16's dynamic loss scaling (hpcllm/engine/loss_scale.py); defaults of torch.amp.GradScaler."""

    init_scale: float = Field(2.0**16, gt=0, description="Loss scale of the first step.")
    growth_factor: float = Field(2.0, gt=1, description="Scale multiplier after growth_interval good steps.")
    backoff_factor: float = Field(0.5, gt=0, lt=1, description="Scale multiplier after an overflow (step skipped).")
    growth_interval: int = Field(2000, gt=0, description="Finite steps in a row before the scale grows.")
    min_scale: float = Field(
        1.0, gt=0, description="Overflowing below this scale fails the run (the loss itself is not finite)."
    )

    @model_validator(mode="after")
    def _start_above_floor(self) -> LossScaleConfig:
        if self.init_scale < self.min_scale:
            raise ValueError(f"init_scale {self.init_scale:g} is below min_scale {self.min_scale:g}")
        return self


class ParallelConfig(_Strict):
    sharding: Sharding = Field(
        "FULL_SHARD",
        description="FSDP2 strategy. HYBRID_SHARD: replicate across nodes, shard within a node.",
    )
    hsdp_shard_size: int | None = Field(
        None, gt=0, description="HYBRID_SHARD shard-group size; default: ranks per node."
    )
    precision: Precision = Field(
        "BF_16",
        description="BF_16 / FP_16: half-precision params and compute, fp32 reductions and master "
        "weights; FP_16 adds dynamic loss scaling.",
    )
    loss_scale: LossScaleConfig | None = Field(
        None, description="FP_16 only: dynamic loss scaling settings; null = the defaults."
    )
    cpu_offload: bool = Field(False, description="Keep sharded params/grads/optimizer state on CPU.")
    activation_checkpointing: Checkpointing = "none"
    ac_every: int = Field(2, gt=0, description="selective AC: checkpoint every k-th block.")
    compile: bool = Field(False, description="torch.compile each transformer block.")
    tensor_parallel: Literal[1, 2, 4, 8] = Field(
        1,
        description="Tensor-parallel ranks per model replica, inside one node (<= GPUs per node); "
        "FSDP2 shards over the world / tensor_parallel data-parallel ranks.",
    )

    @model_serializer(mode="wrap")
    def _omit_tp_1(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """No ``tensor_parallel`` key at 1: run ids (a hash of the dump) and run.yaml files written
        before tensor parallelism existed stay the same."""
        data: dict[str, Any] = handler(self)
        if self.tensor_parallel == 1:
            data.pop("tensor_parallel", None)
        return data

    @model_validator(mode="after")
    def _hsdp_only(self) -> ParallelConfig:
        if self.hsdp_shard_size is not None and self.sharding != "HYBRID_SHARD":
            raise ValueError(f"hsdp_shard_size is only used with sharding: HYBRID_SHARD (got sharding {self.sharding})")
        if self.tensor_parallel > 1 and self.sharding == "NO_SHARD":
            raise ValueError(
                "tensor_parallel > 1 needs sharding FULL_SHARD or HYBRID_SHARD (NO_SHARD is DDP, which takes "
                "no tensor-parallel parameters)"
            )
        if self.loss_scale is not None and self.precision != "FP_16":
            raise ValueError(f"loss_scale is only used with precision: FP_16 (got precision {self.precision})")
        return self

    def shard_group_size(self, world_size: int, ranks_per_node: int) -> int:
        """Ranks one parameter is sharded over: all (FULL_SHARD), a node's or ``hsdp_shard_size``
        (HYBRID_SHARD), one (NO_SHARD). The engine's device mesh and the memory estimate use it."""
        if self.sharding == "FULL_SHARD":
            return world_size
        if self.sharding == "NO_SHARD":
            return 1
        return self.hsdp_shard_size or ranks_per_node

    def tensor_parallel_problem(self, model: ModelConfig, ranks_per_node: int) -> str | None:
        """Why ``tensor_parallel`` cannot run with ``ranks_per_node`` ranks per node and ``model``
        (TP stays inside a node; the model's heads, sequence and MLP must split), or None."""
        tp = self.tensor_parallel
        if tp > 1 and ranks_per_node % tp:
            return (
                f"{tp} does not divide the {ranks_per_node} GPUs per node: tensor parallelism stays inside a "
                f"node; allowed: {', '.join(str(n) for n in (1, 2, 4, 8) if ranks_per_node % n == 0)}"
            )
        return model.tensor_parallel_problem(tp)

    def data_parallel_size(self, world_size: int) -> int:
        """Ranks that read different data: the world / tensor_parallel (one source for the global
        batch, the engine's loader and the scaling table)."""
        return world_size // self.tensor_parallel

    def data_parallelism(self, world_size: int) -> DataParallelism:
        """How the engine lays the model out over ``world_size`` ranks (engine/parallelize.py says why).

        fsdp: FSDP2 for FULL_SHARD and HYBRID_SHARD on more than one rank, and for any CPU offload;
        ddp: NO_SHARD on more than one rank; none: one rank without offload. The engine and the
        memory estimate both read it, so the estimate describes the layout that actually runs.
        """
        if self.cpu_offload or self.tensor_parallel > 1 or (world_size > 1 and self.sharding != "NO_SHARD"):
            return "fsdp"
        return "ddp" if world_size > 1 else "none"


class OptimConfig(_Strict):
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    decay_embeddings: bool = Field(False, description="Apply weight decay to embedding tables.")
    decay_norms_and_biases: bool = Field(False, description="Apply weight decay to norm weights and biases.")


class ScheduleConfig(_Strict):
    name: Literal["constant", "linear", "cosine", "wsd", "step", "exponential"] = "cosine"
    warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to lr.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="linear, cosine, wsd: final lr as a fraction of lr.")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="wsd: fraction of the steps spent decaying at the end.")
    gamma: float | None = Field(
        None,
        gt=0,
        le=1,
        description="step: lr factor every step_size steps; exponential: lr factor per step (after warmup).",
    )
    step_size: int | None = Field(None, gt=0, description="step: steps between two decays by gamma.")
    total_steps: int | None = Field(
        None,
        gt=0,
        description="Steps the schedule spans; default: train.steps. Longer than train.steps, a run "
        "stops early on the longer schedule and resumes later with more steps on the same curve "
        "(search rungs).",
    )

    @model_validator(mode="after")
    def _decay_factors(self) -> ScheduleConfig:
        """gamma/step_size belong to step and exponential only: elsewhere they would be ignored."""
        needs = {"step": ("gamma", "step_size"), "exponential": ("gamma",)}.get(self.name, ())
        for key in ("gamma", "step_size"):
            given = getattr(self, key) is not None
            if key in needs and not given:
                raise ValueError(f"{key} is required with name: {self.name}")
            if given and key not in needs:
                users = "step" if key == "step_size" else "step and exponential"
                raise ValueError(f"{key} is only used by name: {users} (got name: {self.name})")
        return self


class DataSource(_Strict):
    path: SitePath = Field(description="Token store directory written by `hpcllm data prepare`.")
    weight: float = Field(1.0, gt=0, description="Relative sampling weight when blending stores.")


class DataConfig(_Strict):
    sources: list[DataSource] = Field(min_length=1)
    tokenizer: Annotated[str, site_path("byte")] = Field(
        "byte", description="'byte' or a tokenizer.json path; must match the store's fingerprint."
    )
    num_workers: int = Field(1, ge=0, description="DataLoader worker processes per rank.")
    shuffle: bool = True
    holdout: HoldoutConfig | None = Field(None, description="Documents held out of training (the eval set).")

    @model_validator(mode="before")
    @classmethod
    def _path_shorthand(cls, data: object) -> object:
        """``data: {path: X}`` is shorthand for one source of weight 1."""
        return one_source_shorthand(data)


class CheckpointConfig(_Strict):
    every_steps: int | None = Field(None, gt=0, description="Save every N steps; null = never by count.")
    every_minutes: float | None = Field(None, gt=0, description="Save every N minutes of training.")
    keep_last: int = Field(2, gt=0, description="Complete checkpoints to keep.")
    async_save: bool = Field(False, description="Overlap saves with training (dcp.async_save).")
    resume: bool = Field(True, description="Resume from the run's latest complete checkpoint.")
    at_end: bool = Field(True, description="Save a final checkpoint when training completes.")


class DistillConfig(_Strict):
    teacher: ModelConfig = Field(description="Teacher architecture (a preset plus overrides).")
    teacher_checkpoint: SitePath = Field(description="Run dir or checkpoint dir holding the teacher's weights.")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the KL term; 1-alpha weighs CE.")
    temperature: float = Field(1.0, gt=0)


class MetricsConfig(_Strict):
    gpu_type: str | None = Field(None, description="For MFU; filled from the cluster profile.")
    cpu_peak_flops: float | None = Field(
        None, gt=0, description="Per-rank peak FLOP/s used for MFU on CPU (otherwise MFU is null)."
    )


class TrainingConfig(_Strict):
    """Everything one training run needs; written as ``run.yaml`` in the run directory."""

    run_id: str = "adhoc"
    seed: int = 1234
    device: Literal["auto", "cpu", "cuda"] = "auto"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig.from_name("tiny"))
    train: TrainConfig = Field(default_factory=TrainConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    data: DataConfig
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    distill: DistillConfig | None = None
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    init_from: SitePath | None = Field(
        None,
        description="Warm start (fine-tuning): RUN_DIR[@STEP], a checkpoints/ or step_<N> folder, or a folder "
        "holding one run. Its model weights start this run; optimizer, LR schedule and data position start "
        "fresh. Only when the run has no checkpoint of its own (a restart resumes from those).",
    )
    eval: EvalConfig | None = Field(None, description="Periodic loss on held-out data (docs/evaluation.md).")
    profile: ProfileConfig | None = Field(None, description="PyTorch profiler traces of a few steps.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    probe: ProbeConfig | None = Field(
        None,
        description="Probe micro-batch sizes instead of training (written by `hpcllm explore-batch`; docs/memory.md).",
    )
    watchdog: WatchdogConfig = Field(
        default_factory=WatchdogConfig, description="Hang detection: stacks, the node named, a requeue without it."
    )

    @model_validator(mode="after")
    def _eval_has_data(self) -> TrainingConfig:
        problem = eval_data_error(self.eval, self.data.holdout is not None)
        if problem:
            raise ValueError(problem)
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_probe(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A training run's dump has no ``probe`` key, nor a ``watchdog`` key at its defaults: run ids
        (a hash of the dump) and run.yaml files written before these existed stay the same."""
        data: dict[str, Any] = handler(self)
        if self.probe is None:
            data.pop("probe", None)
        if self.watchdog == WatchdogConfig():
            data.pop("watchdog", None)
        return data
