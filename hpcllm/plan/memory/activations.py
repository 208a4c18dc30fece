"""Bytes the forward pass keeps for backward: the engine's model, op by op, without torch.

Each function mirrors what ``hpcllm.engine.model`` runs and what autograd saves for it (what
``torch.autograd.graph.saved_tensors_hooks`` sees), so the figure can be checked against the real
model on CPU (``hpcllm.engine.memory_audit``; tests/test_memory_activations.py). Parameters and
their casts are not activations: they are the weights and gathered-weights terms.

Symbols: B micro-batch, T sequence, N = B·T tokens, d hidden, H query heads, K key/value heads,
D head dim, f MLP width, V vocabulary. Element sizes come from ``Numerics``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hpcllm.config.model import ModelConfig
from hpcllm.plan.memory.loss import ce_saved_bytes, ce_working_bytes

Device = Literal["cuda", "cpu"]
Precision = Literal["BF_16", "FP_16", "FP_32"]  # BF_16 and FP_16 both keep 2-byte halves

FP32 = 4
BF16 = 2
INDEX = 8  # int64 token ids and labels


@dataclass(frozen=True)
class Numerics:
    """Element sizes of what a forward pass keeps, for one way the engine runs a model.

    ``residual``: the residual stream between blocks. ``compute``: matmul inputs and outputs.
    Three cases (hpcllm/engine/parallelize.py): FSDP2 with BF_16 casts the parameters to bf16, so
    the whole stream is bf16; one device with BF_16 uses autocast, which leaves the residual stream
    in fp32 and makes every linear layer cast its own bf16 copy of its input; FP_32 is fp32
    throughout. ``rope_copies``: FSDP2's mixed-precision policy casts each block's inputs, the
    RoPE tables included, so every block gets its own bf16 copy. ``fused_norm``: on CUDA,
    RMSNorm is one kernel that keeps only its input and 1/rms; on CPU it is composed of small
    ops that keep an fp32 copy of the input and of the normalised output.
    """

    residual: int
    compute: int
    autocast: bool
    rope_copies: bool
    device: Device

    @property
    def fused_norm(self) -> bool:
        return self.device == "cuda"

    @classmethod
    def of(cls, precision: Precision, fsdp: bool, device: Device) -> Numerics:
        if precision == "FP_32":
            return cls(FP32, FP32, autocast=False, rope_copies=False, device=device)
        if fsdp:
            return cls(BF16, BF16, autocast=False, rope_copies=True, device=device)
        return cls(FP32, BF16, autocast=True, rope_copies=False, device=device)


@dataclass(frozen=True)
class ActivationBytes:
    """Saved-for-backward bytes of one micro-batch, by where they are kept."""

    block_full: int  # one transformer block without activation checkpointing
    block_checkpointed: int  # one checkpointed block: only its inputs
    outside_blocks: int  # embedding, final norm, head, loss
    n_full: int  # blocks that keep everything
    n_checkpointed: int  # blocks that keep only their inputs

    @property
    def total(self) -> int:
        return self.n_full * self.block_full + self.n_checkpointed * self.block_checkpointed + self.outside_blocks


def checkpointed_blocks(n_layers: int, policy: str, every: int) -> int:
    """How many blocks activation checkpointing covers (engine/parallelize.py: full, every k-th, none)."""
    if policy == "full":
        return n_layers
    if policy == "selective":
        return len(range(0, n_layers, every))
    return 0


def _norm(cfg: ModelConfig, n: int, num: Numerics) -> int:
    """RMSNorm / LayerNorm over n tokens.

    LayerNorm (both devices) and RMSNorm on CUDA are single kernels: they keep their input and
    per-token statistics (1/rms; mean and 1/std). RMSNorm on CPU is composed: it keeps the input in
    fp32, 1/rms, and the normalised fp32 product that the weight multiplies.
    """
    d = cfg.d_model
    if cfg.norm == "rmsnorm" and not num.fused_norm:
        return 2 * n * d * FP32 + n * FP32
    stats = 1 if cfg.norm == "rmsnorm" else 2
    return n * d * num.residual + stats * n * FP32


def _attention(cfg: ModelConfig, b: int, t: int, num: Numerics) -> int:
    """qkv projection, RoPE, the attention kernel and the output projection of one block."""
    n, d, h, k, hd = b * t, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    c = num.compute
    qkv_input = n * d * c
    if cfg.attention == "math":
        # Plain matmuls in fp32: q, and k and v repeated to H heads, the softmax probabilities
        # (the T x T term), the causal mask, and the merged heads copied for the projection.
        # Under autocast the matmuls run in bf16 again; CUDA's autocast keeps softmax in fp32,
        # so the probabilities are kept in fp32 and as the next matmul's bf16 copy.
        qkv, probs = FP32, FP32
        if num.autocast:
            qkv, probs = c, c + (FP32 if num.device == "cuda" else 0)
        kernel = 3 * n * d * qkv + b * h * t * t * probs + t * t + n * d * c
    else:
        # Flash-style kernels (SDPA, flash_attn) keep q, k, v and their output plus a log-sum-exp
        # per query. With RoPE, q and k are new (rotated) tensors and v is copied out of the fused
        # qkv output, which is then freed; without it, q, k and v are views that keep the fused
        # output alive whole: the same bytes either way. The output is laid out (B, T, H, D), so
        # the projection's input is a view of it.
        qkv_kept = n * (d + 2 * k * hd) * c  # rotated q and k and the copy of v, or the fused output
        kernel = qkv_kept + n * d * c + b * h * t * FP32
    return qkv_input + kernel + rope_copy_bytes(cfg, t, num)


def _mlp(cfg: ModelConfig, n: int, num: Numerics) -> int:
    """SwiGLU keeps gate, up and their product (``engine.lean_ops.silu_mul`` recomputes
    silu(gate) in backward); GELU keeps up and gelu(up)."""
    c, f = num.compute, cfg.ffn_dim
    inputs = 2 if num.autocast and cfg.activation == "swiglu" else 1  # autocast casts per linear
    kept = 3 if cfg.activation == "swiglu" else 2
    return inputs * n * cfg.d_model * c + kept * n * f * c


def block_bytes(cfg: ModelConfig, b: int, t: int, num: Numerics) -> int:
    """One transformer block without checkpointing: two norms, attention, MLP."""
    n = b * t
    return 2 * _norm(cfg, n, num) + _attention(cfg, b, t, num) + _mlp(cfg, n, num)


def rope_copy_bytes(cfg: ModelConfig, t: int, num: Numerics) -> int:
    """One block's bf16 copies of the RoPE tables (``rope_copies``): cos and sin, (T, D/2) each."""
    return t * cfg.head_dim * BF16 if num.rope_copies and cfg.pos_emb == "rope" else 0


