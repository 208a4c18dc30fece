"""Small, timed measurements of this rank's own hardware, shared by the pre-flight and the watchdog.

A rank's step time cannot tell a straggler apart: in synchronous training every rank waits for the
slowest, so all step times are equal. What differs is how fast a rank computes alone, so both the
pre-flight (before training) and the heartbeat (during it, a few milliseconds every
``watchdog.heartbeat_every_s``) time the same GEMM on each rank without any collective.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import torch


def node_name() -> str:
    """This rank's node as the scheduler names it (what ``--exclude`` takes), else the host name."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def timed(fn: Callable[[], None], device: torch.device, iters: int) -> float:
    """Seconds per call of ``fn`` after one warm-up call (synchronised on a GPU)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def gemm_tflops(device: torch.device, *, factor: int = 1, small: bool = False, iters: int = 10) -> float:
    """Matmul throughput (bf16 on a GPU, fp32 on CPU). ``small``: the heartbeat's cheap version.
    ``factor``: the work per timed iteration, times this (the pre-flight's fault injection)."""
    if device.type == "cuda":
        n, dtype = (4096 if small else 8192), torch.bfloat16
    else:
        n, dtype = (192 if small else 384), torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def work() -> None:
        for _ in range(factor):
            torch.mm(a, b)

    return 2 * n**3 / timed(work, device, iters=iters) / 1e12


def memory_gbs(device: torch.device, *, factor: int = 1) -> float:
    """Copy bandwidth (bytes read + written per second), GB/s."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 23)  # 1 GiB / 32 MiB of fp32
    src = torch.ones(numel, device=device)
    dst = torch.empty_like(src)

    def work() -> None:
        for _ in range(factor):
            dst.copy_(src)

    return 2 * src.numel() * src.element_size() / timed(work, device, iters=5) / 1e9
