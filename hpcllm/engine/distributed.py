"""Process-group setup: which rank we are, which device we use, which backend talks between ranks.

Under ``torchrun`` the rank comes from its environment (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR/PORT). Started as a plain process, the engine is a world of one with
an in-memory store, so the same FSDP code path runs everywhere and no port is ever opened.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from hpcllm.errors import ConfigError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int) -> torch.device:
    """``auto``: this rank's GPU if CUDA is available, else CPU; ``cuda`` without CUDA is an error."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' requested but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str, *, cpu_collectives: bool = False) -> DistEnv:
    """Join (or create) the default process group: nccl for CUDA, gloo for CPU.

    ``cpu_collectives`` adds gloo for CPU tensors next to nccl on CUDA: with CPU offload the
    sharded gradients live on the CPU, and clipping reduces their norm across ranks there.
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = pick_device(device_preference, local_rank)
    backend = "gloo"
    if device.type == "cuda":
        backend = "cuda:nccl,cpu:gloo" if cpu_collectives else "nccl"
    if not dist.is_initialized():
        if "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, rank=rank, world_size=world_size)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            rank, world_size, local_rank, local_world_size = 0, 1, 0, 1
    return DistEnv(rank, world_size, local_rank, local_world_size, device)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    """Wait for every rank (no-op in a world of one)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks in place and return it (``t`` on CUDA for nccl, CPU for gloo)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def all_reduce_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over all ranks (e.g. peak memory: the fullest rank is the limit)."""
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())