def checkpointed_block_bytes(cfg: ModelConfig, b: int, t: int, num: Numerics) -> int:
    """A checkpointed block keeps only its inputs: the residual stream (and its RoPE table copies)."""
    return b * t * cfg.d_model * num.residual + rope_copy_bytes(cfg, t, num)


def outside_blocks_bytes(cfg: ModelConfig, b: int, t: int, num: Numerics) -> int:
    """Token ids and labels, learned-position ids, final norm, head input, the logits.

    The chunked cross-entropy (engine/losses.py) keeps the logits' gradient, computed chunk by chunk
    in forward: N x V in the compute dtype, the logits' own size (``plan.memory.loss``). Shared
    RoPE tables count once (the model's buffers, full ``seq_len`` length).
    """
    n = b * t
    ids = 2 * n * INDEX + (t * INDEX if cfg.pos_emb == "learned" else 0)
    head = _norm(cfg, n, num) + n * cfg.d_model * num.compute
    shared_tables = cfg.seq_len * cfg.head_dim * FP32 if cfg.pos_emb == "rope" and not num.rope_copies else 0
    return ids + head + ce_saved_bytes(cfg, n, num.compute) + shared_tables


def activation_bytes(
    cfg: ModelConfig, *, micro_batch_size: int, seq_len: int, num: Numerics, checkpointing: str, ac_every: int
) -> ActivationBytes:
    """Saved-for-backward bytes of one micro-batch of ``micro_batch_size`` sequences of ``seq_len``."""
    b, t = micro_batch_size, seq_len
    n_ckpt = checkpointed_blocks(cfg.n_layers, checkpointing, ac_every)
    return ActivationBytes(
        block_full=block_bytes(cfg, b, t, num),
        block_checkpointed=checkpointed_block_bytes(cfg, b, t, num),
        outside_blocks=outside_blocks_bytes(cfg, b, t, num),
        n_full=cfg.n_layers - n_ckpt,
        n_checkpointed=n_ckpt,
    )


def loss_buffer_bytes(cfg: ModelConfig, b: int, t: int, num: Numerics) -> int:
    """The loss's working buffers (``plan.memory.loss.ce_working_bytes``): the logits it reads
    beside the gradient it keeps, and one chunk's fp32 buffers."""
    return ce_working_bytes(cfg, b * t, num.compute)


def backward_working_bytes(cfg: ModelConfig, b: int, t: int, num: Numerics) -> int:
    """What one block's backward allocates at once besides the saved tensors: gradients.

    The larger of the MLP's (the product's, the gate's and the up projection's gradients, N x f each;
    two for GELU) and the attention's (flash-style: the q, k, v gradients and the fused qkv output's;
    math: the probabilities' and the scores' gradients, the T x T term), plus the residual stream's
    gradient. Measured on CPU, math attention's peak grows by exactly the two T x T gradients per
    sequence over the saved tensors (docs/memory.md).
    """
    n, d, c = b * t, cfg.d_model, num.compute
    mlp = (3 if cfg.activation == "swiglu" else 2) * n * cfg.ffn_dim * c
    if cfg.attention == "math":
        probs = c if num.autocast else FP32
        attention = 2 * b * cfg.n_heads * t * t * probs
    else:
        attention = 2 * n * (d + 2 * cfg.kv_heads * cfg.head_dim) * c
    return max(mlp, attention) + n * d * num.residual
