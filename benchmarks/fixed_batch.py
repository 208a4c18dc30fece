"""A loader stand-in for the engine benchmarks: the same micro-batch forever, so a measured step
holds no data-loading cost. Scripts in benchmarks/ import it as a sibling module."""

from __future__ import annotations

import torch


class FixedBatch:
    """The engine's loader contract (``next``, ``state_dict``, ``load_state_dict``) over one batch."""

    def __init__(self, batch: dict[str, torch.Tensor | None]) -> None:
        self.batch = batch

    def __next__(self) -> dict[str, torch.Tensor | None]:
        return self.batch

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        pass
