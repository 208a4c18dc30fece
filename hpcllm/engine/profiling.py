"""``profile:``: record a few optimizer steps with the PyTorch profiler, one Chrome trace per rank.

The train loop calls ``before_step(n)`` and ``after_step(n)`` around step ``n``; the profiler runs
from ``start_step`` to ``start_step + steps - 1`` and marks each step as a ``hpcllm.step <n>`` range,
so a trace viewer (chrome://tracing, Perfetto, TensorBoard's profiler plugin) shows where each
step's time goes, collectives included. With ``memory: true`` tensor allocations are recorded too,
and on CUDA the caching allocator's history is dumped as a snapshot (pytorch.org/memory_viz).

A run restarted after the profiled steps does not profile them again; one stopped in the middle
writes what it recorded so far (the file name gives the steps it covers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from hpcllm.config.profiling import ProfileConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.fsutil import write_in_folder
from hpcllm.rundir import RunDir

console = Console(highlight=False, soft_wrap=True)

STEP_LABEL = "hpcllm.step {}"  # the range name of step n in the trace
MEMORY_HISTORY_ENTRIES = 100_000  # allocator events kept for the CUDA snapshot


class StepProfiler:
    """Does nothing without a ``profile`` section; otherwise profiles its steps on this rank."""

    def __init__(self, cfg: ProfileConfig | None, run_dir: RunDir, env: DistEnv) -> None:
        self.cfg, self.run_dir, self.env = cfg, run_dir, env
        self._prof: torch.profiler.profile | None = None
        self._range: Any = None
        self._first = self._last = 0

    def before_step(self, step: int) -> None:
        """Called before optimizer step ``step`` (1-based) runs."""
        if self.cfg is None:
            return
        if self._prof is None and step == self.cfg.start_step:
            self._start(step)
        if self._prof is not None:
            self._range = torch.profiler.record_function(STEP_LABEL.format(step))
            self._range.__enter__()

    def after_step(self, step: int) -> None:
        """Called after optimizer step ``step`` completed."""
        if self._prof is None:
            return
        self._range.__exit__(None, None, None)
        self._range = None
        self._last = step
        if self.cfg is not None and step >= self.cfg.end_step:
            self._stop()

    def close(self) -> None:
        """Write a trace still being recorded (a run stopped inside the profiled steps)."""
        if self._prof is None:
            return
        if self._range is not None:  # an exception inside the step
            self._range.__exit__(None, None, None)
            self._range = None
        if self._last >= self._first:
            self._stop()
        else:
            self._prof.stop()
            self._prof = None

    # -------------------------------------------------------------------------------------------
    def _start(self, step: int) -> None:
        assert self.cfg is not None
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.env.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
            if self.cfg.memory:
                torch.cuda.memory._record_memory_history(max_entries=MEMORY_HISTORY_ENTRIES)
        self._prof = torch.profiler.profile(
            activities=activities,
            record_shapes=self.cfg.record_shapes,
            profile_memory=self.cfg.memory,
            with_stack=self.cfg.with_stack,
        )
        self._prof.start()
        self._first, self._last = step, step - 1

    def _stop(self) -> None:
        assert self._prof is not None
        if self.env.device.type == "cuda":
            torch.cuda.synchronize(self.env.device)
        self._prof.stop()
        trace = self.run_dir.profile_trace(self.env.rank, self._first, self._last)
        prof = self._prof
        write_in_folder(self.run_dir.path, trace, lambda: _write_atomically(trace, prof.export_chrome_trace))
        written = [trace]
        if self.cfg is not None and self.cfg.memory and self.env.device.type == "cuda":
            snapshot = self.run_dir.memory_snapshot(self.env.rank, self._first, self._last)
            dump = torch.cuda.memory._dump_snapshot
            write_in_folder(self.run_dir.path, snapshot, lambda: _write_atomically(snapshot, dump))
            torch.cuda.memory._record_memory_history(enabled=None)
            written.append(snapshot)
        self._prof = None
        if self.env.is_main:
            console.print(
                f"profiler: steps {self._first}-{self._last} written to {written[0].parent}/ "
                f"(one {' + '.join(p.suffix for p in written)} per rank)"
            )


def _write_atomically(path: Path, write: Any) -> None:
    """``write(tmp_path)`` then rename: a reader never sees half a trace."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(str(tmp))
    os.replace(tmp, path)
