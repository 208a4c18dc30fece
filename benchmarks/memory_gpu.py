"""The memory estimate against CUDA's allocator: the table docs/memory.md is waiting for.

    torchrun --nproc-per-node=8 benchmarks/memory_gpu.py                  # FSDP2 FULL_SHARD over 8 GPUs
    python benchmarks/memory_gpu.py --presets 1b --mbs 1,2                # one GPU: autocast, no FSDP
    python benchmarks/memory_gpu.py --presets tiny --mbs 2 --seq-len 256  # CPU: checks the script runs

For each preset (default 1b and 2.7b), activation-checkpointing mode and micro-batch size it runs
the engine's own steps (``build_parallel_model``, AdamW, ``train_step``) on a fixed batch and prints
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (max over ranks) next to the
estimate's tensor peak (what "allocated" measures) and its full peak (overhead included: what must
fit in the GPU). A size that runs out of memory is reported as OOM next to its estimate.
On CPU the "allocated" column is the peak resident set size.
"""

from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from fixed_batch import FixedBatch  # sibling module (benchmarks/ is on sys.path)
from rich.console import Console
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig, ScheduleConfig
from hpcllm.engine.distributed import init_distributed
from hpcllm.engine.memory_meter import GIB, MemoryMeter, max_over_ranks
from hpcllm.engine.optim import Scheduler, build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import train_step
from hpcllm.plan.memory import MemorySpec, estimate_memory

console = Console()


def measure(cfg: ModelConfig, pcfg: ParallelConfig, mbs: int, env, steps: int) -> tuple[float, float | None] | None:
    """(peak allocated GiB, peak reserved GiB) over ranks after ``steps`` steps, or None on OOM."""
    meter = MemoryMeter(env.device)
    model = None
    try:
        meter.release()
        meter.reset_peak()
        model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=0)
        opt = build_optimizer(model, OptimConfig(), lr=1e-4)
        ids = torch.randint(0, cfg.vocab_size, (mbs, cfg.seq_len + 1), device=env.device)
        state = TrainState(
            model=model,
            optimizer=opt,
            loader=FixedBatch({"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": None}),
            scheduler=Scheduler(opt, base_lr=1e-4, total_steps=10**9, cfg=ScheduleConfig(name="constant")),
        )
        for _ in range(steps):  # the second step has the optimizer state the first one created
            train_step(state, grad_accum=1, dp_size=env.world_size, grad_clip=1.0, device=env.device)
        failed = False
    except torch.OutOfMemoryError:
        failed = True
    finally:
        del model
        gc.collect()
    failed = bool(max_over_ranks(float(failed), env.device))
    allocated = max_over_ranks(meter.peak_bytes() / GIB, env.device)
    reserved = meter.peak_reserved_bytes()
    reserved_gib = None if reserved is None else max_over_ranks(reserved / GIB, env.device)
    meter.release()
    return None if failed else (allocated, reserved_gib)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="1b,2.7b")
    p.add_argument("--seq-len", type=int, default=None, help="override the presets' sequence length")
    p.add_argument("--mbs", default="1,2,4", help="micro-batch sizes")
    p.add_argument("--ac", default="none,full", help="activation checkpointing modes")
    p.add_argument("--sharding", default="FULL_SHARD", choices=["FULL_SHARD", "HYBRID_SHARD", "NO_SHARD"])
    p.add_argument("--precision", default="BF_16", choices=["BF_16", "FP_32"])
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()

    env = init_distributed("auto")
    device = "cuda" if env.device.type == "cuda" else "cpu"
    overrides = {"seq_len": args.seq_len} if args.seq_len else {}
    rows = []
    for name in args.presets.split(","):
        cfg = ModelConfig.from_name(name.strip(), **overrides)
        for ac in args.ac.split(","):
            pcfg = ParallelConfig(sharding=args.sharding, precision=args.precision, activation_checkpointing=ac)
            for mbs in (int(m) for m in args.mbs.split(",")):
                spec = MemorySpec(cfg, pcfg, mbs, env.world_size, env.local_world_size, device=device)
                est = estimate_memory(spec)
                got = measure(cfg, pcfg, mbs, env, args.steps)
                rows.append((cfg.name, cfg.seq_len, ac, mbs, got, est))
                if env.is_main:
                    console.print(f"[dim]{cfg.name} AC {ac} MBS {mbs}: {got}, estimate {est.tensor_bytes / GIB:.2f}[/]")
    if env.is_main:
        where = torch.cuda.get_device_name(env.device) if device == "cuda" else "CPU"
        table = Table(
            title=f"memory per rank, {env.world_size} x {where}, {args.sharding}, {args.precision}, "
            f"torch {torch.__version__}"
        )
        for col in (
            "preset",
            "seq",
            "AC",
            "MBS",
            "allocated GiB",
            "estimate tensors GiB",
            "est/alloc",
            "reserved GiB",
            "estimate peak GiB",
        ):
            table.add_column(col, justify="left" if col in ("preset", "AC") else "right")
        for name, seq, ac, mbs, got, est in rows:
            if got is None:
                table.add_row(
                    name,
                    str(seq),
                    ac,
                    str(mbs),
                    "OOM",
                    f"{est.tensor_bytes / GIB:.2f}",
                    "-",
                    "-",
                    f"{est.peak_gib:.2f}",
                )
                continue
            alloc, reserved = got
            table.add_row(
                name,
                str(seq),
                ac,
                str(mbs),
                f"{alloc:.2f}",
                f"{est.tensor_bytes / GIB:.2f}",
                f"{est.tensor_bytes / GIB / alloc:.3f}",
                "-" if reserved is None else f"{reserved:.2f}",
                f"{est.peak_gib:.2f}",
            )
        console.print(table)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
