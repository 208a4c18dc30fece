"""Hang watchdog: every rank's heartbeat, and a run that stops making progress ended within minutes.

Why in every rank's process, as a thread: a hang in a collective (NCCL cannot say which rank it
waits for) or a stalled loader leaves the main thread blocked in C with the GIL released, so a
thread of the same process can still see it, dump that process's stacks and end it. A monitor
outside the ranks could not dump their stacks across nodes without signalling torchrun's agents,
whose default action on a signal is to die and orphan the workers.

What each rank does (docs/run-contract.md, "Hangs"):

- ``step_started``/``step_ended`` (two calls in the train loop) record progress in memory; at most
  once per ``watchdog.heartbeat_every_s`` the rank replaces ``heartbeat/rank<R>.json`` (step, step
  time, node, pid) atomically. A write per step would load the parallel file system's metadata
  server at thousands of ranks.
- a daemon thread checks every few seconds whether the rank has started or ended a step in the
  last ``watchdog.timeout_s``. When not, it writes ``watchdog/stacks-rank<R>.txt`` (faulthandler,
  every thread; plus ``py-spy dump --native`` where py-spy is installed), the flight recorder's
  dump where this torch keeps one, and ``watchdog/rank<R>.json``: where this rank is (last step
  ended, inside the next one or not).
- rank 0 also reads every heartbeat each ``heartbeat_every_s`` and flags stragglers
  (hpcllm.engine.stragglers): ranks whose GEMM probe is consistently below the median rank's.
- on a hang, rank 0 waits for the other ranks' reports (a grace of at most a minute), names the rank(s)
  behind the others, writes ``watchdog.json`` (reason, ranks, nodes, step) and a failed
  ``summary.json``; every rank then exits. The batch script's end hook requeues the run without
  the named nodes (hpcllm.launch.hangs).

SIGUSR2 to a rank writes its stacks to the job log at any time (faulthandler works without the GIL).

Fault injection (tests, and a dry run of the whole path on a real site):
``HPCLLM_FAULT_STOP_RANK_AT=<rank>:<step>`` makes that rank block, forever, just before it starts
that step, on the run's first attempt only (a requeued attempt shows the recovery). Off unless set.
"""

from __future__ import annotations

import faulthandler
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcllm.config.watchdog import WatchdogConfig
from hpcllm.engine.distributed import DistEnv
from hpcllm.engine.nodeprobe import gemm_tflops, node_name
from hpcllm.engine.stragglers import StragglerTracker
from hpcllm.errors import ConfigError
from hpcllm.fsutil import read_json, write_in_folder, write_json_in
from hpcllm.rundir import RunDir, describe_stragglers

FAULT_STOP_ENV = "HPCLLM_FAULT_STOP_RANK_AT"
EXIT_HUNG = 124  # as timeout(1): the run was ended for making no progress
STEP_TIME_WINDOW = 20  # step times kept for the heartbeat's median


def fault_stop_step(rank: int, restart: int) -> int | None:
    """The step ``HPCLLM_FAULT_STOP_RANK_AT`` stops this rank at, or None (first attempt only)."""
    raw = os.environ.get(FAULT_STOP_ENV, "").strip()
    if not raw or restart:
        return None
    try:
        fault_rank, step = (int(part) for part in raw.split(":"))
    except ValueError:
        raise ConfigError(f"environment {FAULT_STOP_ENV}={raw!r}: expected <rank>:<step>, e.g. 1:5") from None
    return step if fault_rank == rank else None


def position(completed: int, in_step: bool) -> float:
    """How far a rank got: its last ended step, plus a half when it is inside the next one."""
    return completed + (0.5 if in_step else 0.0)


def name_culprits(reports: dict[int, dict[str, Any]], world_size: int) -> list[int]:
    """The ranks behind the others: those that did not report at all (dead, or stuck holding the
    GIL), else those at the lowest position when not all are at the same one; [] when all ranks
    are at the same place (a hang inside one collective, that the stacks must explain)."""
    missing = [r for r in range(world_size) if r not in reports]
    if missing:
        return missing
    where = {r: position(rep["completed_step"], rep["in_step"]) for r, rep in reports.items()}
    low = min(where.values())
    return [] if low == max(where.values()) else sorted(r for r, p in where.items() if p == low)


