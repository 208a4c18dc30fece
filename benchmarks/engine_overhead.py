"""One process: the engine against a minimal PyTorch loop and Modalities' GPT, then each difference alone.

    python benchmarks/engine_overhead.py [--layers 6 --d-model 256 --seq-len 256 --batch 8 --threads 2]
    python benchmarks/engine_overhead.py --precision BF_16

Part 1 trains the same shapes on one fixed batch, one process (CPU), timed interleaved
(``fixed_batch.time_interleaved``, medians):

- plain loop: our ``GPT`` in the minimal loop of ``fixed_batch.plain_step`` (PyTorch's default
  AdamW, mean cross-entropy, clip, step);
- Modalities: Modalities' ``GPT2LLM`` (RoPE, SwiGLU, RMSNorm, GQA through SDPA, untied head: the
  same parameter count) in that same loop, when the ``modalities`` package is installed
  (``pip install --no-deps modalities==0.5.0``: its model file needs only torch and pydantic);
- engine: the model as the engine builds it on one rank (a plain module; BF_16 is autocast over
  fp32 weights: FSDP2 is only used on more than one rank, benchmarks/engine_ranks.py) and the
  engine's ``train_step`` (weight-decay groups, fused AdamW, the schedule, weighted-token
  normalisation, the one reduction of norm and loss, clipping).

Part 2 times, alone, each way the two models and loops differ (forward + backward where there is
one; medians): attention layout (our fused QKV with grouped K/V heads through ``enable_gqa`` vs
three projections, contiguous heads and repeated K/V), the alternatives for each part of our
model (SDPA with grouped vs repeated K/V, RMSNorm, fused QKV, RoPE layouts), RoPE tables in fp32
vs the activations' dtype, the loss in fp32 vs the logits' bf16 (with its error against fp64),
and AdamW's foreach vs fused kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from fixed_batch import (
    Batch,
    Step,
    add_model_options,
    engine_state,
    load_average,
    model_config,
    plain_step,
    random_batch,
    time_interleaved,
)
from rich.console import Console
from rich.progress import track
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.model import GPT, apply_rope, attention_math, attention_sdpa, init_weights, rope_tables
from hpcllm.engine.train import train_step

console = Console()
HALF = {"BF_16": torch.bfloat16, "FP_32": None}


def modalities_gpt(cfg: ModelConfig) -> torch.nn.Module | None:
    """Modalities' GPT2LLM with our shapes, or None where the package is not installed."""
    try:
        from modalities.models.components.layer_norms import PytorchRMSLayerNormConfig
        from modalities.models.gpt2.gpt2_model import (
            GPT2LLM,
            AttentionConfig,
            AttentionImplementation,
            LayerNormWrapperConfig,
            PositionTypes,
        )
        from modalities.models.model import ActivationType
    except ImportError:
        return None
    qkv = AttentionConfig.QueryKeyValueTransformConfig
    rotary = qkv.RotaryTransformConfig(
        n_embd=cfg.d_model, n_head=cfg.n_heads, seq_length_dim=-2, base_freq=int(cfg.rope_theta)
    )

    def norm() -> LayerNormWrapperConfig:
        return LayerNormWrapperConfig(
            norm_type="pytorch_rms_norm",
            config=PytorchRMSLayerNormConfig(normalized_shape=cfg.d_model, eps=cfg.norm_eps),
        )

    model = GPT2LLM(
        sample_key="input_ids",
        prediction_key="logits",
        poe_type=PositionTypes.NOPE,
        sequence_length=cfg.seq_len,
        vocab_size=cfg.vocab_size,
        n_layer=cfg.n_layers,
        n_head_q=cfg.n_heads,
        n_head_kv=cfg.kv_heads,
        n_embd=cfg.d_model,
        ffn_hidden=4 * cfg.d_model,
        dropout=0.0,
        bias=False,
        activation_type=ActivationType.SWIGLU,
        attention_implementation=AttentionImplementation.PYTORCH_FLASH,
        attention_config=AttentionConfig(qkv_transforms=[qkv(type_hint="RotaryTransform", config=rotary)]),
        attention_norm_config=norm(),
        ffn_norm_config=norm(),
        lm_head_norm_config=norm(),
        use_weight_tying=cfg.tie_embeddings,
        seed=0,
    )
    n_params = sum(p.numel() for p in model.parameters())
    if n_params != cfg.n_params():  # SwiGLU hidden sizes are rounded the same way only for some d
        raise SystemExit(f"Modalities' model has {n_params:,} parameters, ours {cfg.n_params():,}: pick other shapes")
    return model


