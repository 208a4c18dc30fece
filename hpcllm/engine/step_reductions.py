"""The train step's own reductions across ranks, kept to what the step needs and fused where they can be.

Beside FSDP2's or DDP's gradient reduction, a step needs: the sum of the loss weights of its
tokens over all ranks (to normalise the loss before backward), and, after backward, the global
gradient norm (clipping, the FP_16 skip decision, the log) and the global loss sum (the log, the
non-finite guard). A small collective costs little in itself (~0.3 ms on gloo), but each one is a
point where the faster rank waits for the slower one, which is what a loaded machine or a
straggler node turns into lost time (docs/performance.md); so:

- the weight sum needs no collective without loss weights: every token weighs 1 and every rank's
  micro-batches have the same shape;
- the norm and the loss travel in one all-reduce of two numbers (``step_report``).
"""

from __future__ import annotations

from typing import Any

import torch

from hpcllm.engine.distributed import all_reduce_sum
from hpcllm.engine.optim import grad_norm_sq_share


def token_weight_sum(
    micro_batches: list[dict[str, Any]], dp_size: int, device: torch.device, *, copies: int = 1
) -> float | torch.Tensor:
    """The sum of the loss weights of the step's tokens on all data-parallel ranks.

    Without loss weights: ``dp_size`` × the local token count, a Python float. With weights: an
    fp64 tensor on the device, from one all-reduce (no host synchronisation), at least 1.
    ``copies``: ranks that read the same micro-batches (the tensor-parallel degree), whose
    weights the all-reduce over the world counts that many times.
    """
    if all(b["loss_mask"] is None for b in micro_batches):
        return float(dp_size * sum(b["labels"].numel() for b in micro_batches))
    n_tokens = torch.zeros(1, dtype=torch.float64, device=device)
    for b in micro_batches:
        n_tokens += b["loss_mask"].sum() if b["loss_mask"] is not None else b["labels"].numel()
    return (all_reduce_sum(n_tokens) / copies).clamp_min(1.0).squeeze()


def step_report(
    grads: list[torch.Tensor], loss_sum: torch.Tensor, replicas: int | list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The global gradient norm and loss sum, fp64 tensors equal on every rank, from one all-reduce.

    ``grads``: this rank's local gradients (shards); ``replicas``: on how many ranks each element
    lives (``hpcllm.engine.optim.grad_replicas``); ``loss_sum``: this rank's fp64 loss sum.
    """
    share = grad_norm_sq_share(grads, replicas).to(loss_sum.device, torch.float64)
    stats = all_reduce_sum(torch.stack([share, loss_sum]))
    return stats[0].sqrt(), stats[1]
