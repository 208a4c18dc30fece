"""Per-token training losses, returned as *sums* over unmasked tokens.

Sums, not means: the train step divides by the number of unmasked tokens of the whole optimizer
step (all micro-batches, all ranks), so the gradient is the mean over exactly those tokens whatever
the split into micro-batches and ranks. A token whose mask is 0 adds nothing to loss or gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_sum(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.sum()
    return (per_token * mask.reshape(-1)).sum()


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ over unmasked tokens of −log p(label); logits (B, T, V) in any dtype, computed in fp32."""
    per_token = F.cross_entropy(logits.flatten(0, 1).float(), labels.reshape(-1), reduction="none")
    return _masked_sum(per_token, mask)


def distillation_sum(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                     mask: torch.Tensor | None, *, alpha: float, temperature: float) -> torch.Tensor:
    """Σ over unmasked tokens of α·T²·KL(p_teacher,T ‖ p_student,T) + (1−α)·CE(student, label).

    T² keeps the soft-target gradient's scale independent of T (Hinton et al. 2015).
    """
    t = temperature
    log_p_student = F.log_softmax(student.flatten(0, 1).float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher.flatten(0, 1).float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)  # (B·T,)
    ce = F.cross_entropy(student.flatten(0, 1).float(), labels.reshape(-1), reduction="none")
    return _masked_sum(alpha * t * t * kl + (1.0 - alpha) * ce, mask)
