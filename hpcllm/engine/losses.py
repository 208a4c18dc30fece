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

from hpcllm.plan.memory.loss import ce_chunk_rows


def _masked_sum(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return per_token.sum()
    return (per_token * mask.reshape(-1)).sum()


def _chunk_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """The fp32 weighted loss sum of some rows, exactly as one unchunked call computes each row."""
    flat = logits.float()
    if weights is None:
        return F.cross_entropy(flat, labels, reduction="sum")
    return (F.cross_entropy(flat, labels, reduction="none") * weights).sum()


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Σ weight·(−log p(label)) over rows, fp32, computed ``rows`` tokens at a time, forward and backward.

    Forward keeps no fp32 tensor: only the logits (which the head's output already is) and the
    labels. Backward recomputes each chunk's fp32 log-softmax and runs the same autograd ops an
    unchunked ``F.cross_entropy`` would (cast, log-softmax, NLL, each row on its own), writing the
    chunk's gradient, cast back to the logits' dtype, into one gradient tensor. So the gradient is
    bitwise the unchunked one, the loss differs only in the order its fp32 partial sums are added,
    and the N x V fp32 buffers (log-softmax output, its gradient and its input's: 12 bytes per token
    and vocabulary entry) never exist whole: one chunk's do. The price is one more log-softmax over
    the logits in backward.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None,
        rows: int,
    ) -> torch.Tensor:
        ctx.save_for_backward(logits, labels, weights)  # type: ignore[arg-type]  # None: no weights
        ctx.rows = rows  # type: ignore[attr-defined]
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], rows):
            end = start + rows
            w = None if weights is None else weights[start:end]
            total += _chunk_loss(logits[start:end], labels[start:end], w)
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, labels, weights = ctx.saved_tensors  # type: ignore[attr-defined]
        rows: int = ctx.rows  # type: ignore[attr-defined]
        out = torch.empty_like(logits)
        for start in range(0, logits.shape[0], rows):
            end = start + rows
            piece = logits[start:end].detach().requires_grad_()
            w = None if weights is None else weights[start:end]
            with torch.enable_grad():
                loss = _chunk_loss(piece, labels[start:end], w)
            (out[start:end],) = torch.autograd.grad(loss, piece, grad)
        return out, None, None, None


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Σ over tokens of weight·(−log p(label)); logits (B, T, V) in any dtype, computed in fp32.

    fp32 even for bf16 logits: a bf16 cross-entropy is ~2x faster on CPU but its sum is off by
    ~0.03 nats per token, against 6e-7 in fp32 (benchmarks/engine_overhead.py). Without weights
    PyTorch sums inside the kernel, which skips a per-token loss tensor (~9% of the loss's time).
    In chunks of tokens (``_ChunkedCrossEntropy``), so no N x V fp32 tensor is ever held whole.
    """
    flat = logits.flatten(0, 1)
    weights = None if mask is None else mask.reshape(-1)
    rows = ce_chunk_rows(flat.shape[-1])
    return _ChunkedCrossEntropy.apply(flat, labels.reshape(-1), weights, rows)


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
