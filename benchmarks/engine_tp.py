"""What tensor parallelism costs on CPU ranks: the engine under TP 2 x DP 2 and TP 4 against FSDP alone.

    torchrun --standalone --nproc-per-node=4 benchmarks/engine_tp.py \
        [--layers 6 --d-model 256 --heads 8 --seq-len 256 --batch 4 --threads 1 --rounds 5]

Every contender trains the same model (MHA: TP splits whole query/key/value heads) on the same
global batch of ``ranks x batch`` sequences per step, with the engine's ``train_step``:

- FULL_SHARD: FSDP2 over all ranks, ``--batch`` sequences per rank;
- TP t: ``parallel.tensor_parallel: t``, FSDP2 over ranks / t, each data-parallel group taking
  ``t x batch`` sequences (the ranks of one TP group read the same ones).

Timed interleaved (``fixed_batch.time_interleaved``): median wall time per step, tokens/s per
rank, and the median per-round ratio to FULL_SHARD (above 1: faster), in wall and CPU time.
On CPU TP only costs: its all-gathers and reduce-scatters of activations (two of each per
block and direction) block the rank, and the matmuls it splits are already small.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from fixed_batch import (
    Step,
    add_model_options,
    engine_state,
    load_average,
    model_config,
    random_batch,
    time_interleaved,
)
from rich.console import Console
from rich.progress import track
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv, init_distributed
from hpcllm.engine.train import train_step

console = Console()
REFERENCE = "FULL_SHARD"


def engine_loop(cfg: ModelConfig, batch_per_rank: int, precision: str, tp: int, env: DistEnv) -> Step:
    pcfg = ParallelConfig.model_validate({"precision": precision, "tensor_parallel": tp})
    dp = env.world_size // tp
    # TP innermost (engine/tensor_parallel.py): ranks r and r + 1 .. r + tp - 1 share one data index.
    batch = random_batch(cfg, batch_per_rank * tp, seed=env.rank // tp, device=env.device)
    state = engine_state(cfg, pcfg, env, batch)

    def step() -> None:
        train_step(state, grad_accum=1, dp_size=dp, tp_size=tp, grad_clip=1.0, device=env.device)

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(p)
    p.set_defaults(kv_heads=8)
    p.add_argument("--batch", type=int, default=4, help="sequences per rank under FULL_SHARD")
    p.add_argument("--precision", default="FP_32", choices=["FP_32", "BF_16"])
    p.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    p.add_argument("--rounds", type=int, default=5, help="timing rounds; medians are reported")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--tp", default="2,4", help="tensor-parallel degrees to time beside FULL_SHARD")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    env = init_distributed("auto")
    cfg = model_config(args)
    degrees = [int(t) for t in args.tp.split(",")]
    steps: dict[str, Step] = {REFERENCE: engine_loop(cfg, args.batch, args.precision, 1, env)}
    for tp in degrees:
        steps[f"TP {tp} x DP {env.world_size // tp}"] = engine_loop(cfg, args.batch, args.precision, tp, env)
    load_before = load_average()
    timings = time_interleaved(
        steps,
        rounds=args.rounds,
        steps_per_window=1,
        warmup=args.warmup,
        progress=lambda it: track(it, description="timing", console=console, disable=not env.is_main),
    )
    if env.is_main:
        tokens = args.batch * cfg.seq_len
        table = Table(
            title=(
                f"{env.world_size} ranks x {args.threads} thread(s), {env.device.type}: "
                f"{cfg.n_params() / 1e6:.1f}M params ({cfg.n_layers} layers, d {cfg.d_model}, {cfg.n_heads} heads), "
                f"seq {cfg.seq_len}, {args.batch * env.world_size} sequences per step, {args.precision}; median of "
                f"{args.rounds} interleaved rounds, load average {load_before} -> {load_average()}"
            )
        )
        for col in ("layout", "ms/step", "tok/s/rank", "wall ratio", "CPU ms", "CPU ratio"):
            table.add_column(col, justify="left" if col == "layout" else "right")
        for name in steps:
            table.add_row(name, *timings.cells(name, REFERENCE, tokens))
        console.print(table)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
