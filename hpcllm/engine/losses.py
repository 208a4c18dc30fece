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
    """Σ weight·(−log p(label)) over rows, fp32, ``rows`` tokens at a time, its gradient computed in forward.

    Each chunk runs the autograd ops an unchunked ``F.cross_entropy`` would (cast, log-softmax, NLL,
    each row on its own) and, at once, their backward for the gradient ``grad_scale`` the caller
    will send (the train step's ``1 / tokens`` times ranks and loss scale; 1 for a plain
    ``.backward()``), cast back to the logits' dtype into one gradient tensor. Forward therefore
    keeps that gradient instead of the logits (the same bytes) and backward only multiplies it by
    ``grad / grad_scale``, which is exactly 1 when the caller sends the announced gradient: the
    gradient is bitwise the unchunked one, the loss differs only in the order its fp32 partial sums
    are added, the N x V fp32 buffers (log-softmax output, its gradient and its input's: 12 bytes per
    token and vocabulary entry) never exist whole, and the log-softmax runs once, not again in
    backward (benchmarks/engine_overhead.py). Backward may run once (the gradient is scaled in place).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        logits: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor | None,
        rows: int,
        grad_scale: torch.Tensor,
    ) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        # One chunk: its own gradient is the whole one, kept without a copy.
        grad = None if rows >= logits.shape[0] else torch.empty_like(logits)
        # A chunk's graph lives only inside this loop: outer saved-tensor hooks (the memory audit,
        # activation offloading) must not see its buffers as activations kept for backward.
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            for start in range(0, logits.shape[0], rows):
                end = start + rows
                piece = logits[start:end].detach().requires_grad_()
                w = None if weights is None else weights[start:end]
                loss = _chunk_loss(piece, labels[start:end], w)
                (piece_grad,) = torch.autograd.grad(loss, piece, grad_scale)
                if grad is None:
                    grad = piece_grad
                else:
                    grad[start:end] = piece_grad
                total += loss.detach()
        assert grad is not None, "no tokens"
        ctx.save_for_backward(grad)
        ctx.grad_scale = grad_scale  # type: ignore[attr-defined]  # a scalar: not an activation
        return total

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (logits_grad,) = ctx.saved_tensors  # type: ignore[attr-defined]
        ratio = grad / ctx.grad_scale  # type: ignore[attr-defined]
        # Exactly 1 when the caller sent the announced gradient. On CPU reading it costs nothing and
        # saves a pass over N x V; on a GPU it would stall the host until forward ends: multiply.
        if grad.device.type == "cpu" and ratio.item() == 1.0:
            return logits_grad, None, None, None, None
        return logits_grad.mul_(ratio), None, None, None, None


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _chunked_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, rows: int) -> torch.Tensor:
    """The loss alone (evaluation, no gradient wanted), in the same chunks and summation order."""
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    for start in range(0, logits.shape[0], rows):
        w = None if weights is None else weights[start : start + rows]
        total += _chunk_loss(logits[start : start + rows], labels[start : start + rows], w)
    return total


def cross_entropy_sum(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor | None,
    grad_scale: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """Σ over tokens of weight·(−log p(label)); logits (B, T, V) in any dtype, computed in fp32.

    fp32 even for bf16 logits: a bf16 cross-entropy is ~2x faster on CPU but its sum is off by
    ~0.03 nats per token, against 6e-7 in fp32 (benchmarks/engine_overhead.py). Without weights
    PyTorch sums inside the kernel, which skips a per-token loss tensor (~9% of the loss's time).
    In chunks of tokens (``_ChunkedCrossEntropy``), so no N x V fp32 tensor is ever held whole.
    ``grad_scale``: the gradient the caller's backward will send to this sum (``(loss * s).backward()``
    sends ``s``); any other works too, only not bitwise like an unchunked cross-entropy.
    """
    flat = logits.flatten(0, 1)
    weights = None if mask is None else mask.reshape(-1)
    rows = ce_chunk_rows(flat.shape[-1])
    if not (torch.is_grad_enabled() and flat.requires_grad):
        return _chunked_sum(flat, labels.reshape(-1), weights, rows)
    scale = torch.as_tensor(grad_scale, dtype=torch.float32, device=flat.device).detach()
    return _ChunkedCrossEntropy.apply(flat, labels.reshape(-1), weights, rows, scale)


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
