"""The engine on 2+ ranks against a plain PyTorch DDP loop: FULL_SHARD and NO_SHARD, same model and batch.

    torchrun --standalone --nproc-per-node=2 benchmarks/engine_ranks.py \
        [--layers 6 --d-model 256 --seq-len 256 --batch 8 --threads 1 --rounds 15]

Every rank trains the same GPT on its own fixed micro-batch (the batch per rank, MBS) with:

- DDP loop: ``DistributedDataParallel`` around the plain module, PyTorch's default AdamW, mean
  cross-entropy, clip, step, ``loss.item()`` (``fixed_batch.plain_step``);
- FULL_SHARD / NO_SHARD: the engine: the model, optimizer and schedule as the engine builds them
  (``build_parallel_model``: FSDP2, or DDP for NO_SHARD), the engine's ``train_step``, and the two
  per-step agreements of the train loop (peak memory, max over ranks; the stop flag).

Contenders are timed interleaved (``fixed_batch.time_interleaved``); the table gives the median
wall time per step, tokens/s per rank, and the median per-round ratio to the DDP loop (above 1:
faster than it), in wall time and in CPU time per step (the process's, gloo's threads included:
far less sensitive to other jobs on shared cores). Targets: FULL_SHARD >= 0.95, NO_SHARD >= 0.98 of the DDP loop.
``--profile N`` adds, per contender, the N operators with the most self CPU time in 2 steps
(rank 0), which is how the gaps were found (docs/performance.md); ``--collectives`` times gloo's
all-gather and reduce-scatter against the pairwise exchanges FSDP2 uses on CPU ranks.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
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
from torch.nn.parallel import DistributedDataParallel

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv, all_reduce_max, init_distributed
from hpcllm.engine.metrics import peak_memory_gib
from hpcllm.engine.model import GPT, init_weights
from hpcllm.engine.preemption import any_rank
from hpcllm.engine.train import train_step

console = Console()
TARGETS = {"FULL_SHARD": 0.95, "NO_SHARD": 0.98}
REFERENCE = "DDP loop"


def ddp_loop(cfg: ModelConfig, batch: Batch, precision: str, env: DistEnv) -> Step:
    model = GPT(cfg).to(env.device)
    init_weights(model, 0)
    ddp = DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return plain_step(ddp, batch, autocast=torch.bfloat16 if precision == "BF_16" else None)


def engine_loop(cfg: ModelConfig, batch: Batch, precision: str, sharding: str, env: DistEnv) -> Step:
    state = engine_state(cfg, ParallelConfig(precision=precision, sharding=sharding), env, batch)

    def step() -> None:
        train_step(state, grad_accum=1, dp_size=env.world_size, grad_clip=1.0, device=env.device)
        all_reduce_max(peak_memory_gib(env.device), env.device)  # the metrics line's peak memory
        any_rank(False)  # StopRequest.should_stop: every rank agrees on stopping, every step

    return step


def profile_table(steps: dict[str, Step], top: int, env: DistEnv) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name, step in steps.items():
        dist.barrier()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(2):
                step()
        if env.is_main:
            print(f"{name}: top {top} operators by self CPU time, 2 steps, rank 0")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top), flush=True)


def collectives_table(cfg: ModelConfig, env: DistEnv, rounds: int) -> None:
    """gloo's all-gather and reduce-scatter against the pairwise exchanges FSDP2 uses on CPU
    (``hpcllm.engine.fsdp_gloo``), for one block's parameters and for the whole model."""
    from hpcllm.engine.fsdp_gloo import PairwiseAllGather, PairwiseReduceScatter

    # torch 2.13 renamed the tensor collectives (*_single); older ones only have the *_tensor names
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    group, world = dist.group.WORLD, env.world_size
    block = sum(p.numel() for p in GPT(cfg).blocks[0].parameters())
    table = Table(title=f"collectives on {world} ranks ({env.device.type}), median ms of {rounds}")
    for col in ("floats per rank", "all-gather: gloo", "pairwise", "reduce-scatter: gloo", "all-reduce", "pairwise"):
        table.add_column(col, justify="right")
    for numel in (block // world, cfg.n_params() // world):
        shard, full = torch.randn(numel), torch.randn(numel * world)
        out_full, out_shard = torch.empty(numel * world), torch.empty(numel)
        timings = time_interleaved(
            {
                "ag gloo": lambda out_full=out_full, shard=shard: all_gather(out_full, shard),
                "ag pairwise": lambda out_full=out_full, shard=shard: PairwiseAllGather()(out_full, shard, group),
                "rs gloo": lambda out_shard=out_shard, full=full: reduce_scatter(out_shard, full.clone()),
                "all-reduce": lambda full=full: dist.all_reduce(full.clone()),
                "rs pairwise": lambda out_shard=out_shard, full=full: PairwiseReduceScatter()(
                    out_shard, full.clone(), group, dist.ReduceOp.SUM
                ),
            },
            rounds=rounds,
            steps_per_window=1,
            warmup=1,
        )
        if env.is_main:
            table.add_row(f"{numel:,}", *(f"{timings.median_wall(k) * 1e3:.1f}" for k in timings.wall))
    if env.is_main:
        console.print(table)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.add_argument("--batch", type=int, default=8, help="micro-batch size per rank")
    p.add_argument("--precision", default="FP_32", choices=["FP_32", "BF_16"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--rounds", type=int, default=15, help="timing rounds; medians are reported")
    p.add_argument("--steps", type=int, default=1, help="steps per timing window")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--only", default="FULL_SHARD,NO_SHARD", help="the engine's shardings to time beside the DDP loop")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print the top N operators per contender")
    p.add_argument("--collectives", action="store_true", help="also time gloo's collectives against pairwise ones")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = init_distributed("auto")
    if env.world_size < 2:
        raise SystemExit("start it under torchrun with 2 or more ranks: torchrun --standalone --nproc-per-node=2 ...")
    cfg = model_config(args)
    batch = random_batch(cfg, args.batch, seed=env.rank, device=env.device)
    shardings = args.only.split(",")
    steps: dict[str, Step] = {REFERENCE: ddp_loop(cfg, batch, args.precision, env)}
    for sharding in shardings:
        steps[sharding] = engine_loop(cfg, batch, args.precision, sharding, env)
    load_before = load_average()
    timings = time_interleaved(
        steps,
        rounds=args.rounds,
        steps_per_window=args.steps,
        warmup=args.warmup,
        progress=lambda it: track(it, description="timing", console=console, disable=not env.is_main),
    )
    if args.profile:
        profile_table(steps, args.profile, env)
    if env.is_main:
        tokens = args.batch * cfg.seq_len
        table = Table(
            title=(
                f"{env.world_size} ranks x {args.threads} thread(s), {env.device.type}: "
                f"{cfg.n_params() / 1e6:.1f}M params "
                f"({cfg.n_layers} layers, d {cfg.d_model}), seq {cfg.seq_len}, MBS {args.batch}, {args.precision}; "
                f"median of {args.rounds} interleaved rounds, load average {load_before} -> {load_average()}"
            )
        )
        for col in ("loop", "ms/step", "tok/s/rank", "wall ratio", "CPU ms", "CPU ratio", "target"):
            table.add_column(col, justify="left" if col == "loop" else "right")
        for name in steps:
            target = f">= {TARGETS[name]:.2f}" if name in TARGETS else ""
            table.add_row(name, *timings.cells(name, REFERENCE, tokens), target)
        console.print(table)
    if args.collectives:
        collectives_table(cfg, env, args.rounds)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
