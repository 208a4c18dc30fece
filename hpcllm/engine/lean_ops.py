"""Element-wise ops that keep for backward only what their gradient needs and recompute the rest.

Autograd saves every intermediate an op chain's backward touches. For SwiGLU, ``F.silu(gate) *
up`` saves gate (for silu's backward), silu(gate) and up (for the product's), so with the down
projection's input, four N x f tensors per block. ``silu_mul`` saves gate and up only and
recomputes silu(gate) in backward: one cheap element-wise op for a quarter of the MLP's saved bytes
(docs/memory.md). The linear layers around it stay ``nn.Linear`` modules, so sharding and tensor-
parallel plans that address them by name apply unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _SiluMul(torch.autograd.Function):
    """silu(gate) · up, saving (gate, up); backward runs the kernels the unfused chain would run."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate) * up

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors  # type: ignore[attr-defined]
        # The same products and silu_backward kernel as the unfused chain's MulBackward0 and
        # SiluBackward0, so the gradients are bitwise those of F.silu(gate) * up. In this order,
        # with the recomputed silu(gate) multiplied in place, at most three N x f tensors are live
        # (grad, grad_gate and one temporary), as in the unfused chain's backward.
        grad_gate = torch.ops.aten.silu_backward(grad * up, gate)
        grad_up = F.silu(gate).mul_(grad)
        return grad_gate, grad_up


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) · up (SwiGLU's gating), keeping only gate and up for backward."""
    return _SiluMul.apply(gate, up)
