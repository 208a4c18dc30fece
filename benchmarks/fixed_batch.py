"""The engine benchmarks' shared harness: one fixed micro-batch, the engine's state over it, a
minimal PyTorch loop to compare with, and interleaved timing. Scripts in benchmarks/ import it as
a sibling module.

A fixed batch keeps data loading out of a measured step. Contenders are timed interleaved (one
window of each per round, the order rotated from round to round) and reported as medians, so a
neighbour that loads the shared cores for a while slows all of them alike; the per-round ratio
to a reference pairs windows that ran seconds apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hpcllm.config.model import ModelConfig
from hpcllm.config.training import OptimConfig, ParallelConfig, ScheduleConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.optim import Scheduler, build_optimizer
from hpcllm.engine.parallelize import build_mesh, build_parallel_model
from hpcllm.engine.state import TrainState

Batch = dict[str, torch.Tensor | None]
Step = Callable[[], object]


class FixedBatch:
    """The engine's loader contract (``next``, ``state_dict``, ``load_state_dict``) over one batch."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch

    def __next__(self) -> Batch:
        return self.batch

    def state_dict(self) -> dict[str, int]:
        return {}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        pass


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The model shape options every engine benchmark takes (defaults: docs/performance.md's model)."""
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=256)


def model_config(args: argparse.Namespace) -> ModelConfig:
    """The model of ``add_model_options``' values."""
    return ModelConfig(
        vocab_size=args.vocab,
        seq_len=args.seq_len,
        n_layers=args.layers,
        n_heads=args.heads,
        n_kv_heads=args.kv_heads,
        d_model=args.d_model,
    )


def random_batch(cfg: ModelConfig, micro_batch: int, seed: int, device: torch.device | str = "cpu") -> Batch:
    """``micro_batch`` random sequences of ``cfg.seq_len`` tokens with next-token labels, no loss mask."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.seq_len + 1), generator=gen).to(device)
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": None}


def engine_state(cfg: ModelConfig, pcfg: ParallelConfig, env: DistEnv, batch: Batch) -> TrainState:
    """Model, optimizer and schedule built exactly as ``hpcllm.engine.trainer.Trainer`` builds them."""
    model = build_parallel_model(cfg, pcfg, build_mesh(pcfg, env), env.device, seed=0)
    opt = build_optimizer(model, OptimConfig(), lr=1e-4)
    return TrainState(
        model=model,
        optimizer=opt,
        loader=FixedBatch(batch),
        scheduler=Scheduler(opt, base_lr=1e-4, total_steps=10**9, cfg=ScheduleConfig()),
    )


def plain_step(
    model: torch.nn.Module, batch: Batch, *, autocast: torch.dtype | None = None, float_logits: bool = True
) -> Step:
    """The minimal loop a PyTorch user writes: AdamW with PyTorch's defaults, mean cross-entropy,
    backward, clip to norm 1, step, and the loss to the host (as any loop that logs it).

    ``autocast``: run the forward under ``torch.autocast`` with this dtype (mixed precision
    without FSDP). ``float_logits=False`` takes the cross-entropy in the logits' own dtype.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    x, y = batch["input_ids"], batch["labels"]
    assert x is not None and y is not None
    device_type = x.device.type

    def step() -> None:
        with torch.autocast(device_type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logits = model(x)
        if float_logits:
            logits = logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()

    return step


@dataclass
class Timings:
    """Per-round wall and CPU seconds per step of each contender (averaged over ranks)."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median_wall(self, name: str) -> float:
        return statistics.median(self.wall[name])

    def median_cpu(self, name: str) -> float:
        return statistics.median(self.cpu[name])

    def ratio(self, name: str, reference: str, clock: str = "wall") -> float:
        """Median over rounds of reference time / contender time (> 1: the contender is faster)."""
        times = self.wall if clock == "wall" else self.cpu
        return statistics.median(r / t for r, t in zip(times[reference], times[name], strict=True))

    def cells(self, name: str, reference: str, tokens: int) -> list[str]:
        """A contender's row of the multi-rank tables: ms/step, tok/s/rank, wall ratio, CPU ms, CPU ratio."""
        wall = self.median_wall(name)
        return [
            f"{wall * 1e3:.1f}",
            f"{tokens / wall:,.0f}",
            f"{self.ratio(name, reference):.3f}",
            f"{self.median_cpu(name) * 1e3:.1f}",
            f"{self.ratio(name, reference, 'cpu'):.3f}",
        ]


def time_interleaved(
    steps: dict[str, Step],
    *,
    rounds: int,
    steps_per_window: int,
    warmup: int,
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> Timings:
    """Time each contender in ``rounds`` windows of ``steps_per_window`` steps, interleaved.

    Under a process group every window starts and ends with a barrier and its times are averaged
    over ranks, so all ranks report the same figures. CPU time is the process's (all its threads,
    gloo's included): it hardly moves with the machine's load, unlike wall time.
    """
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    out = Timings({n: [] for n in names}, {n: [] for n in names})
    for r in progress(range(rounds)):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if distributed:
                dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(steps_per_window):
                steps[name]()
            cpu = time.process_time() - c0
            if distributed:
                dist.barrier()
            wall = time.perf_counter() - t0
            both = torch.tensor([wall, cpu], dtype=torch.float64)
            if distributed:
                dist.all_reduce(both)
                both /= dist.get_world_size()
            out.wall[name].append(both[0].item() / steps_per_window)
            out.cpu[name].append(both[1].item() / steps_per_window)
    return out


def load_average() -> str:
    """The 1-minute load average, to print beside figures measured on shared cores."""
    return f"{os.getloadavg()[0]:.1f}"
