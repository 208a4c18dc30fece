"""The training state: everything a checkpoint saves and a resume restores, in one object.

The train loop owns it; the checkpointer (``hpcllm.engine.checkpoint``) saves and restores it in
place. Keeping it a plain dataclass means neither side needs to know how the other builds the parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from hpcllm.engine.loss_scale import DynamicLossScaler


class Stateful(Protocol):
    """Anything with ``state_dict``/``load_state_dict`` (scheduler, data loader)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class StatefulScheduler(Stateful, Protocol):
    """The LR scheduler: stepped once per optimizer step."""

    def step(self) -> None: ...


class StatefulLoader(Stateful, Protocol):
    """The data loader: an endless iterator of micro-batches (``input_ids``, ``labels``, ``loss_mask``)."""

    def __next__(self) -> dict[str, torch.Tensor | None]: ...


@dataclass
class TrainState:
    """Model, optimizer, LR scheduler, data loader and the two counters that locate the run in time.

    ``step`` counts completed optimizer steps (0 before the first); ``consumed_samples`` counts
    sequences consumed by all ranks together (global batch size per step). ``loss_scaler``: FP_16
    runs only; its scale is saved with the rest. ``init_from``: the checkpoint a warm-started run
    took its initial weights from (provenance, kept across resumes).
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: StatefulScheduler
    loader: StatefulLoader
    step: int = 0
    consumed_samples: int = 0
    loss_scaler: DynamicLossScaler | None = None
    init_from: str | None = None