class Watchdog:
    """One rank's heartbeat and hang monitor; ``on_hang(error)`` writes the failed summary (rank 0)."""

    def __init__(
        self,
        cfg: WatchdogConfig,
        run_dir: RunDir,
        env: DistEnv,
        *,
        restart: int,
        on_hang: Callable[[str], None],
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.rank = env.rank
        self.world_size = env.world_size
        self.local_rank = env.local_rank
        self.device = env.device
        self.restart = restart
        self.on_hang = on_hang
        self.exit_process = exit_process
        self.node = node_name()
        self.stop_at = fault_stop_step(env.rank, restart)
        self.poll_s = max(0.2, min(5.0, cfg.timeout_s / 10))
        self.grace_s = min(60.0, max(5.0, cfg.timeout_s / 2))
        self._progress = time.monotonic()
        self._started = 0
        self._completed = 0
        self._times: deque[float] = deque(maxlen=STEP_TIME_WINDOW)
        self._last_write = 0.0
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.verdict: dict[str, Any] | None = None
        self.stragglers = StragglerTracker(cfg.straggler_margin, cfg.straggler_checks)
        self._last_straggler_check = 0.0

    # --- the train loop's two calls ----------------------------------------------------------------

    def start(self, step: int) -> None:
        """Arm at the loop's start (``step``: the steps already done, after a resume)."""
        self._started = self._completed = step
        self._progress = time.monotonic()
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True, chain=False)
        self._write_heartbeat()
        if self.cfg.enabled:
            self._thread = threading.Thread(target=self._watch, name="hpcllm-watchdog", daemon=True)
            self._thread.start()

    def step_started(self, step: int) -> None:
        """``step`` (1-based) is about to run. The fault injection blocks here."""
        if self.stop_at == step:
            print(f"[hpcllm] fault injection ({FAULT_STOP_ENV}): rank {self.rank} stops at step {step}", flush=True)
            threading.Event().wait()  # forever, GIL released: as a rank stuck in a loader or a collective
        self._started = step
        self._progress = time.monotonic()

    def step_ended(self, step: int, step_time_s: float) -> None:
        self._completed = step
        self._times.append(step_time_s)
        self._progress = now = time.monotonic()
        if now - self._last_write >= self.cfg.heartbeat_every_s:
            self._write_heartbeat()

    def close(self) -> None:
        """Disarm (the loop ended or failed): nothing after the last step counts as a hang."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=self.poll_s + 1)
        faulthandler.unregister(signal.SIGUSR2)

    # --- files ---------------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "local_rank": self.local_rank,
            "node": self.node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "restart": self.restart,
        }

    def _write_heartbeat(self) -> None:
        beat = {
            **self._identity(),
            "step": self._completed,
            "step_time_s": self._times[-1] if self._times else None,
            "median_step_time_s": statistics.median(self._times) if self._times else None,
            "probe_tflops": gemm_tflops(self.device, small=True, iters=3),  # this rank alone: see stragglers.py
            "time": time.time(),
        }
        self._last_write = time.monotonic()
        write_json_in(self.run_dir.path, self.run_dir.heartbeat(self.rank), beat, durable=False)

    # --- the monitor thread ----------------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._closed.wait(self.poll_s):
            idle = time.monotonic() - self._progress
            if idle > self.cfg.timeout_s:
                self._on_stall(idle)
                return
            if self.rank == 0 and time.monotonic() - self._last_straggler_check >= self.cfg.heartbeat_every_s:
                self.check_stragglers()

    def check_stragglers(self) -> None:
        """Rank 0: read every heartbeat; when the flagged ranks change, say so and rewrite stragglers.json."""
        self._last_straggler_check = time.monotonic()
        beats = {r: hb for r in range(self.world_size) if (hb := read_json(self.run_dir.heartbeat(r)))}
        beats = {r: hb for r, hb in beats.items() if hb.get("restart") == self.restart}  # this attempt's
        if self.stragglers.update(beats):
            record = self.stragglers.record()
            write_json_in(self.run_dir.path, self.run_dir.stragglers, record, durable=False)
            print(f"[hpcllm] stragglers: {describe_stragglers(record['ranks'])}", file=sys.stderr, flush=True)

    def summary_fields(self) -> dict[str, Any]:
        """summary.json's ``stragglers`` (rank 0; the ranks flagged in this attempt)."""
        return {"stragglers": self.stragglers.record()["ranks"]} if self.rank == 0 else {}

    def _on_stall(self, idle_s: float) -> None:
        detected = time.time()
        folder = self.run_dir.watchdog_dir
        stacks = folder / f"stacks-rank{self.rank}.txt"

        def write_stacks() -> None:
            with open(stacks, "w") as fh:
                fh.write(
                    f"# rank {self.rank} on {self.node} (pid {os.getpid()}): no progress for {idle_s:.0f} s; "
                    f"last step ended: {self._completed}; inside step {self._completed + 1}: "
                    f"{'yes' if self._started > self._completed else 'no'}\n"
                )
                fh.flush()
                faulthandler.dump_traceback(fh, all_threads=True)

        if write_in_folder(self.run_dir.path, stacks, write_stacks):
            write_in_folder(self.run_dir.path, stacks, lambda: _append_py_spy(stacks))
        flight = _flight_recorder_dump()
        if flight:
            pickle = folder / f"flight-rank{self.rank}.pkl"
            write_in_folder(self.run_dir.path, pickle, lambda: pickle.write_bytes(flight))
        report = {
            **self._identity(),
            "completed_step": self._completed,
            "in_step": self._started > self._completed,
            "idle_s": idle_s,
            "last_progress_time": detected - idle_s,
            "detected_time": detected,
            "stacks": stacks.name,
        }
        write_json_in(self.run_dir.path, folder / f"rank{self.rank}.json", report, durable=False)
        if self.rank == 0:
            self._decide(report)
        else:
            self._await_verdict()
        self.exit_process(EXIT_HUNG)

    def _await_verdict(self) -> None:
        deadline = time.monotonic() + self.grace_s + 30
        while time.monotonic() < deadline:
            verdict = read_json(self.run_dir.watchdog_verdict)
            if verdict is not None and verdict.get("restart") == self.restart:
                return
            time.sleep(self.poll_s)

    def _decide(self, own: dict[str, Any]) -> None:
        """Rank 0: gather the reports (up to the grace), name the culprits, write the verdict."""
        folder = self.run_dir.watchdog_dir
        deadline = time.monotonic() + self.grace_s
        reports = {0: own}
        while True:
            for r in range(self.world_size):
                rep = None if r in reports else read_json(folder / f"rank{r}.json")
                if rep is not None and rep.get("restart") == self.restart:  # not an earlier attempt's
                    reports[r] = rep
            if len(reports) == self.world_size or time.monotonic() >= deadline:
                break
            time.sleep(min(self.poll_s, 1.0))
        heartbeats = {r: hb for r in range(self.world_size) if (hb := read_json(self.run_dir.heartbeat(r)))}
        culprits = name_culprits(reports, self.world_size)
        node_of = {r: (reports.get(r) or heartbeats.get(r) or {}).get("node") for r in culprits}
        step = min(position(rep["completed_step"], rep["in_step"]) for rep in reports.values())
        stalled_step = int(step) + 1  # the step the run never finished
        if culprits:
            who = ", ".join(f"rank {r} on {node_of[r] or 'an unknown node'}" for r in culprits)
            error = (
                f"watchdog: no progress for {self.cfg.timeout_s:g} s at step {stalled_step}: {who} behind the others"
            )
        else:
            error = (
                f"watchdog: no progress for {self.cfg.timeout_s:g} s at step {stalled_step}: every rank inside it "
                f"(a hang in a collective; see {folder.name}/stacks-rank*.txt)"
            )
        self.verdict = {
            "reason": error,
            "step": stalled_step,
            "ranks": culprits,
            "nodes": sorted({n for n in node_of.values() if n}),
            "timeout_s": self.cfg.timeout_s,
            "last_progress_time": min(rep["last_progress_time"] for rep in reports.values()),
            "detected_time": own["detected_time"],
            "reported_ranks": sorted(reports),
            "world_size": self.world_size,
            "restart": self.restart,
            "job_id": os.environ.get("SLURM_JOB_ID"),
        }
        self.on_hang(error)
        write_json_in(self.run_dir.path, self.run_dir.watchdog_verdict, self.verdict)
        print(f"[hpcllm] {error}; stacks in {folder}", file=sys.stderr, flush=True)


def _append_py_spy(stacks: Path) -> None:
    """Native and Python frames of this process from py-spy, where installed (best effort: it
    needs ptrace rights on its own parent, which a hardened kernel may refuse)."""
    exe = shutil.which("py-spy")
    if exe is None:
        return
    try:
        proc = subprocess.run(
            [exe, "dump", "--native", "--pid", str(os.getpid())], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        out = f"py-spy failed: {exc}\n"
    else:
        out = proc.stdout + proc.stderr
    with open(stacks, "a") as fh:
        fh.write("\n# py-spy dump --native\n" + out)


def _flight_recorder_dump() -> bytes | None:
    """PyTorch's flight recorder (the last collectives of every process group), where this build
    keeps one: it records only with ``TORCH_FR_BUFFER_SIZE`` (or ``TORCH_NCCL_TRACE_BUFFER_SIZE``) set."""
    if not (os.environ.get("TORCH_FR_BUFFER_SIZE") or os.environ.get("TORCH_NCCL_TRACE_BUFFER_SIZE")):
        return None
    try:
        from torch._C._distributed_c10d import _dump_fr_trace  # type: ignore[attr-defined]  # private
    except ImportError:
        return None
    try:
        return bytes(_dump_fr_trace())
    except RuntimeError:
        return None
