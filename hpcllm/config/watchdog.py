"""``watchdog:`` in run.yaml: when a run that makes no progress is declared hung (hpcllm.engine.watchdog)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WatchdogConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Watch every rank's progress; off = wait for the time limit.")
    timeout_s: float = Field(
        600.0,
        gt=0,
        description="Seconds without a step starting or ending on a rank before the run is declared hung. "
        "Must exceed the longest step, evaluation and checkpoint save (the default suits GPUs).",
    )
    heartbeat_every_s: float = Field(
        10.0, gt=0, description="At most one heartbeat (with a few-ms GEMM probe) per rank in this many seconds."
    )
    straggler_margin: float = Field(
        0.2, gt=0, lt=1, description="Flag a rank whose GEMM probe is this fraction below the median rank's."
    )
    straggler_checks: int = Field(3, gt=0, description="... in this many heartbeats in a row.")