def engine_loop(cfg: ModelConfig, batch: Batch, precision: str) -> Step:
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    state = engine_state(cfg, ParallelConfig(precision=precision), env, batch)
    return lambda: train_step(state, grad_accum=1, dp_size=1, grad_clip=1.0, device=env.device)


def whole_steps(cfg: ModelConfig, args: argparse.Namespace) -> None:
    batch = random_batch(cfg, args.batch, seed=0)
    half = HALF[args.precision]
    ours = GPT(cfg)
    init_weights(ours, 0)
    ours.autocast_dtype = half  # GPT.forward's own autocast region; the engine sets it the same way
    steps: dict[str, Step] = {"plain loop (our GPT)": plain_step(ours, batch, autocast=half)}
    modalities = modalities_gpt(cfg)
    if modalities is not None:
        steps["plain loop (Modalities GPT2LLM)"] = plain_step(modalities, batch, autocast=half)
    steps["engine"] = engine_loop(cfg, batch, args.precision)
    reference = "plain loop (Modalities GPT2LLM)" if modalities is not None else "plain loop (our GPT)"
    load_before = load_average()
    timings = time_interleaved(
        steps,
        rounds=args.rounds,
        steps_per_window=args.steps,
        warmup=args.warmup,
        progress=lambda it: track(it, description="timing", console=console),
    )
    tokens = args.batch * cfg.seq_len
    table = Table(
        title=f"one process, {torch.get_num_threads()} thread(s), CPU: {cfg.n_params() / 1e6:.1f}M params, "
        f"batch {args.batch} x {cfg.seq_len}, {args.precision}; median of {args.rounds} "
        f"interleaved rounds, load average {load_before} -> {load_average()}"
    )
    for col in ("loop", "ms/step", "tokens/s", f"vs {reference.split('(')[1][:-1]}"):
        table.add_column(col, justify="left" if col == "loop" else "right")
    for name in steps:
        wall = timings.median_wall(name)
        table.add_row(name, f"{wall * 1e3:.1f}", f"{tokens / wall:,.0f}", f"{timings.ratio(name, reference):.3f}")
    console.print(table)
    if modalities is None:
        console.print("[dim]Modalities is not installed (pip install --no-deps modalities==0.5.0): row left out[/]")


# --- part 2: each difference alone ---------------------------------------------------------------


