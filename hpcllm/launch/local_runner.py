"""The local backend's job runner: ``python -m hpcllm.launch.local_runner RUN_DIR QUEUE_LOCK``.

Plays the scheduler for one run on this machine: waits its turn on the queue lock, runs
``job.sbatch`` with the variables a SLURM job would see, enforces the time limit the way SLURM does
(USR1 ``signal_before_end`` seconds early, then TERM/KILL at the limit), requeues a preempted run
while the restart budget lasts, and records every transition in the manifest through the run-state
machine (``hpcllm.launch.runstate``). It records the job's process group with its identity, so that
``status`` and ``cancel`` can tell whether the job still runs after the runner itself died.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hpcllm.config.cluster import parse_slurm_time
from hpcllm.fsutil import read_json
from hpcllm.launch import procid
from hpcllm.launch.locks import exclusive
from hpcllm.launch.manifest import (
    Manifest,
    Restart,
    RunState,
    load_manifest,
    manifest_lock,
    save_manifest,
    update_manifest,
)
from hpcllm.launch.progress import last_step, summary_error
from hpcllm.launch.runstate import Actor, Evidence, decide_end, transition
from hpcllm.rundir import RunDir, now

KILL_GRACE_S = 30  # like SLURM's KillWait: TERM, then KILL after this many seconds

# The job waits here until the runner recorded it (pid and start time stay the same across exec):
# a runner killed before that leaves nothing running that nobody recorded, since its child then
# reads end-of-file and exits. Once let go, the job's stdin is /dev/null, as before.
START_GATE = 'IFS= read -r go && [ "$go" = go ] && exec bash "$0" </dev/null'


class _Cancelled(Exception):
    pass


class Runner:
    def __init__(self, run_dir: RunDir, lock_path: Path, signal_before_end_s: int) -> None:
        self.run_dir = run_dir
        self.lock_path = lock_path
        self.signal_before_end_s = signal_before_end_s
        self.child: subprocess.Popen[bytes] | None = None
        self.cancelled = False
        self.launched = False  # an attempt was started (a cancel after it is no longer "while pending")

    def _manifest(self) -> Manifest:
        manifest = load_manifest(self.run_dir)
        if manifest is None:
            raise SystemExit(f"{self.run_dir.manifest}: missing")
        return manifest

    def _on_term(self, signum: int, frame: object) -> None:
        self.cancelled = True
        if self.child is None:
            raise _Cancelled()
        _signal_group(self.child, signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        # Every manifest change below is a read-modify-write under the run's lock: `hpcllm status`
        # and `cancel` may write the same manifest at the same moment.
        with manifest_lock(self.run_dir):
            manifest = self._manifest()
            if manifest.state != RunState.PENDING:
                return 1  # cancelled before this runner started, or a submit interrupted before it recorded us
            if procid.group_alive(manifest.job_process):
                # At most one live attempt: an earlier runner died but its job still trains. That
                # job is the run's attempt; status and cancel follow it through its process group.
                transition(manifest, RunState.RUNNING, Actor.JOB)
                manifest.reason = self._still_running(manifest)
                save_manifest(self.run_dir, manifest)
                return 1
            manifest.runner = procid.identify(os.getpid())
            manifest.runner_pid = os.getpid()
            save_manifest(self.run_dir, manifest)
        try:
            with exclusive(self.lock_path, timeout=None):  # wait for our turn: "pending"
                return self._run_attempts()
        except _Cancelled:
            return self._finish(RunState.CANCELLED, None, "cancelled" if self.launched else "cancelled while pending")

    @staticmethod
    def _still_running(manifest: Manifest) -> str:
        job = manifest.job_process
        return f"an earlier attempt's job (process group {job.pgid if job else '?'}) still runs: not started again"

    def _run_attempts(self) -> int:
        first = self._manifest()
        # The budget is per submission: a run resubmitted with --retry-failed starts afresh.
        restart = sum(1 for r in first.restarts if r.job_id == first.job_id)
        while True:
            with manifest_lock(self.run_dir):
                manifest = self._manifest()
                if manifest.cancel_requested or not manifest.state.active:
                    return self._finish(RunState.CANCELLED, None, manifest.cancel_requested)
                transition(manifest, RunState.RUNNING, Actor.JOB)
                save_manifest(self.run_dir, manifest)
            # An earlier attempt's summary must not be read as this attempt's outcome.
            self.run_dir.summary.unlink(missing_ok=True)
            rc, timed_out = self._attempt(manifest, restart)
            status = (read_json(self.run_dir.summary) or {}).get("status")
            cancel = self._manifest().cancel_requested or ("cancelled" if self.cancelled else None)
            end = decide_end(Evidence(summary_status=status, exit_code=rc, cancel_requested=cancel))
            if end.state == RunState.COMPLETED:
                return self._finish(RunState.COMPLETED, rc, None)
            if end.state == RunState.CANCELLED:
                return self._finish(RunState.CANCELLED, rc, cancel)
            reason = "time limit" if timed_out else f"exit code {rc}"
            if end.preempted:
                if restart < manifest.max_restarts:
                    with update_manifest(self.run_dir) as fresh:  # not the copy read before the attempt
                        fresh.restarts.append(
                            Restart(
                                time=now(),
                                reason=reason,
                                nodes=socket.gethostname(),
                                last_step=last_step(self.run_dir),
                                job_id=fresh.job_id,
                            )
                        )
                    restart += 1
                    continue
                return self._finish(
                    RunState.FAILED, rc, f"restart budget exhausted ({manifest.max_restarts}) after {reason}"
                )
            error = summary_error(self.run_dir)  # e.g. a diverged run: not requeued, says why
            return self._finish(
                RunState.FAILED,
                rc,
                f"{reason}{f': {error}' if error else ''}; see {self.run_dir.log_file(manifest.job_id or '')}",
            )

    def _attempt(self, manifest: Manifest, restart: int) -> tuple[int, bool]:
        env = dict(os.environ)
        env.update(
            SLURM_JOB_ID=str(manifest.job_id),
            SLURM_JOB_NAME=f"hpcllm-{manifest.experiment}-{manifest.run_id}",
            SLURM_NNODES="1",
            SLURM_JOB_NUM_NODES="1",
            SLURM_JOB_NODELIST=socket.gethostname(),
            SLURM_SUBMIT_DIR=os.getcwd(),
            # The interpreter running hpcllm has hpcllm[train]: let the script's `python` be it.
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        )
        env.pop("SLURM_RESTART_COUNT", None)
        if restart:
            env["SLURM_RESTART_COUNT"] = str(restart)
        log_path = self.run_dir.log_file(manifest.job_id or "local")
        with open(log_path, "ab") as log:
            self.child = subprocess.Popen(
                ["bash", "-c", START_GATE, str(self.run_dir.job_script)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE,
                start_new_session=True,
                cwd=self.run_dir.path,
                env=env,
            )
            self.launched = True
            self._record_job()
            self._open_gate()
            timed_out = self._wait_with_limit(manifest.time_limit)
            rc = self.child.wait()
            self.child = None
        return rc, timed_out

    def _wait_with_limit(self, time_limit: str | None) -> bool:
        """Wait for the job; USR1 before the limit, TERM at it, KILL after the grace period."""
        assert self.child is not None
        if time_limit is None:
            self.child.wait()
            return False
        limit = parse_slurm_time(time_limit)
        start = time.monotonic()
        deadlines = [
            (max(limit - self.signal_before_end_s, 0), signal.SIGUSR1),
            (limit, signal.SIGTERM),
            (limit + KILL_GRACE_S, signal.SIGKILL),
        ]
        timed_out = False
        for deadline, sig in deadlines:
            try:
                self.child.wait(timeout=max(deadline - (time.monotonic() - start), 0))
                return timed_out
            except subprocess.TimeoutExpired:
                # USR1 goes to the batch shell only (like --signal=B:); TERM/KILL to the whole job.
                if sig == signal.SIGUSR1:
                    self.child.send_signal(sig)
                else:
                    _signal_group(self.child, sig)
                timed_out = True
        self.child.wait()
        return timed_out

    def _record_job(self) -> None:
        """Name the job's process group in the manifest: liveness and cancel go by it if this runner dies.
        The job is still held at its start gate: one that cannot be recorded (the results folder turned
        read-only) is let go without "go", so it exits without running anything."""
        assert self.child is not None and self.child.stdin is not None
        try:
            with update_manifest(self.run_dir) as manifest:
                manifest.job_process = procid.identify(self.child.pid)
        except BaseException:
            self.child.stdin.close()
            self.child.wait()
            raise

    def _open_gate(self) -> None:
        """Let the recorded job run (unless a cancel came first: then it exits at its gate). A gate
        that is already closed (the job was signalled meanwhile) leaves the end to the exit status."""
        assert self.child is not None and self.child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            if not self.cancelled:
                self.child.stdin.write(b"go\n")
            self.child.stdin.close()

    def _finish(self, state: RunState, rc: int | None, reason: str | None) -> int:
        with update_manifest(self.run_dir) as manifest:
            transition(manifest, state, Actor.JOB, reason or state.value)
            manifest.exit_code = rc
        return 0 if manifest.state == RunState.COMPLETED else 1


def _signal_group(child: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the job's group. The child is this runner's and not yet reaped, so its pid (the
    group's id, ``start_new_session``) cannot name another process."""
    if child.pid > 1:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)


def main(argv: list[str]) -> int:
    run_dir, lock_path = RunDir(Path(argv[0])), Path(argv[1])
    manifest = load_manifest(run_dir)
    signal_before_end_s = manifest.signal_before_end_s if manifest else None
    return Runner(run_dir, lock_path, signal_before_end_s or 60).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
