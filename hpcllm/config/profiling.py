"""``profile:`` in run.yaml: which steps the PyTorch profiler records (hpcllm.engine.profiling)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ProfileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    start_step: int = Field(
        5,
        gt=0,
        description="First profiled optimizer step (1-based, as in metrics.jsonl). Leave the first "
        "steps out: they pay for allocator growth, compilation and cold caches.",
    )
    steps: int = Field(3, gt=0, description="Consecutive steps recorded in one trace per rank.")
    memory: bool = Field(
        False,
        description="Record tensor allocations in the trace; on CUDA also dump an allocator "
        "snapshot (open it at pytorch.org/memory_viz).",
    )
    record_shapes: bool = Field(True, description="Record operator input shapes.")
    with_stack: bool = Field(False, description="Record Python stacks (large traces, slower).")

    @property
    def end_step(self) -> int:
        """The last profiled step."""
        return self.start_step + self.steps - 1
