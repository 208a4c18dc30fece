"""``tracking:`` in run.yaml: where rank 0 mirrors the metrics for dashboards (hpcllm.engine.tracking).

Compute nodes usually have no internet, so the default sends nothing anywhere: TensorBoard event
files in the run directory, and Weights & Biases only when configured, offline unless told otherwise
(``wandb sync`` uploads later from a login node).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"


class WandbConfig(_Strict):
    project: str = Field(description="W&B project the run belongs to.")
    entity: str | None = Field(None, description="W&B team or user; default: your default entity.")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline: write files under <run>/wandb/ to `wandb sync` later."
    )
    group: str | None = Field(None, description="W&B group, e.g. the experiment or search name.")
    tags: list[str] = Field(default_factory=list)


class TrackingConfig(_Strict):
    tensorboard: bool = Field(True, description="Write TensorBoard event files to <run>/tensorboard/ (rank 0).")
    wandb: WandbConfig | None = Field(None, description="Also log to Weights & Biases (needs hpcllm[wandb]).")
