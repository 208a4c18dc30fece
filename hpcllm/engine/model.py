"""A decoder-only GPT built from ``hpcllm.config.model.ModelConfig``: config -> blocks -> model.

Shapes in comments: B batch, T sequence, H query heads, K key/value heads, D head dim, C = H·D.
The module is built on the ``meta`` device by the engine and materialised after sharding
(``init_weights``), so nothing here allocates real memory at construction time.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hpcllm.config.model import ModelConfig
from hpcllm.errors import ConfigError

# ---------------------------------------------------------------------------------------------
# Attention kernels: (B, H, T, D) queries, (B, K, T, D) keys/values -> (B, H, T, D), causal.
# ---------------------------------------------------------------------------------------------


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch SDPA; picks the flash / memory-efficient kernel on GPU, a fused kernel on CPU.

    Grouped K/V heads go in as they are (``enable_gqa``): no repeated copies of K and V, and
    5-8% faster than repeating them on CPU (benchmarks/engine_overhead.py measures both).
    """
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])


def attention_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain-matmul reference: softmax(QKᵀ/√D + causal mask)·V, computed in fp32."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    t = q.shape[2]
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def attention_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The ``flash_attn`` package (CUDA, fp16/bf16); it takes (B, T, heads, D) and handles GQA."""
    from flash_attn import flash_attn_func  # checked importable in `_attention_kernel`

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    return out.transpose(1, 2)


def attention_after(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention of the last ``Tq`` positions of a ``Tk``-long sequence (decoding with a
    KV cache): query i sits at position ``Tk - Tq + i`` and sees keys 0 .. that position."""
    tq, tk = q.shape[2], k.shape[2]
    gqa = k.shape[1] != q.shape[1]
    if tq == tk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    if tq == 1:  # the usual decoding step: the newest token sees everything
        return F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    seen = torch.arange(tk, device=q.device)[None, :] <= torch.arange(tk - tq, tk, device=q.device)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=seen, enable_gqa=gqa)


def _attention_kernel(name: str) -> Callable[..., torch.Tensor]:
    if name == "flash":
        if not torch.cuda.is_available():
            raise ConfigError("model.attention: 'flash' needs a CUDA GPU; use 'sdpa' (default) on CPU")
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            raise ConfigError(
                "model.attention: 'flash' needs the flash_attn package (pip install 'hpcllm[flash]'); "
                "'sdpa' uses PyTorch's built-in flash kernel without it"
            ) from None
        return attention_flash
    return {"sdpa": attention_sdpa, "math": attention_math}[name]


# ---------------------------------------------------------------------------------------------
# Rotary position embedding ("half" layout: the first and second halves of a head form pairs).
# ---------------------------------------------------------------------------------------------