def median_ms(fn: Callable[[], object], n: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def fwd_bwd(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> Callable[[], None]:
    leaves = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)
    return lambda: fn(*leaves).float().sum().backward()


def attention_ours(
    x: torch.Tensor, w_qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, h: int, k: int
) -> torch.Tensor:
    """Our layout: one QKV matmul, heads as strided views, RoPE, SDPA with grouped K/V heads."""
    b, t, _ = x.shape
    qkv = F.linear(x, w_qkv).view(b, t, h + 2 * k, -1).transpose(1, 2)
    q, kk, v = qkv.split([h, k, k], dim=1)
    return attention_sdpa(apply_rope(q, cos, sin), apply_rope(kk, cos, sin), v)


def attention_modalities_layout(
    x: torch.Tensor, w_qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, h: int, k: int
) -> torch.Tensor:
    """Modalities' layout: three projections, contiguous (B, heads, T, D) copies, K/V repeated to H heads."""
    b, t, _ = x.shape
    hd = w_qkv.shape[0] // (h + 2 * k)
    w_q, w_k, w_v = w_qkv.split([h * hd, k * hd, k * hd])
    q, kk, v = (F.linear(x, w).view(b, t, -1, hd).transpose(1, 2).contiguous() for w in (w_q, w_k, w_v))
    q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
    kk, v = kk.repeat_interleave(h // k, dim=1), v.repeat_interleave(h // k, dim=1)
    return F.scaled_dot_product_attention(q, kk, v, is_causal=True)


def rope_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The same rotation as ``apply_rope`` written as x·cos + rotate_half(x)·sin (HF's formula)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
    return (x * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def rope_complex(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE via complex multiplication (Llama's reference layout)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


def layout_choices(cfg: ModelConfig, b: int, n: int) -> list[tuple[str, str, float, str]]:
    """The alternatives our model could use for each part, fp32 forward + backward."""
    t, d, h, k, hd = cfg.seq_len, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.head_dim
    q, kv, x = torch.randn(b, h, t, hd), torch.randn(b, k, t, hd), torch.randn(b, t, d)
    w_fused = torch.randn((h + 2 * k) * hd, d) * 0.02
    w_q, w_k, w_v = w_fused.split([h * hd, k * hd, k * hd])
    norm = torch.nn.RMSNorm(d)
    cos, sin = rope_tables(t, hd, cfg.rope_theta)
    inv = cfg.rope_theta ** (-torch.arange(0, hd, 2).float() / hd)
    freqs = torch.polar(torch.ones(t, hd // 2), torch.outer(torch.arange(t).float(), inv))
    return [
        ("SDPA (fp32)", "enable_gqa=True (used)", median_ms(fwd_bwd(attention_sdpa, q, kv, kv), n), ""),
        (
            "SDPA (fp32)",
            "K/V heads repeated",
            median_ms(
                fwd_bwd(
                    lambda a, b_, c: F.scaled_dot_product_attention(
                        a, b_.repeat_interleave(h // k, 1), c.repeat_interleave(h // k, 1), is_causal=True
                    ),
                    q,
                    kv,
                    kv,
                ),
                n,
            ),
            "",
        ),
        ("SDPA (fp32)", "plain matmul reference", median_ms(fwd_bwd(attention_math, q, kv, kv), n), ""),
        ("norm (fp32)", "torch.nn.RMSNorm (used)", median_ms(fwd_bwd(norm, x), n), ""),
        (
            "norm (fp32)",
            "formula x·rsqrt(mean x²+eps)·w",
            median_ms(fwd_bwd(lambda a: a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight, x), n),
            "",
        ),
        ("qkv (fp32)", "one fused matmul (used)", median_ms(fwd_bwd(lambda a: F.linear(a, w_fused), x), n), ""),
        (
            "qkv (fp32)",
            "three matmuls",
            median_ms(fwd_bwd(lambda a: torch.cat([F.linear(a, w_q), F.linear(a, w_k), F.linear(a, w_v)], -1), x), n),
            "",
        ),
        (
            "rope (fp32)",
            "half layout, two multiply-adds (used)",
            median_ms(fwd_bwd(lambda a: apply_rope(a, cos, sin), q), n),
            "",
        ),
        (
            "rope (fp32)",
            "half layout, x·cos + rotate_half(x)·sin",
            median_ms(fwd_bwd(lambda a: rope_rotate_half(a, cos, sin), q), n),
            "",
        ),
        ("rope (fp32)", "interleaved pairs, complex", median_ms(fwd_bwd(lambda a: rope_complex(a, freqs), q), n), ""),
    ]


def loss_error(fn: Callable[[torch.Tensor], torch.Tensor], logits: torch.Tensor, labels: torch.Tensor) -> float:
    """|loss - fp64 loss| per token, in nats."""
    exact = F.cross_entropy(logits.double(), labels, reduction="sum")
    return abs(fn(logits).double().item() - exact.item()) / labels.numel()


def differences(cfg: ModelConfig, args: argparse.Namespace) -> None:
    b, t, d, h, k = args.batch, cfg.seq_len, cfg.d_model, cfg.n_heads, cfg.kv_heads
    n = args.repeats
    rows: list[tuple[str, str, float, str]] = []
    x = torch.randn(b, t, d)
    w_qkv = torch.randn((h + 2 * k) * cfg.head_dim, d) * 0.02
    cos, sin = rope_tables(t, cfg.head_dim, cfg.rope_theta)
    for dtype in (torch.float32, torch.bfloat16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            tag = "bf16 autocast" if dtype == torch.bfloat16 else "fp32"
            for name, fn in (
                ("ours: fused QKV, strided heads, enable_gqa", attention_ours),
                ("Modalities: 3 matmuls, contiguous, K/V repeated", attention_modalities_layout),
            ):
                rows.append(
                    (
                        f"attention ({tag})",
                        name,
                        median_ms(fwd_bwd(lambda a, w, fn=fn: fn(a, w, cos, sin, h, k), x, w_qkv), n),
                        "",
                    )
                )
    rows += layout_choices(cfg, b, n)
    q = torch.randn(b, h, t, cfg.head_dim).bfloat16()
    rows.append(
        (
            "RoPE on bf16 q",
            "fp32 cos/sin, result cast back (ours)",
            median_ms(fwd_bwd(lambda a: apply_rope(a, cos, sin), q), n),
            "",
        )
    )
    rows.append(
        (
            "RoPE on bf16 q",
            "cos/sin in bf16 (Modalities, HF)",
            median_ms(fwd_bwd(lambda a: apply_rope(a, cos.bfloat16(), sin.bfloat16()), q), n),
            "",
        )
    )
    logits = (torch.randn(b * t, cfg.vocab_size) * 2).bfloat16()
    labels = torch.randint(0, cfg.vocab_size, (b * t,))
    for name, fn in (
        ("fp32, summed in the kernel (ours)", lambda lg: F.cross_entropy(lg.float(), labels, reduction="sum")),
        (
            "fp32, per-token then summed (ours before)",
            lambda lg: F.cross_entropy(lg.float(), labels, reduction="none").sum(),
        ),
        ("bf16 logits as they are (Modalities)", lambda lg: F.cross_entropy(lg, labels, reduction="sum")),
    ):
        rows.append(
            (
                f"loss on bf16 logits, V={cfg.vocab_size}",
                name,
                median_ms(fwd_bwd(fn, logits), n),
                f"error {loss_error(fn, logits, labels):.1e} nats/token",
            )
        )
    model = GPT(cfg)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    for name, fused in (("AdamW foreach (PyTorch's default on CPU)", None), ("AdamW fused (ours)", True)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
        rows.append((f"optimizer step, {cfg.n_params() / 1e6:.1f}M params", name, median_ms(opt.step, n), ""))
    table = Table(
        title=f"each difference alone: batch {b} x {t}, d {d}, heads {h}/{k}, "
        f"{torch.get_num_threads()} thread(s), CPU, median of {n}"
    )
    for col in ("part", "variant", "ms", "note"):
        table.add_column(col, justify="right" if col == "ms" else "left")
    for part, variant, ms, note in rows:
        table.add_row(part, variant, f"{ms:.2f}", note)
    console.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", default="FP_32", choices=sorted(HALF))
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds of part 1")
    p.add_argument("--steps", type=int, default=1, help="steps per timing window")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15, help="timed calls per row of part 2")
    p.add_argument("--skip", choices=["whole", "differences"], default=None, help="leave one part out")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = model_config(args)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # the engine's world of one
    if args.skip != "whole":
        whole_steps(cfg, args)
    if args.skip != "differences":
        differences(cfg, args)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
