"""Measured memory of a rank, resettable per trial, and a budget that all ranks enforce together.

CUDA: the caching allocator's peak allocated and reserved bytes (``reset_peak_memory_stats``).
CPU: the process's resident set (what the OS, and a SLURM cgroup, hold against the job). Linux
keeps a resident high-water mark (VmHWM) that ``/proc/self/clear_refs`` resets, so each trial gets
its own peak; elsewhere the running maximum is the best there is, and the report says so.

``BudgetGuard`` checks the current usage at every block boundary, forward and backward, during the
steps it guards. The check is an all-reduce (max over ranks), so when one rank is over the budget
every rank raises ``MemoryBudgetExceeded`` at the same block: the ranks' collectives stay matched
and the probe can carry on with a smaller size, exactly as after a CUDA out-of-memory error.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

GIB = 2**30
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MemoryBudgetExceeded(RuntimeError):
    """A rank's memory went over the probe's budget (raised on every rank at the same point)."""


def _read_status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class MemoryMeter:
    """Current and peak memory of this rank on ``device``, with a per-trial reset of the peak."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == "cuda" or self._can_reset_rss_peak()
        self._libc = self._load_libc()

    @staticmethod
    def _can_reset_rss_peak() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return _read_status_kib("VmHWM") is not None

    @staticmethod
    def _load_libc() -> ctypes.CDLL | None:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.malloc_trim  # noqa: B018 - glibc only
            return libc
        except (OSError, AttributeError):
            return None

    def current_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_reserved(self.device)
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def release(self) -> None:
        """Give back what the last trial freed: collect cycles, empty CUDA's cache, trim the C heap."""
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self._libc is not None:
            self._libc.malloc_trim(0)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.resettable:
            Path("/proc/self/clear_refs").write_text("5")

    def peak_bytes(self) -> int:
        """Peak since ``reset_peak``: CUDA max allocated, or the resident high-water mark on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        hwm = _read_status_kib("VmHWM")
        return hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_reserved_bytes(self) -> int | None:
        """CUDA: the most the caching allocator held (what runs out); None on CPU."""
        return torch.cuda.max_memory_reserved(self.device) if self.device.type == "cuda" else None


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest ``value`` of all ranks (a collective; plain ``value`` without a process group)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    backend = str(dist.get_backend())
    on = device if ("nccl" in backend and "gloo" not in backend) else torch.device("cpu")
    t = torch.tensor([value], dtype=torch.float64, device=on)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


class BudgetGuard:
    """Raises ``MemoryBudgetExceeded`` on all ranks together when any rank goes over ``budget_bytes``.

    Hooks sit on every block's forward and (through a hook on its output) backward; they act only
    inside ``guarding()`` (the first step of each size, where the peak is first reached), so timed
    steps run without the checks' synchronisation.
    """

    def __init__(self, blocks: list[nn.Module], meter: MemoryMeter, budget_bytes: int) -> None:
        self.meter, self.budget = meter, budget_bytes
        self._active = False
        self.highest = 0
        self._handles = []
        for block in blocks:
            self._handles.append(block.register_forward_pre_hook(self._check_forward))
            self._handles.append(block.register_forward_hook(self._hook_output))

    def _check(self, where: str) -> None:
        if not self._active:
            return
        used = max_over_ranks(float(self.meter.current_bytes()), self.meter.device)
        self.highest = max(self.highest, int(used))
        if used > self.budget:
            self._active = False  # the error unwinds through other hooks; they must not check again
            raise MemoryBudgetExceeded(
                f"{used / GIB:.2f} GiB in use on the fullest rank ({where}) > budget {self.budget / GIB:.2f} GiB"
            )

    def _check_forward(self, module: nn.Module, args: object) -> None:
        self._check("forward")

    def _hook_output(self, module: nn.Module, args: object, output: torch.Tensor) -> None:
        """A hook on the block's output runs in backward just before the block's own backward."""
        if self._active and isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._check_backward)

    def _check_backward(self, grad: torch.Tensor) -> None:
        self._check("backward")

    @contextlib.contextmanager
    def guarding(self) -> Iterator[None]:
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