def rope_tables(
    seq_len: int, head_dim: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (T, D/2): angle t·θ^(-2i/D) of pair i at position t."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (x_i, x_{i+D/2}) pair of x (B, heads, T, D) by its position's angle
    (``rope_tables``: cos and sin, (T, D/2)).

    The two halves as (x1·c − x2·s, x2·c + x1·s) with one multiply-add each: ~1.25x faster on CPU
    (forward + backward) than ``x·cos + rotate_half(x)·sin``, which negates, concatenates and
    multiplies whole heads (benchmarks/engine_overhead.py). Autograd keeps only the shared tables.
    The rotation runs in the (B, T, heads, D) layout the fused qkv projection wrote: attention's
    output then keeps that layout, and the output projection reads it as a view instead of a
    copy of every token (one d_model vector per token and block, docs/memory.md).
    """
    x = x.transpose(1, 2)  # (B, T, heads, D), a view
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # (T, 1, D/2)
    x1, x2 = x.chunk(2, dim=-1)  # not two slices: chunk's backward is one concatenation
    rotated = torch.cat((torch.addcmul(x1 * c, x2, s, value=-1), torch.addcmul(x2 * c, x1, s)), dim=-1)
    return rotated.to(x.dtype).transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# KV cache (decoding, hpcllm/engine/generate.py): keys and values of the tokens seen so far
# ---------------------------------------------------------------------------------------------


@dataclass
class LayerKV:
    """One layer's cached keys and values, (B, K, T_max, D) each, filled up to the cache's length."""

    k: torch.Tensor
    v: torch.Tensor


class KVCache:
    """Per-layer K/V buffers for up to ``max_len`` positions, allocated once.

    ``GPT.forward(idx, cache)`` runs ``idx`` at positions ``length .. length + T``, writes their keys
    and values, attends over everything cached so far, and advances ``length``. So each new token
    costs one position's work instead of re-running the whole prefix.
    """

    def __init__(
        self, cfg: ModelConfig, batch: int, max_len: int, *, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        if max_len > cfg.seq_len:
            raise ValueError(f"a cache of {max_len} positions exceeds the model's seq_len {cfg.seq_len}")
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        self.layers = [
            LayerKV(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(cfg.n_layers)
        ]
        self.max_len = max_len
        self.length = 0


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Attention(nn.Module):
    """Causal self-attention with grouped K/V heads (K = H: MHA, K = 1: MQA) and one fused QKV matmul."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)  # writes into the residual
        self.use_rope = cfg.pos_emb == "rope"
        self.kernel = _attention_kernel(cfg.attention)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: LayerKV | None = None, start: int = 0
    ) -> torch.Tensor:
        """``kv``: decoding; x holds positions ``start .. start + T``, whose K/V join the cache."""
        qkv = self.qkv(x)  # under sequence-parallel TP x holds T/tp positions and qkv all T
        b, t = qkv.shape[:2]
        qkv = qkv.view(b, t, self.n_heads + 2 * self.n_kv_heads, self.head_dim)  # local heads under TP
        qkv = qkv.transpose(1, 2)  # (B, H + 2K, T, D)
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=1)
        if self.use_rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if kv is None:
            y = self.kernel(q, k, v)  # (B, H, T, D)
        else:
            kv.k[:, :, start : start + t], kv.v[:, :, start : start + t] = k, v
            y = attention_after(q, kv.k[:, :, : start + t], kv.v[:, :, : start + t])
        return self.proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) · up(x)); GELU: down(gelu(up(x)))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.swiglu = cfg.activation == "swiglu"
        if self.swiglu:
            self.gate = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=cfg.bias)
        self.down = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=cfg.bias)  # writes into the residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.down(F.silu(self.gate(x)) * self.up(x))
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    ``checkpointed`` (activation checkpointing) and ``compile_compute`` are set by
    ``hpcllm.engine.parallelize``; both act on ``compute`` so parameter names never change and
    FSDP's hooks on ``forward`` stay outside the compiled and recomputed region.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.checkpointed = False
        self.compute: Callable[..., torch.Tensor] = self._compute

    def _compute(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: LayerKV | None = None, start: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, kv, start)
        return x + self.mlp(self.mlp_norm(x))

    def compile_compute(self) -> None:
        self.compute = torch.compile(self._compute)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, kv: LayerKV | None = None, start: int = 0
    ) -> torch.Tensor:
        if kv is not None:  # decoding: no gradients to checkpoint, nothing compiled for it
            return self._compute(x, cos, sin, kv, start)
        if self.checkpointed and torch.is_grad_enabled():
            # Non-reentrant: works with FSDP2, compile and inputs that need no grad.
            return checkpoint(self.compute, x, cos, sin, use_reentrant=False)
        return self.compute(x, cos, sin)


