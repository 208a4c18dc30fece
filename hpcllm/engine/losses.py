"""Per-token training losses, returned as *weighted sums* over tokens.

Each token's loss is multiplied by its loss weight in [0, 1] (the store's ``loss_mask``: a 0/1
mask, or fractional weights; none = 1). Sums, not means: the train step divides by the sum of the
weights of the whole optimizer step (all micro-batches, all ranks), so the loss is the weighted
mean over exactly those tokens whatever the split into micro-batches and ranks. A token of weight
0 adds nothing to loss or gradient; a token of weight w contributes w times its gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_sum(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.sum()
    return (per_token * mask.reshape(-1)).sum()


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ over tokens of weight·(−log p(label)); logits (B, T, V) in any dtype, computed in fp32.

    fp32 even for bf16 logits: a bf16 cross-entropy is ~2x faster on CPU but its sum is off by
    ~0.03 nats per token, against 6e-7 in fp32 (benchmarks/engine_overhead.py). Without weights
    PyTorch sums inside the kernel, which skips a per-token loss tensor (~9% of the loss's time).
    """
    flat = logits.flatten(0, 1).float()
    if mask is None:
        return F.cross_entropy(flat, labels.reshape(-1), reduction="sum")
    return _masked_sum(F.cross_entropy(flat, labels.reshape(-1), reduction="none"), mask)


def distillation_sum(
    student: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Σ over tokens of weight·(α·T²·KL(p_teacher,T ‖ p_student,T) + (1−α)·CE(student, label)).

    T² keeps the soft-target gradient's scale independent of T (Hinton et al. 2015).
    """
    t = temperature
    log_p_student = F.log_softmax(student.flatten(0, 1).float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.flatten(0, 1).float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (B·T,)
    ce = F.cross_entropy(student.flatten(0, 1).float(), labels.reshape(-1), reduction="none")
    return _masked_sum(alpha * t * t * kl + (1.0 - alpha) * ce, mask)
