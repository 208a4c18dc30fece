"""Run jobs on this machine with no scheduler, one at a time, with a SLURM-like environment.

``submit`` writes the manifest and starts ``python -m hpcllm.launch.local_runner`` detached (its own
session, so it outlives the CLI). Runners queue on a lock file in the results folder, so a grid runs
point after point instead of fighting over the cores; while it waits a run is "pending".

Liveness asks the processes, never a file: the manifest records the runner's and the job's process
identities (``hpcllm.launch.procid``), and a run is alive while either of them is. A runner killed
while its engine trains leaves a run that is still running, not failed, and that nobody starts again.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcllm.errors import BackendError
from hpcllm.fsutil import read_json
from hpcllm.launch import procid
from hpcllm.launch.backends.base import Backend
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, manifest_lock, save_manifest
from hpcllm.launch.runstate import Actor, Evidence, decide_end, observer_lock, save_observed, transition
from hpcllm.rundir import RunDir

QUEUE_LOCK_NAME = ".hpcllm-local-queue.lock"
CANCEL_REASON = "cancelled with `hpcllm cancel`"
RUNNER_START_S = 60.0  # a manifest saved "pending" without its runner, for at most this long


def _age_s(manifest: Manifest) -> float:
    try:
        return time.time() - dt.datetime.fromisoformat(manifest.updated_at).timestamp()
    except ValueError:
        return RUNNER_START_S


def queue_lock_path(run_dir: RunDir) -> Path:
    """One queue per results root (results/<exp>/<cluster>/<run> -> results/)."""
    return run_dir.path.absolute().parents[2] / QUEUE_LOCK_NAME


def pid_alive(pid: int | None) -> bool:
    """Liveness of a bare pid, for manifests written before process identities were recorded."""
    if pid is None or not procid.is_pid(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process (tests start runners directly) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def runner_alive(manifest: Manifest) -> bool:
    if manifest.runner is not None:
        return procid.alive(manifest.runner)
    return pid_alive(manifest.runner_pid)


def observed_end(run_dir: RunDir, manifest: Manifest) -> tuple[RunState, str | None] | None:
    """The end of an active run whose processes are all gone, from its files; None while it lives."""
    if not manifest.state.active or runner_alive(manifest) or procid.group_alive(manifest.job_process):
        return None
    if manifest.runner is None and manifest.runner_pid is None:
        # This version records the runner with the "pending" it saves; a manifest of an earlier one
        # may be saved a moment before its runner starts. Past that moment, its submit was cut short.
        if _age_s(manifest) < RUNNER_START_S:
            return None
        return RunState.FAILED, "submit was interrupted before the local runner started; submit again"
    summary = read_json(run_dir.summary) or {}
    end = decide_end(Evidence(summary_status=summary.get("status"), cancel_requested=manifest.cancel_requested))
    if end.state == RunState.CANCELLED:
        return RunState.CANCELLED, manifest.cancel_requested or "cancelled"
    if end.state == RunState.COMPLETED:
        return RunState.COMPLETED, None
    if end.preempted:
        return RunState.FAILED, "local runner exited after the engine stopped with a checkpoint; resubmit to resume"
    if manifest.runner is not None and manifest.job_process is None:  # held at its start gate: never ran
        return RunState.FAILED, "local runner exited before its job started (nothing ran); submit again"
    return RunState.FAILED, "local runner exited without recording a result"


class LocalBackend(Backend):
    name = "local"

    def submit(self, run_dir: RunDir, manifest: Manifest) -> str:
        job_id = f"{int(time.time() * 1000) % 10**10}{os.getpid() % 100:02d}"
        runner_log = run_dir.path / "local-runner.log"
        # The runner starts by taking this run's lock, so it reads the manifest only once it names
        # the runner. Interrupted before the save, the manifest keeps its old state and the runner,
        # finding its run not pending, exits: never a "pending" run without a runner.
        with manifest_lock(run_dir), open(runner_log, "ab") as log:
            manifest.mark_submitted(job_id)
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hpcllm.launch.local_runner",
                    str(run_dir.path.absolute()),
                    str(queue_lock_path(run_dir)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=os.getcwd(),
            )
            manifest.runner = procid.identify(proc.pid)
            manifest.runner_pid = proc.pid
            save_manifest(run_dir, manifest)
        return job_id

    def refresh(self, items: list[tuple[RunDir, Manifest]]) -> dict[str, RunState]:
        states = {}
        for run_dir, manifest in items:
            fresh = load_manifest(run_dir) or manifest
            end = observed_end(run_dir, fresh)
            if end is not None:
                _record(run_dir)
                fresh = load_manifest(run_dir) or fresh
                states[fresh.run_id] = end[0] if fresh.state.active else fresh.state
            else:
                states[fresh.run_id] = fresh.state
        return states

    def cancel(self, run_dir: RunDir, manifest: Manifest) -> None:
        """Ask the runner (or, if it died, the job's process group) to stop; the run's own end
        records ``cancelled``. A run with nothing alive is recorded cancelled at once."""
        with manifest_lock(run_dir):
            fresh = load_manifest(run_dir) or manifest
            if not fresh.state.active:
                raise BackendError(f"run {fresh.run_id} is {fresh.state.value}, not pending or running")
            fresh.cancel_requested = CANCEL_REASON
            if not runner_alive(fresh) and not procid.group_alive(fresh.job_process):
                # Nothing of the run is alive (a runner not started yet, or dead with its job): no
                # signal to confirm; its end is decided from its files now.
                if fresh.state == RunState.PENDING:
                    end: tuple[RunState, str | None] = (RunState.CANCELLED, "cancelled before it started")
                else:
                    end = observed_end(run_dir, fresh) or (RunState.CANCELLED, CANCEL_REASON)
                if transition(fresh, end[0], Actor.STATUS, end[1]):
                    save_manifest(run_dir, fresh)
                return
            save_manifest(run_dir, fresh)
        if runner_alive(fresh):
            why_not = (
                procid.signal_process(fresh.runner, signal.SIGTERM)
                if fresh.runner is not None
                else f"runner pid {fresh.runner_pid} was recorded without its identity: not signalled"
            )
        else:
            why_not = procid.signal_group(fresh.job_process, signal.SIGTERM)
        if why_not is None:
            return
        with manifest_lock(run_dir):  # not confirmed: the run is not recorded as cancelled
            current = load_manifest(run_dir) or fresh
            if not current.state.active:
                return  # it ended on its own meanwhile; that end stands
            current.cancel_requested = None
            save_manifest(run_dir, current)
        raise BackendError(f"run {fresh.run_id}: {why_not}")


def _record(run_dir: RunDir) -> None:
    """Record an observed end if the run's lock is free now: a status never waits for a writer, and
    one that cannot write (a read-only results folder) still shows the observed state."""
    with observer_lock(run_dir) as held:
        fresh = load_manifest(run_dir) if held else None
        end = observed_end(run_dir, fresh) if fresh is not None else None
        if fresh is not None and end is not None and transition(fresh, end[0], Actor.STATUS, end[1]):
            save_observed(run_dir, fresh)