class GPT(nn.Module):
    """Token embedding (+ learned positions) -> blocks -> final norm -> LM head (optionally tied)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.pos_emb == "learned" else None
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()
        # RoPE tables are derived, not learned: non-persistent, recomputed by `init_buffers` after
        # meta-device materialisation (to_empty leaves them uninitialised).
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_buffers(self.tok_emb.weight.device)
        # Half-precision compute (BF_16, FP_16) for an unsharded model (one rank); under FSDP2 its
        # MixedPrecisionPolicy casts.
        self.autocast_dtype: torch.dtype | None = None

    def tie_weights(self) -> None:
        """Share the token embedding with the LM head (``tie_embeddings``).

        Called again after ``to_empty``: materialising a plain (unsharded) module from ``meta``
        gives each module its own new tensor, which would silently untie them.
        """
        if self.cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def init_buffers(self, device: torch.device) -> None:
        """(Re)compute the RoPE tables on ``device`` (a no-op table for learned positions)."""
        if self.cfg.pos_emb == "rope":
            cos, sin = rope_tables(self.cfg.seq_len, self.cfg.head_dim, self.cfg.rope_theta, device)
        else:
            cos = sin = torch.zeros(0, device=device)
        self.rope_cos, self.rope_sin = cos, sin

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab). With ``cache``, ``idx`` continues the cached
        sequence (positions ``cache.length ..``) and the cache advances by T."""
        t = idx.shape[1]
        start = 0 if cache is None else cache.length
        limit = self.cfg.seq_len if cache is None else cache.max_len
        if start + t > limit:
            raise ValueError(
                f"sequence length {start + t} exceeds the model's seq_len {self.cfg.seq_len}"
                if cache is None
                else f"sequence length {start + t} exceeds the cache's {limit}"
            )
        with torch.autocast(
            idx.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        ):
            x = self.tok_emb(idx)  # (B, T, C)
            if self.pos_emb is not None:
                x = x + self.pos_emb(torch.arange(start, start + t, device=idx.device))
            cos, sin = self.rope_cos[start : start + t], self.rope_sin[start : start + t]
            for i, block in enumerate(self.blocks):
                x = block(x, cos, sin) if cache is None else block(x, cos, sin, cache.layers[i], start)
            if cache is not None:
                cache.length = start + t
            return self.head(self.norm(x))


# ---------------------------------------------------------------------------------------------
# Initialisation (formulas in docs/engine.md)
# ---------------------------------------------------------------------------------------------

_RESIDUAL_OUTPUTS = ("attn.proj.weight", "mlp.down.weight")


def init_std(cfg: ModelConfig, name: str) -> float:
    """Standard deviation of the normal init of weight matrix / embedding ``name``."""
    residual_out = name.endswith(_RESIDUAL_OUTPUTS)
    scheme, std, n_layers, d = cfg.init.scheme, cfg.init.std, cfg.n_layers, cfg.d_model
    if scheme == "normal":
        return std
    if scheme == "scaled_residual":
        return std / math.sqrt(2 * n_layers) if residual_out else std
    # small_init (Nguyen & Salazar 2019) with GPT-NeoX's "wang_init" on residual outputs.
    return 2.0 / (n_layers * math.sqrt(d)) if residual_out else math.sqrt(2.0 / (5 * d))


@torch.no_grad()
def init_weights(model: GPT, seed: int, device: torch.device | None = None) -> None:
    """Fill every parameter in place, identically for any sharding or world size.

    Each parameter's full tensor is drawn from its own generator, seeded from ``seed`` and the
    parameter's name, and each rank keeps its shard of it. So one rank and N ranks start from the
    same weights (a test checks it), while only one parameter at a time is ever whole in memory.
    Norm weights are 1, biases 0, matrices and embeddings N(0, init_std²). Numbers are drawn on
    ``device`` (default: where each parameter lives), so CPU-offloaded parameters are still drawn
    on the GPU, fast and identical to a run without offload.
    """
    for name, param in model.named_parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        if name.endswith(".bias"):
            local.zero_()
            continue
        if param.dim() == 1:  # norm scales
            local.fill_(1.0)
            continue
        draw_on = device or local.device
        gen = torch.Generator(device=draw_on)
        gen.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
        full = torch.empty(param.shape, dtype=local.dtype, device=draw_on)
        full.normal_(0.0, init_std(model.cfg, name), generator=gen)
        local.copy_(_local_shard(full, param))


def _local_shard(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """This rank's piece of ``full`` for a DTensor ``param``, whatever its placements."""
    if not hasattr(param, "device_mesh"):
        return full
    from torch.distributed.tensor import DTensor, distribute_tensor

    assert isinstance(param, DTensor)
    # src_data_rank=None: every rank holds ``full`` and keeps its piece, no collective; this also
    # covers the strided layouts of FSDP2 over tensor parallelism (hpcllm/engine/tensor_parallel.py).
    return distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local()
