"""Stop requests: turn SIGUSR1/SIGTERM or a STOP file into a clean "checkpoint and exit" at a step boundary.

Why a flag and not work in the handler: a signal arrives in the middle of a forward pass, an
all-reduce or a DCP write. Saving from the handler would deadlock (the other ranks are inside a
collective) or write a torn state. So the handler only sets a flag; at each step boundary every rank
calls :meth:`StopRequest.should_stop`, an all-reduce (max) of the local flags, so that all ranks
agree in the same step even if the signal reached only some of them (SLURM signals the batch shell,
torchrun forwards SIGTERM to its workers at slightly different times).

The batch script's ``trap`` on SIGUSR1 writes ``RunDir.stop_file``; only global rank 0 looks at that
file (one ``stat`` per step, not one per rank: thousands of ranks polling Lustre would load the
metadata server), the all-reduce carries its answer to every rank. The engine never deletes the
file; the batch script deletes it before the next launch.

What the train loop does on stop (docs/checkpoints.md): finish the current optimizer step, save a
forced checkpoint on all ranks, write ``summary.json`` with status ``preempted``, exit with
``hpcllm.rundir.EXIT_PREEMPTED``. torchrun reports any non-zero worker exit as its own exit code 1,
so the batch script learns "preempted" from ``summary.json``, not from the exit code.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import torch
import torch.distributed as dist

from hpcllm.engine.distributed import rank
from hpcllm.rundir import RunDir

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any rank (all-reduce max); plain ``flag`` without a group.

    A collective: every rank of the default group must call it at the same point.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = _collective_device()
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _collective_device() -> torch.device:
    """NCCL reduces only CUDA tensors; gloo (and a 'cpu:gloo,cuda:nccl' group) takes CPU tensors."""
    backend = str(dist.get_backend())
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class StopRequest:
    """Records a stop request (signal or STOP file) and lets all ranks agree on it at a step boundary."""

    def __init__(self, run_dir: RunDir) -> None:
        self.run_dir = run_dir
        self._event = threading.Event()
        self.reason: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Install SIGUSR1/SIGTERM handlers that only set the flag (main thread only, as Python requires).

        Without a handler, SIGUSR1's default action kills the process and no checkpoint is written.
        """
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        """Restore the handlers that were there before :meth:`install` (for tests and embedding)."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        """Ask for a stop on this rank (what the signal handler does); the first reason is kept."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    def local_flag(self) -> bool:
        """This rank's view: a signal arrived here, or (rank 0 only) the STOP file exists."""
        if not self._event.is_set() and rank() == 0 and self.run_dir.stop_file.exists():
            self.request(f"STOP file {self.run_dir.stop_file}")
        return self._event.is_set()

    def should_stop(self) -> bool:
        """Collective: True on every rank when any rank was asked to stop. Call on all ranks each step."""
        stop = any_rank(self.local_flag())
        if stop and self.reason is None:
            self.reason = "another rank was asked to stop"
        return stop
