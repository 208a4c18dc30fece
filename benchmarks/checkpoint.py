"""Checkpoint cost for the ``125m`` model on CPU: save/load time and size, sync vs async, and the
throughput lost to checkpointing every N steps.

    python benchmarks/checkpoint.py [--preset 125m --seq-len 128 --cycles 3 --every 4 --repeats 2]

One process, the engine's own pieces (FSDP2 on a world of one, AdamW, scheduler, the loader on the
demo corpus), so the checkpoint holds exactly what a real run's holds: fp32 weights plus AdamW's
two moments (about 3 x 4 bytes per parameter). Part 1 times ``Checkpointer.save`` (sync: the call;
async: the time the train loop is blocked, and the time until the checkpoint is published) and
``load_latest`` into a fresh state, best of ``--repeats``. Part 2 trains with one save per
``--every`` steps in each mode, interleaved, and reports wall time per step against no saves.
Shapes other than the sequence length are the preset's; the sequence length only sets the step
time that saves are compared with.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import track
from rich.table import Table

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import CheckpointConfig, DataConfig, OptimConfig, ParallelConfig, ScheduleConfig
from hpcllm.data.demo import write_demo
from hpcllm.engine.checkpoint import Checkpointer, list_checkpoints
from hpcllm.engine.data import build_train_loader
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.optim import Scheduler, build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.state import TrainState
from hpcllm.engine.train import train_step
from hpcllm.rundir import RunDir

console = Console()
ENV = DistEnv(rank=0, world_size=1, local_rank=0, local_world_size=1, device=torch.device("cpu"))
PARALLEL = ParallelConfig(precision="FP_32")


def build_state(model_cfg: ModelConfig, store: Path, steps: int) -> TrainState:
    model = build_parallel_model(model_cfg, PARALLEL, build_mesh(PARALLEL, ENV), ENV.device, seed=0)
    sched_cfg = ScheduleConfig(name="constant")
    optimizer = build_optimizer(model, OptimConfig(), lr=3e-4)
    loader = build_train_loader(
        DataConfig(sources=[{"path": str(store)}], num_workers=0),
        seq_len=model_cfg.seq_len,
        micro_batch_size=1,
        dp_rank=0,
        dp_size=1,
        seed=0,
        device=ENV.device,
    )
    return TrainState(model, optimizer, Scheduler(optimizer, base_lr=3e-4, total_steps=steps, cfg=sched_cfg), loader)


def step(state: TrainState) -> None:
    train_step(state, grad_accum=1, dp_size=1, grad_clip=1.0, device=ENV.device)
    state.step += 1
    state.consumed_samples += 1


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def save_load(model_cfg: ModelConfig, store: Path, work: Path, repeats: int) -> Table:
    """Part 1: one save (sync, async) and one load of a state with populated AdamW moments."""
    state = build_state(model_cfg, store, steps=10)
    step(state)
    names = (
        "sync: train loop blocked",
        "sync: until published",
        "async: train loop blocked",
        "async: until published",
        "load (latest, verified)",
    )
    rows = dict.fromkeys(names, float("inf"))
    size = 0
    for r in track(range(repeats), description="save / load"):
        for mode in ("sync", "async"):
            run = RunDir(work / f"sl_{mode}_{r}")
            ckpt = Checkpointer(run, CheckpointConfig(async_save=mode == "async"))
            blocked = timed(lambda ckpt=ckpt: ckpt.save(state))
            done = blocked + timed(ckpt.wait)
            ckpt.close()
            rows[f"{mode}: train loop blocked"] = min(rows[f"{mode}: train loop blocked"], blocked)
            rows[f"{mode}: until published"] = min(rows[f"{mode}: until published"], done)
            size = list_checkpoints(run.checkpoints)[-1].size_bytes
            fresh = build_state(model_cfg, store, steps=10)
            load = timed(lambda run=run, fresh=fresh: Checkpointer(run, CheckpointConfig()).load_latest(fresh))
            rows["load (latest, verified)"] = min(rows["load (latest, verified)"], load)
            shutil.rmtree(run.path)
    table = Table(
        title=f"{model_cfg.name}: {model_cfg.n_params() / 1e6:.0f}M params, checkpoint "
        f"{size / 2**20:.0f} MiB (weights + AdamW moments, fp32)"
    )
    table.add_column("operation")
    table.add_column("seconds (best)", justify="right")
    table.add_column("MiB/s", justify="right")
    for name, secs in rows.items():
        table.add_row(name, f"{secs:.2f}", f"{size / 2**20 / secs:.0f}")
    return table


def throughput(model_cfg: ModelConfig, store: Path, work: Path, cycles: int, every: int) -> Table:
    """Part 2: the cost of one save per ``every`` training steps, for no save, sync and async.

    One training state; each cycle runs the three modes back to back, so a noisy neighbour on
    shared cores hits all modes alike, and the median cycle counts. A mode's cycle: its save (none,
    sync, or async: staging blocks, the write overlaps the following steps), then ``every`` steps,
    then waiting for an async save still in flight (counted against async).
    """
    state = build_state(model_cfg, store, steps=cycles * 3 * every + 2)
    step(state)  # warm-up step (allocator, first-touch of AdamW moments), not timed
    ckpts = {
        mode: Checkpointer(RunDir(work / f"tp_{mode}"), CheckpointConfig(async_save=mode == "async", keep_last=1))
        for mode in ("sync", "async")
    }
    times: dict[str, list[float]] = {"none": [], "sync": [], "async": []}
    for _ in track(range(cycles), description="train + checkpoint"):
        for mode, secs in times.items():

            def cycle(mode: str = mode) -> None:
                if mode != "none":
                    ckpts[mode].save(state)
                for _ in range(every):
                    step(state)
                if mode != "none":
                    ckpts[mode].wait()

            secs.append(timed(cycle))
    for c in ckpts.values():
        c.close()
    base = statistics.median(times["none"]) / every
    table = Table(title=f"one save per {every} steps of 1 x {model_cfg.seq_len} tokens (median of {cycles} cycles)")
    table.add_column("mode")
    table.add_column("s/step", justify="right")
    table.add_column("throughput cost", justify="right")
    for mode, secs in times.items():
        per_step = statistics.median(secs) / every
        table.add_row(mode, f"{per_step:.2f}", "-" if mode == "none" else f"{per_step / base - 1:+.0%}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="125m")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cycles", type=int, default=3, help="save cycles per mode in part 2")
    parser.add_argument("--every", type=int, default=4, help="training steps per save in part 2")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="where checkpoints go (default: a temp dir)")
    args = parser.parse_args()
    model_cfg = ModelConfig.from_name(args.preset, seq_len=args.seq_len)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    work = Path(tempfile.mkdtemp(prefix="hpcllm-ckpt-bench-", dir=args.workdir))
    try:
        write_demo(work / "demo", with_debian_docs=False)
        store = work / "demo"
        console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, checkpoints in {work}")
        console.print(save_load(model_cfg, store, work, args.repeats))
        console.print(throughput(model_cfg, store, work, args.cycles, args.every))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
