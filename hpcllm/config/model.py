"""Model architecture: one pydantic model plus named presets (litgpt-style ``from_name``).

Torch-free, so that the login node can count parameters and FLOPs (``hpcllm model info``, the
collector) exactly as the engine does. The engine builds its ``nn.Module`` from this object.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hpcllm import perf
from hpcllm.config import NAME_PATTERN
from hpcllm.config.choices import Attention


class InitConfig(BaseModel):
    """Weight initialisation (see docs/engine.md for the formulas)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    scheme: Literal["normal", "scaled_residual", "small_init"] = Field(
        "scaled_residual",
        description=(
            "normal: every weight N(0, std). scaled_residual: as normal, but the two projections that "
            "write into the residual stream use std/sqrt(2*n_layers) (GPT-2). small_init: std = "
            "sqrt(2/(5*d_model)) (Nguyen & Salazar), output projections 2/(n_layers*sqrt(d_model)) "
            "(GPT-NeoX's 'wang_init')."
        ),
    )
    std: float = Field(0.02, gt=0, description="Base standard deviation for normal / scaled_residual.")


class ModelConfig(BaseModel):
    """A decoder-only GPT. Give ``preset`` to start from a named config and override any field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no setting means "infinite"

    name: str = Field(
        "custom",
        description="Preset name this config started from; part of run ids (letters, digits, . _ -).",
        pattern=NAME_PATTERN,
    )
    vocab_size: int = Field(50304, gt=0, description="Embedding rows; padded to a multiple of 64 is fastest.")
    seq_len: int = Field(2048, gt=0, description="Context length = training sequence length.")
    n_layers: int = Field(12, gt=0)
    n_heads: int = Field(12, gt=0)
    n_kv_heads: int | None = Field(
        None, gt=0, description="K/V heads: None = n_heads (MHA), 1 = MQA, in between = GQA."
    )
    d_model: int = Field(768, gt=0, description="Hidden size.")
    ffn_hidden: int | None = Field(
        None, gt=0, description="MLP inner size; None = 8/3·d rounded up to 256 (SwiGLU) or 4·d (GELU)."
    )
    activation: Literal["swiglu", "gelu"] = "swiglu"
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    norm_eps: float = Field(1e-5, gt=0)
    pos_emb: Literal["rope", "learned"] = "rope"
    rope_theta: float = Field(10000.0, gt=0)
    tie_embeddings: bool = False
    bias: bool = Field(False, description="Bias terms in linear layers and LayerNorm.")
    attention: Attention = Field(
        "sdpa",
        description="sdpa: torch scaled_dot_product_attention (flash kernel on GPU); flash: the "
        "flash_attn package (CUDA only); math: plain matmul reference, for tests.",
    )
    init: InitConfig = Field(default_factory=InitConfig)

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """``{preset: 2.7b, n_layers: 4}`` -> the preset's fields with ``n_layers`` overridden."""
        if isinstance(data, dict) and "preset" in data:
            data = dict(data)
            name = data.pop("preset")
            base = preset_fields(name)
            base.update(data)
            base.setdefault("name", name)
            return base
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if self.pos_emb == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.head_dim}")
        return self

    def tensor_parallel_problem(self, tp: int) -> str | None:
        """Why this model cannot be split over ``tp`` tensor-parallel ranks, or None.

        Heads are split whole; the fused qkv weight splits into equal query/key/value slices
        only with as many K/V heads as query heads, and has no bias that FSDP2 could shard apart
        from its rows (hpcllm/engine/tensor_parallel.py); the sequence-parallel norms split
        ``seq_len``; the MLP splits ``ffn_dim``.
        """
        if tp == 1:
            return None
        if self.n_heads % tp:
            return f"{tp} does not divide the {self.n_heads} heads of model {self.name!r}; heads are split whole"
        if self.kv_heads != self.n_heads:
            return (
                f"model {self.name!r} has grouped K/V heads (n_kv_heads {self.kv_heads} < n_heads {self.n_heads}); "
                "tensor parallelism needs n_kv_heads = n_heads"
            )
        if self.bias:
            return (
                f"model {self.name!r} has bias terms; the qkv bias, strided over the TP ranks, cannot also be "
                "sharded by FSDP2: set model.bias: false"
            )
        for what, size in (("seq_len", self.seq_len), ("ffn_dim", self.ffn_dim)):
            if size % tp:
                return f"{tp} does not divide model {self.name!r}'s {what} {size}"
        return None

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        # The same validation as cls(preset=..., ...): `preset` is no field, the before-validator takes it.
        return cls.model_validate({"preset": name, **overrides})

    # --- derived sizes -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        if self.activation == "swiglu":
            return -(-int(8 * self.d_model / 3) // 256) * 256
        return 4 * self.d_model

    def block_params(self) -> int:
        d, f, b = self.d_model, self.ffn_dim, int(self.bias)
        kv = self.kv_heads * self.head_dim
        attn = d * (d + 2 * kv) + b * (d + 2 * kv) + d * d + b * d  # qkv + out projection
        n_mats = 3 if self.activation == "swiglu" else 2
        mlp = n_mats * d * f + b * ((n_mats - 1) * f + d)
        return attn + mlp + 2 * self._norm_params()

    def _norm_params(self) -> int:
        return self.d_model * (2 if self.norm == "layernorm" and self.bias else 1)

    def n_params_non_embedding(self) -> int:
        """Transformer body only: blocks and final norm (no token/position tables, no head)."""
        return self.n_layers * self.block_params() + self._norm_params()

    def n_params(self) -> int:
        """Every trainable parameter, a tied head counted once."""
        emb = self.vocab_size * self.d_model
        pos = self.seq_len * self.d_model if self.pos_emb == "learned" else 0
        head = 0 if self.tie_embeddings else emb
        return self.n_params_non_embedding() + emb + pos + head

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every parameter's name and shape, in the order of the engine's ``named_parameters()``.

        Memory planning needs shapes, not only counts: FSDP2 shards each tensor along its first
        dimension in equal, padded pieces, so what a rank holds depends on every tensor's rows. A
        tied LM head is the token embedding and appears once, as in the built module.
        """
        d, f, kv = self.d_model, self.ffn_dim, self.kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (self.vocab_size, d)}
        if self.pos_emb == "learned":
            shapes["pos_emb.weight"] = (self.seq_len, d)

        def linear(name: str, n_out: int, n_in: int) -> None:
            shapes[f"{name}.weight"] = (n_out, n_in)
            if self.bias:
                shapes[f"{name}.bias"] = (n_out,)

        def norm(name: str) -> None:
            shapes[f"{name}.weight"] = (d,)
            if self.norm == "layernorm" and self.bias:
                shapes[f"{name}.bias"] = (d,)

        for i in range(self.n_layers):
            norm(f"blocks.{i}.attn_norm")
            linear(f"blocks.{i}.attn.qkv", d + 2 * kv, d)
            linear(f"blocks.{i}.attn.proj", d, d)
            norm(f"blocks.{i}.mlp_norm")
            if self.activation == "swiglu":
                linear(f"blocks.{i}.mlp.gate", f, d)
            linear(f"blocks.{i}.mlp.up", f, d)
            linear(f"blocks.{i}.mlp.down", d, f)
        norm("norm")
        if not self.tie_embeddings:
            shapes["head.weight"] = (self.vocab_size, d)
        return shapes

    def n_params_flops(self) -> int:
        """Parameters that take part in matmuls: the body plus the output head (tied or not).

        The embedding and position tables are lookups, not matmuls, so they add no FLOPs.
        """
        return self.n_params_non_embedding() + self.vocab_size * self.d_model

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token as the ``MFU`` column counts them: the seed's convention
        (``72·L·d² + 12·L·T·d``, see ``hpcllm.perf``)."""
        return perf.seed_flops_per_token(self.n_layers, seq_len or self.seq_len, self.d_model)

    def flops_per_token_with_head(self, seq_len: int | None = None) -> float:
        """``6·N + 12·L·T·d`` with N the exact matmul parameters, output head included (``MFU+head``)."""
        return perf.flops_per_token(self.n_params_flops(), self.n_layers, seq_len or self.seq_len, self.d_model)

    def flops(self, seq_len: int | None = None, recomputed_blocks: int = 0) -> perf.TokenFlops:
        """All three conventions; ``recomputed_blocks`` (``perf.recomputed_blocks``) adds AC's extra forwards."""
        t = seq_len or self.seq_len
        with_head = self.flops_per_token_with_head(t)
        extra = perf.recompute_flops_per_token(self.block_params(), recomputed_blocks, t, self.d_model)
        return perf.TokenFlops(model=self.flops_per_token(t), with_head=with_head, hardware=with_head + extra)


# Named configs. Llama-style blocks (SwiGLU MLP, RoPE, RMSNorm, no biases), vocab 50304 (GPT-2's
# 50257 padded to a multiple of 64). The SwiGLU width follows Modalities (the seed's framework):
# 2/3 of 4·d rounded up to a multiple of 256.
# The seed's models: its scaling tables name them "2.7", "6.7" and "28" (billions) and publish no
# architecture (none of Modalities' published config files has these sizes), so the shapes below
# are chosen to reproduce what its rows imply: the seed's FLOPs per token (72·L·d² + 12·L·T·d, see
# hpcllm.perf) within 0.03 % of every row, and a total parameter count that rounds to its label.
#   2.7b: GPT-3's 2.7B shape (32 layers, d 2560); the seed's rows imply 19.13 GFLOP/token at seq
#         4096, exactly this shape's. Tied embeddings: 2.67 B parameters ("2.7").
#   6.7b: GPT-3's 6.7B shape (32 layers, d 4096); 45.10 GFLOP/token at seq 4096, as the rows imply.
#         Tied embeddings: 6.68 B ("6.7").
#   28b:  the rows imply 199.9 GFLOP/token at seq 8192; 52 layers of d 6656 (52 heads of 128) give
#         199.9 (+0.01 %), with tied embeddings 28.2 B ("28"). The seed used full AC and MBS 1.
_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=512,
        seq_len=128,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        d_model=64,
        ffn_hidden=192,
        tie_embeddings=True,
    ),
    # The seed's getting-started size (60M): 10 x 512 with a tied GPT-2-sized vocabulary = 59.8M.
    "60m": dict(seq_len=1024, n_layers=10, n_heads=8, d_model=512, tie_embeddings=True),
    "125m": dict(seq_len=2048, n_layers=12, n_heads=12, d_model=768),
    "1b": dict(seq_len=2048, n_layers=18, n_heads=16, d_model=2048, ffn_hidden=5632),
    "2.7b": dict(seq_len=4096, n_layers=32, n_heads=32, d_model=2560, ffn_hidden=6912, tie_embeddings=True),
    "6.7b": dict(seq_len=4096, n_layers=32, n_heads=32, d_model=4096, ffn_hidden=11008, tie_embeddings=True),
    "28b": dict(seq_len=8192, n_layers=52, n_heads=52, d_model=6656, ffn_hidden=17920, tie_embeddings=True),
}


def preset_names() -> list[str]:
    return list(_PRESETS)


def preset_fields(name: object) -> dict[str, Any]:
    """The preset's fields; anything but a known name (a list or a number from a hand-written YAML
    included) is a ValueError, which pydantic reports as one line naming the key."""
    if not isinstance(name, str) or name not in _PRESETS:
        raise ValueError(f"{name!r} is not a model preset; known presets: {', '.join(_PRESETS)}")
    return dict(_PRESETS[name])
