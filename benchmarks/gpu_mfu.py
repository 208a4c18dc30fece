"""Single-device throughput, MFU and peak memory of the engine over AC and compile settings.

    python benchmarks/gpu_mfu.py                      # CUDA: 2.7b (seq 4096, bf16), smaller if it OOMs
    python benchmarks/gpu_mfu.py --presets tiny       # what runs on a CPU-only machine

For each activation-checkpointing mode (none / selective / full) and compile off / on, it builds the
model exactly as the engine does (``build_parallel_model``) and times the engine's ``train_step``
with AdamW on a fixed random batch. MFU comes from ``hpcllm.perf`` against the GPU's dense BF16
peak (known types only; on CPU it is printed as n/a unless ``--cpu-peak-flops`` is given). A preset
that runs out of GPU memory is reported as OOM and the next, smaller one in ``--presets`` is tried.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from fixed_batch import engine_state, random_batch  # sibling module (benchmarks/ is on sys.path)
from rich.console import Console
from rich.table import Table

from hpcllm import perf
from hpcllm.config.model import ModelConfig
from hpcllm.config.training import ParallelConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.metrics import detect_gpu_type, peak_memory_gib
from hpcllm.engine.train import train_step

console = Console()


@dataclass
class Result:
    preset: str
    ac: str
    compile: bool
    tokens_per_s: float | None = None
    mfu: float | None = None
    mem_gib: float | None = None
    note: str = ""


def measure(cfg: ModelConfig, ac: str, compile_: bool, args: argparse.Namespace, env: DistEnv) -> Result:
    pcfg = ParallelConfig(
        precision=args.precision, activation_checkpointing=ac, ac_every=args.ac_every, compile=compile_
    )
    res = Result(cfg.name, ac, compile_)
    model = None
    try:
        if env.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(env.device)
        state = engine_state(cfg, pcfg, env, random_batch(cfg, args.mbs, seed=0, device=env.device))
        model = state.model
        times = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            train_step(state, grad_accum=1, dp_size=1, grad_clip=1.0, device=env.device)  # syncs (.item)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        step_time = sorted(times)[len(times) // 2]
        samples_per_s = args.mbs / step_time
        res.tokens_per_s = samples_per_s * cfg.seq_len
        res.mem_gib = peak_memory_gib(env.device)
        gpu = detect_gpu_type(env.device, args.gpu_type)
        if gpu:
            res.mfu = perf.mfu(samples_per_s, cfg.seq_len, cfg.flops_per_token(), 1, gpu)
        elif env.device.type == "cpu" and args.cpu_peak_flops:
            res.mfu = perf.mfu_at_peak(samples_per_s, cfg.seq_len, cfg.flops_per_token(), 1, args.cpu_peak_flops)
    except torch.cuda.OutOfMemoryError:
        res.note = "OOM"
    finally:
        del model
        gc.collect()
        if env.device.type == "cuda":
            torch.cuda.empty_cache()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on_gpu = torch.cuda.is_available()
    p.add_argument(
        "--presets",
        default="2.7b,1b,125m" if on_gpu else "tiny",
        help="comma-separated, largest first; the next one is tried where one OOMs",
    )
    p.add_argument("--seq-len", type=int, default=None, help="override the presets' sequence length")
    p.add_argument("--mbs", type=int, default=1 if on_gpu else 4, help="micro-batch size")
    p.add_argument("--precision", default="BF_16", choices=["BF_16", "FP_32"])
    p.add_argument("--ac", default="none,selective,full", help="activation checkpointing modes")
    p.add_argument("--ac-every", type=int, default=2)
    p.add_argument("--compile", default="off,on", help="compile settings: off, on or both")
    p.add_argument("--steps", type=int, default=10 if on_gpu else 3)
    p.add_argument("--warmup", type=int, default=3 if on_gpu else 2)
    p.add_argument("--gpu-type", default=None, help="peak-FLOPs table key; default: from the device name")
    p.add_argument("--cpu-peak-flops", type=float, default=None, help="per-device peak for MFU on CPU")
    args = p.parse_args()

    device = torch.device("cuda", 0) if on_gpu else torch.device("cpu")
    if on_gpu:
        torch.cuda.set_device(device)
    env = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=device)
    dist.init_process_group("nccl" if on_gpu else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    overrides = {"seq_len": args.seq_len} if args.seq_len else {}
    results = []
    for ac in args.ac.split(","):
        for compile_ in [c == "on" for c in args.compile.split(",")]:
            for name in presets:
                cfg = ModelConfig.from_name(name, **overrides)
                console.print(f"[dim]{name} seq {cfg.seq_len} AC {ac} compile {compile_} ...[/]")
                res = measure(cfg, ac, compile_, args, env)
                results.append(res)
                if res.note != "OOM":
                    break
    dist.destroy_process_group()

    where = torch.cuda.get_device_name(device) if on_gpu else "CPU"
    table = Table(title=f"engine on one {where}: MBS {args.mbs}, {args.precision}, median of {args.steps} steps")
    for col in ("preset", "seq", "AC", "compile", "tokens/s", "MFU", "peak mem GiB", "note"):
        table.add_column(col, justify="right" if col in ("tokens/s", "MFU", "peak mem GiB", "seq") else "left")
    for r in results:
        seq = ModelConfig.from_name(r.preset, **overrides).seq_len
        table.add_row(
            r.preset,
            str(seq),
            r.ac,
            "on" if r.compile else "off",
            f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-",
            f"{r.mfu:.3f}" if r.mfu is not None else "n/a",
            f"{r.mem_gib:.1f}" if r.mem_gib is not None else "-",
            r.note,
        )
    console.print(table)


if __name__ == "__main__":
    main()
