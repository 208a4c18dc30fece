"""The memory estimate against what the engine's model really holds on CPU (docs/memory.md).

    python benchmarks/memory_cpu.py activations                  # tiny (seq 128) and 125m (seq 1024)
    python benchmarks/memory_cpu.py activations --presets 125m --seq-len 2048
    torchrun --nproc-per-node=2 benchmarks/memory_cpu.py state   # weights/grads/AdamW per rank, 3 shardings

activations: bytes autograd saves for backward in one forward + loss, counted with
saved_tensors_hooks (hpcllm.engine.memory_audit), against ``hpcllm.plan.memory.activations``, for the
engine's three numerics (fp32; one device with BF_16 autocast; FSDP2 with bf16 parameters) and
activation checkpointing none / full / every 2nd block.
state: after a real step, the bytes of this rank's parameter, gradient and AdamW shards against
the estimate's terms, for FULL_SHARD, HYBRID_SHARD and NO_SHARD.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_memory_activations import measure

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig
from hpcllm.engine.distributed import init_distributed
from hpcllm.engine.losses import cross_entropy_sum
from hpcllm.engine.memory_audit import rank_state_bytes
from hpcllm.engine.optim import build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.plan.memory import MemorySpec, estimate_memory

console = Console()
MIB = 2**20


def activations(args: argparse.Namespace) -> None:
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    table = Table(title=f"saved activations, one micro-batch of {args.mbs}, torch {torch.__version__}")
    for col in ("preset", "seq", "numerics", "AC", "measured MiB", "estimate MiB", "estimate/measured"):
        table.add_column(col, justify="right" if "MiB" in col or col in ("seq", "estimate/measured") else "left")
    for name in args.presets.split(","):
        seq = args.seq_len or (128 if name == "tiny" else 1024)
        cfg = ModelConfig.from_name(name, seq_len=seq)
        for mode in args.numerics.split(","):
            for ac in ("none", "full", "selective"):
                got, est = measure(cfg, mode, ac, args.mbs)
                table.add_row(
                    name,
                    str(seq),
                    mode,
                    ac if ac != "selective" else "every 2nd",
                    f"{got / MIB:,.2f}",
                    f"{est / MIB:,.2f}",
                    f"{est / got:.4f}",
                )
                console.print(f"[dim]{name} {mode} {ac}: {got} / {est}[/]")
    console.print(table)
    dist.destroy_process_group()


def state(args: argparse.Namespace) -> None:
    env = init_distributed("cpu")
    cfg = ModelConfig.from_name(args.presets.split(",")[0], seq_len=args.seq_len or 64)
    rows = []
    for sharding in ("FULL_SHARD", "HYBRID_SHARD", "NO_SHARD"):
        pcfg = ParallelConfig(sharding=sharding, precision="BF_16")
        model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=0)
        opt = build_optimizer(model, OptimConfig(), lr=1e-4)
        ids = torch.randint(0, cfg.vocab_size, (1, cfg.seq_len))
        cross_entropy_sum(model(ids), ids, None).backward()
        opt.step()
        held = rank_state_bytes(model, opt)
        est = estimate_memory(MemorySpec(cfg, pcfg, 1, env.world_size, env.local_world_size, device="cpu"))
        for term, key in (("weights", "weights_storage"), ("gradients", "gradients"), ("optimizer", "optimizer")):
            rows.append((sharding, term, held[key], est.term(term).bytes))
        del model, opt
    if env.is_main:
        table = Table(title=f"{cfg.name} on {env.world_size} ranks, rank 0: bytes held vs estimate")
        for col in ("sharding", "term", "held (local shards)", "estimate", "equal"):
            table.add_column(col)
        for sharding, term, held, est in rows:
            table.add_row(sharding, term, f"{held:,}", f"{est:,}", "yes" if held == est else "NO")
        console.print(table)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["activations", "state"])
    p.add_argument("--presets", default="tiny,125m")
    p.add_argument("--seq-len", type=int, default=None, help="default: 128 for tiny, 1024 otherwise (64 for state)")
    p.add_argument("--mbs", type=int, default=2)
    p.add_argument("--numerics", default="fp32,bf16-autocast,bf16-fsdp2", help="activations: which of the three")
    args = p.parse_args()
    (activations if args.what == "activations" else state)(args)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
