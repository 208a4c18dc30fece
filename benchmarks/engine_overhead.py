"""The engine's per-step overhead against a minimal plain PyTorch loop, and the model's layout choices.

    python benchmarks/engine_overhead.py [--d-model 256 --layers 4 --seq-len 256 --batch 8 --steps 20]

Part 1 trains the same GPT on the same fixed batch with the same thread count, one process, CPU:
(a) a minimal loop: plain module, AdamW, cross-entropy, backward, clip, step; (b) the engine:
FSDP2 on a world of one (``build_parallel_model``), weight-decay groups, the scheduler, masked-token
normalisation, the collective token count, grad-norm clipping (``train_step``). It prints tokens/s
of both and their ratio (target >= 0.95). Both are timed interleaved, best of ``--repeats``
windows, so a noisy neighbour on shared cores hurts both alike.

Part 2 times the alternatives the model could use (forward + backward, same shapes): SDPA with
repeated K/V heads vs ``enable_gqa`` vs the plain-matmul reference, ``torch.nn.RMSNorm`` vs the
formula, one fused QKV matmul vs three, RoPE "half" layout vs interleaved complex pairs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import track
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig, ScheduleConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.model import GPT, apply_rope, attention_math, attention_sdpa, init_weights, rope_tables
from hpcllm.engine.optim import Scheduler, build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import train_step

from fixed_batch import FixedBatch  # sibling module (benchmarks/ is on sys.path)

console = Console()


def plain_step_fn(cfg: ModelConfig, batch: dict[str, torch.Tensor | None]) -> Callable[[], None]:
    model = GPT(cfg)
    init_weights(model, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = batch["input_ids"], batch["labels"]

    def step() -> None:
        logits = model(x)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()

    return step


def engine_step_fn(cfg: ModelConfig, batch: dict[str, torch.Tensor | None]) -> Callable[[], None]:
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
    pcfg = ParallelConfig(precision="FP_32")
    model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=0)
    opt = build_optimizer(model, OptimConfig(), lr=1e-4)
    state = TrainState(model=model, optimizer=opt, loader=FixedBatch(batch),
                       scheduler=Scheduler(opt, base_lr=1e-4, total_steps=10**9, cfg=ScheduleConfig()))

    def step() -> None:
        train_step(state, grad_accum=1, dp_size=1, grad_clip=1.0, device=env.device)

    return step


def time_steps(step: Callable[[], None], n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n


def overhead(args: argparse.Namespace) -> None:
    cfg = ModelConfig(vocab_size=args.vocab, seq_len=args.seq_len, n_layers=args.layers, n_heads=args.heads,
                      n_kv_heads=args.kv_heads, d_model=args.d_model)
    ids = torch.randint(0, cfg.vocab_size, (args.batch, cfg.seq_len + 1), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": None}
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    fns = {"plain loop": plain_step_fn(cfg, batch), "engine": engine_step_fn(cfg, batch)}
    for fn in fns.values():  # warm-up: allocator, thread pools, first-call paths
        time_steps(fn, args.warmup)
    best = {name: float("inf") for name in fns}
    for _ in track(range(args.repeats), description="timing", console=console):
        for name, fn in fns.items():
            best[name] = min(best[name], time_steps(fn, args.steps))
    dist.destroy_process_group()
    tokens = args.batch * cfg.seq_len
    table = Table(title=f"engine overhead: {cfg.n_params() / 1e6:.1f}M params, batch {args.batch} x {cfg.seq_len}, "
                        f"{torch.get_num_threads()} threads, CPU")
    table.add_column("loop")
    table.add_column("ms/step", justify="right")
    table.add_column("tokens/s", justify="right")
    for name, t in best.items():
        table.add_row(name, f"{t * 1e3:.1f}", f"{tokens / t:,.0f}")
    console.print(table)
    console.print(f"ratio engine / plain: [bold]{best['plain loop'] / best['engine']:.3f}[/] (target >= 0.95)")


def fwd_bwd_ms(fn: Callable[..., torch.Tensor], *inputs: torch.Tensor, n: int) -> float:
    inputs = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in inputs)
    for _ in range(2):
        fn(*inputs).float().sum().backward()
    t0 = time.perf_counter()
    for _ in range(n):
        fn(*inputs).float().sum().backward()
    return (time.perf_counter() - t0) / n * 1e3


def rope_complex(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Interleaved-pair RoPE via complex multiplication (Llama's reference layout)."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs).flatten(-2).to(x.dtype)


def layout_choices(args: argparse.Namespace) -> None:
    b, t, h, k, d = args.batch, args.seq_len, args.heads, args.kv_heads or args.heads, args.d_model
    hd = d // h
    q, kv = torch.randn(b, h, t, hd), torch.randn(b, k, t, hd)
    x = torch.randn(b, t, d)
    w_fused = torch.randn((h + 2 * k) * hd, d) * 0.02
    w_q, w_k, w_v = w_fused.split([h * hd, k * hd, k * hd])
    norm = torch.nn.RMSNorm(d)
    cos, sin = rope_tables(t, hd, 10000.0)
    inv = 10000.0 ** (-torch.arange(0, hd, 2).float() / hd)
    freqs = torch.polar(torch.ones(t, hd // 2), torch.outer(torch.arange(t).float(), inv))
    n = args.steps
    rows = [
        ("attention", "SDPA, enable_gqa=True (used)", fwd_bwd_ms(attention_sdpa, q, kv, kv, n=n)),
        ("attention", "SDPA, K/V heads repeated", fwd_bwd_ms(
            lambda a, b_, c: F.scaled_dot_product_attention(
                a, b_.repeat_interleave(h // k, 1), c.repeat_interleave(h // k, 1), is_causal=True), q, kv, kv, n=n)),
        ("attention", "plain matmul reference", fwd_bwd_ms(attention_math, q, kv, kv, n=n)),
        ("norm", "torch.nn.RMSNorm (used)", fwd_bwd_ms(norm, x, n=n)),
        ("norm", "formula x·rsqrt(mean x²+eps)·w", fwd_bwd_ms(
            lambda a: a * torch.rsqrt(a.pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight, x, n=n)),
        ("qkv", "one fused matmul (used)", fwd_bwd_ms(lambda a: F.linear(a, w_fused), x, n=n)),
        ("qkv", "three matmuls", fwd_bwd_ms(
            lambda a: torch.cat([F.linear(a, w_q), F.linear(a, w_k), F.linear(a, w_v)], -1), x, n=n)),
        ("rope", "half layout, real cos/sin (used)", fwd_bwd_ms(lambda a: apply_rope(a, cos, sin), q, n=n)),
        ("rope", "interleaved pairs, complex", fwd_bwd_ms(lambda a: rope_complex(a, freqs), q, n=n)),
    ]
    table = Table(title=f"model layout choices: forward+backward, batch {b} x {t}, d {d}, heads {h}/{k}, CPU")
    for col in ("part", "variant", "ms"):
        table.add_column(col, justify="right" if col == "ms" else "left")
    for part, variant, ms in rows:
        table.add_row(part, variant, f"{ms:.2f}")
    console.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="steps per timing window")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5, help="timing windows; the best is reported")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip-layout", action="store_true", help="only the engine-vs-plain comparison")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overhead(args)
    if not args.skip_layout:
        layout_choices(args)


if __name__ == "__main__":
    main()
