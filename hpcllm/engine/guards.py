"""Stop a run that diverged (a loss or gradient norm that is inf or NaN) before it can do harm.

Without a guard, a diverged run keeps training on NaN weights, checkpoints them (every later
restart then resumes into NaN), and burns its allocation to the end. So:

- ``check_step`` after every optimizer step: a non-finite loss or global gradient norm raises
  ``NonFiniteError`` naming the step. Both values are already reduced over all ranks, so every
  rank raises at the same step: no rank is left waiting in a collective.
- ``check_weights`` before every checkpoint save (also the forced one at a preemption and the
  final one): an update can overflow the weights while the loss that produced it was finite.
  A collective, so that all ranks skip the save together.

``NonFiniteError`` is an ``HpcllmError``: the engine writes ``summary.json`` with status
``failed``, the message (``error``) and ``failed_step``, and exits 1. Neither the local runner nor
the batch script's hooks requeue a failed run (only a ``preempted`` one), so a diverged run is not
restarted into the same divergence; it is resubmitted by hand (``--retry-failed``) after a fix,
and resumes from its last checkpoint, which is finite.

With a dynamic loss scaler (fp16), a step whose gradients overflowed is skipped by the scaler and
leaves the weights untouched: that is not divergence, and such a step must not be checked.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hpcllm.engine.preemption import any_rank
from hpcllm.errors import HpcllmError


class NonFiniteError(HpcllmError):
    """Training produced inf/NaN at ``step``; the run must stop without saving."""

    def __init__(self, step: int, what: str) -> None:
        super().__init__(
            f"step {step}: {what}: training diverged, stopped without saving a checkpoint of this state "
            "(earlier checkpoints are finite); lower optim.lr or raise schedule.warmup_steps, then "
            "resubmit with --retry-failed to resume from the last checkpoint"
        )
        self.step = step


def check_step(step: int, loss: float, grad_norm: float) -> None:
    """Raise NonFiniteError if the step's loss or gradient norm (global values) is inf or NaN."""
    bad = [
        f"{name} is {value}"
        for name, value in (("loss", loss), ("gradient norm", grad_norm))
        if not math.isfinite(value)
    ]
    if bad:
        raise NonFiniteError(step, " and ".join(bad))


def check_weights(model: nn.Module, step: int) -> None:
    """Raise NonFiniteError on every rank if any rank's parameters (its shards) hold inf or NaN."""
    finite: torch.Tensor | None = None
    for param in model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param  # an FSDP2 shard (DTensor)
        ok = torch.isfinite(local.detach()).all()
        finite = ok if finite is None else finite & ok.to(finite.device)
    if any_rank(finite is not None and not bool(finite)):  # one host sync, one all-reduce
        raise NonFiniteError(step, "the weights hold inf or NaN")
