"""Run jobs on this machine with no scheduler, one at a time, with a SLURM-like environment.

``submit`` writes the manifest and starts ``python -m hpcllm.launch.local_runner`` detached (its own
session, so it outlives the CLI). Runners queue on a lock file in the results folder, so a grid runs
point after point instead of fighting over the cores; while it waits a run is "pending".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from hpcllm.errors import BackendError
from hpcllm.launch.backends.base import Backend
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, manifest_lock, save_manifest
from hpcllm.rundir import RunDir

QUEUE_LOCK_NAME = ".hpcllm-local-queue.lock"


def queue_lock_path(run_dir: RunDir) -> Path:
    """One queue per results root (results/<exp>/<cluster>/<run> -> results/)."""
    return run_dir.path.absolute().parents[2] / QUEUE_LOCK_NAME


def pid_alive(pid: int | None) -> bool:
    if not pid:
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


class LocalBackend(Backend):
    name = "local"

    def submit(self, run_dir: RunDir, manifest: Manifest) -> str:
        job_id = f"{int(time.time() * 1000) % 10**10}{os.getpid() % 100:02d}"
        with manifest_lock(run_dir):
            manifest.mark_submitted(job_id)
            save_manifest(run_dir, manifest)
        runner_log = run_dir.path / "local-runner.log"
        with open(runner_log, "ab") as log:
            subprocess.Popen(
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
        return job_id

    def refresh(self, items: list[tuple[RunDir, Manifest]]) -> dict[str, RunState]:
        states = {}
        for run_dir, manifest in items:
            fresh = load_manifest(run_dir) or manifest
            if self._runner_vanished(fresh):
                # Decided again under the run's lock: the runner may have recorded its result
                # just now, which a "failed" decided from the older copy must not overwrite.
                with manifest_lock(run_dir):
                    fresh = load_manifest(run_dir) or manifest
                    if self._runner_vanished(fresh):
                        fresh.state = RunState.FAILED
                        fresh.reason = "local runner exited without recording a result"
                        save_manifest(run_dir, fresh)
            states[fresh.run_id] = fresh.state
        return states

    @staticmethod
    def _runner_vanished(manifest: Manifest) -> bool:
        """A runner that exited without recording an end (killed -9, machine reboot). A pending run
        without a runner pid yet is one whose runner is still starting."""
        return manifest.state.active and manifest.runner_pid is not None and not pid_alive(manifest.runner_pid)

    def cancel(self, run_dir: RunDir, manifest: Manifest) -> None:
        with manifest_lock(run_dir):
            fresh = load_manifest(run_dir) or manifest
            if not fresh.state.active:
                raise BackendError(f"run {fresh.run_id} is {fresh.state.value}, not pending or running")
            if fresh.runner_pid is None or not pid_alive(fresh.runner_pid):
                # Submitted but the runner never started (or died): just record the cancellation.
                fresh.state = RunState.CANCELLED
                fresh.reason = "cancelled before it started"
                save_manifest(run_dir, fresh)
                return
        os.kill(fresh.runner_pid, signal.SIGTERM)
