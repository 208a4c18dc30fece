"""Dynamic loss scaling for FP16 training, with sharded (FSDP2) gradients.

FP16 has five exponent bits: small gradients underflow to zero on their way through fp16 ops. So
the loss is multiplied by a scale S before ``backward`` (gradients are S times larger while they
are fp16) and the fp32 gradients are divided by S before the optimizer sees them. When S is too
large some gradient overflows to inf/NaN: that step is skipped (no update) and S shrinks by
``backoff_factor``; after ``growth_interval`` good steps in a row S grows by ``growth_factor``, so
it keeps probing for the largest safe scale (Micikevicius et al. 2018, "Mixed Precision Training";
the policy of ``torch.amp.GradScaler``).

Why not ``torch.amp.GradScaler``: under FSDP2 each rank holds a shard of every gradient, so an
overflow on one rank's shard must skip the step on *every* rank, or the replicas silently diverge.
Here the overflow test is the global gradient norm, which the train step computes anyway (for
clipping and the log) as a reduction over every rank's shards: it is finite on every rank exactly
when no shard anywhere holds an inf or NaN (or squares so large that their sum overflows fp32,
which is skipped too), and every rank receives the same value, hence takes the same decision.

The scale and the count of good steps are part of the checkpoint (``trainer_state.json``), so a
resumed run continues with the scale it had, instead of re-learning it through skipped steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hpcllm.config.training import LossScaleConfig, ParallelConfig
from hpcllm.engine.optim import local_grads
from hpcllm.errors import HpcllmError


class DynamicLossScaler:
    """The scale S, its update rule, and the unscaling of (sharded) gradients."""

    def __init__(self, cfg: LossScaleConfig) -> None:
        self.cfg = cfg
        self.scale = float(cfg.init_scale)
        self.good_steps = 0  # finite steps since the last overflow or growth

    def unscale_(self, params: list[torch.nn.Parameter]) -> None:
        """Divide every gradient by S in place: the local shard of a DTensor, or the plain tensor."""
        local = local_grads(params)
        if local:
            torch._foreach_mul_(local, 1.0 / self.scale)

    def update(self, grad_norm: float) -> bool:
        """Apply the scale policy after a step whose global gradient norm was ``grad_norm``.

        Returns True when the step must be skipped (the norm is inf/NaN). Raises when the scale
        would drop below ``min_scale``: a gradient that overflows even at a scale that small is not
        a scaling problem (the loss itself is not finite, or fp16 cannot hold the activations), and
        skipping steps forever would hide it.
        """
        if math.isfinite(grad_norm):
            self.good_steps += 1
            if self.good_steps >= self.cfg.growth_interval:
                self.scale *= self.cfg.growth_factor
                self.good_steps = 0
            return False
        self.good_steps = 0
        reduced = self.scale * self.cfg.backoff_factor
        if reduced < self.cfg.min_scale:
            raise HpcllmError(
                f"FP16 gradients still overflow at loss scale {self.scale:g} (parallel.loss_scale."
                f"min_scale is {self.cfg.min_scale:g}): the loss or the activations are not finite in "
                "fp16; lower the learning rate, or train with precision: BF_16"
            )
        self.scale = reduced
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scale = float(state_dict["scale"])
        self.good_steps = int(state_dict["good_steps"])


def build_loss_scaler(cfg: ParallelConfig) -> DynamicLossScaler | None:
    """A scaler for FP_16 (``parallel.loss_scale``, else the defaults); None for BF_16 and FP_32,
    whose exponent range is fp32's and needs no scaling."""
    if cfg.precision != "FP_16":
        return None
    return DynamicLossScaler(cfg.loss_scale or LossScaleConfig())
