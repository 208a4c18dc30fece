"""Hooks the SLURM batch script calls around the engine.

``python -m hpcllm.launch.jobhooks start|end|requeue-failed RUN_DIR``.

Why the batch script, and not ``hpcllm status``, records restarts: only the job itself knows when
it starts again, on which nodes, and why it stopped. SLURM forgets finished jobs after MinJobAge
and keeps no reason for a requeue, so the manifest is the lasting record (one ``Restart`` per
requeue, with the node list and the last step the run had reached).

- ``start``: at the top of every attempt. A ``SLURM_RESTART_COUNT`` higher than the restarts this
  job has recorded means SLURM requeued it without the script's help (a node failed or was set
  DOWN): record that, with the nodes of the previous attempt that SLURM now reports failed; those
  go into ``exclude_nodes`` so a resubmission avoids them. Past the retry budget the run is marked
  failed and the script exits before launching anything (exit 3).
- ``end``: after the launcher exits, decide from ``summary.json`` and the budget; prints
  ``requeue``, ``cancel`` (the run was cancelled: the script ends its job as CANCELLED once the
  engine has checkpointed) or ``exit N`` for the script to act on, and records the outcome.
- ``requeue-failed``: ``scontrol requeue`` itself failed; the run is marked failed with that reason.

Torch-free and quick: it runs on the batch node before and after every attempt.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hpcllm.errors import HpcllmError
from hpcllm.fsutil import read_json
from hpcllm.launch.hangs import requeue_after_hang, this_attempts_verdict
from hpcllm.launch.jobenergy import record_job_energy
from hpcllm.launch.manifest import Manifest, Restart, RunState, load_manifest, manifest_lock, save_manifest
from hpcllm.launch.progress import last_step, summary_error
from hpcllm.launch.runstate import Actor, Evidence, allowed, decide_end, transition
from hpcllm.launch.slurmcmd import failed_nodes, hostnames, run_slurm
from hpcllm.rundir import EXIT_PREEMPTED, SUMMARY_STATUS_COMPLETED, SUMMARY_STATUS_PREEMPTED, RunDir, now

EXIT_NOT_STARTED = 3  # `start` refused to launch (budget used, or the run was cancelled)

STOP_REASONS = {
    "USR1": "time limit near (USR1)",
    "TERM": "terminated by the scheduler (TERM: preemption or time limit)",
}


@dataclass(frozen=True)
class JobContext:
    """What one attempt of a job knows about itself (from SLURM's environment)."""

    run_dir: RunDir
    job_id: str
    nodelist: str
    restart_count: int

    @classmethod
    def from_env(cls, run_dir: Path) -> JobContext:
        array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        return cls(
            run_dir=RunDir(run_dir),
            # An array task is "<array>_<task>" in the manifest and in squeue; SLURM_JOB_ID is its
            # own number, which squeue does not print.
            job_id=f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", ""),
            nodelist=os.environ.get("SLURM_JOB_NODELIST", ""),
            restart_count=int(os.environ.get("SLURM_RESTART_COUNT") or 0),  # unset on a first run
        )


T = TypeVar("T")


def _under_run_lock(hook: Callable[..., T]) -> Callable[..., T]:
    """Run a hook from reading the manifest to saving it under the run's lock: ``hpcllm status``
    or ``cancel`` on a login node may be changing the same manifest at that moment."""

    @functools.wraps(hook)
    def locked(ctx: JobContext, *args: object) -> T:
        with manifest_lock(ctx.run_dir):
            return hook(ctx, *args)

    return locked


def _manifest(ctx: JobContext) -> Manifest:
    manifest = load_manifest(ctx.run_dir)
    if manifest is None:
        raise HpcllmError(f"{ctx.run_dir.manifest}: missing; was this job submitted with `hpcllm submit`?")
    return manifest


@_under_run_lock
def on_start(ctx: JobContext) -> bool:
    """Record this attempt (and any restart SLURM did on its own); False = do not launch."""
    manifest = _manifest(ctx)
    if manifest.state == RunState.CANCELLED or manifest.cancel_requested:
        if transition(manifest, RunState.CANCELLED, Actor.JOB, manifest.cancel_requested):
            save_manifest(ctx.run_dir, manifest)
        print(f"[hpcllm] run {manifest.run_id} was cancelled: not launching")
        return False
    if manifest.state != RunState.RUNNING and not allowed(manifest.state, RunState.RUNNING, Actor.JOB):
        # Another writer ended the run (completed, failed): this job is not the run's attempt.
        print(f"[hpcllm] run {manifest.run_id} is {manifest.state.value}: not launching")
        return False
    recorded = [r for r in manifest.restarts if r.job_id == ctx.job_id]
    previous = manifest.nodes if ctx.restart_count and manifest.job_id == ctx.job_id else None
    bad = failed_nodes(hostnames(previous)) if previous else []
    if ctx.restart_count > len(recorded):
        cause = f"node failure ({','.join(bad)})" if bad else "node failure or a requeue outside hpcllm"
        for _ in range(ctx.restart_count - len(recorded)):
            manifest.restarts.append(
                Restart(
                    time=now(),
                    reason=f"requeued by SLURM after {cause}",
                    nodes=previous,
                    last_step=last_step(ctx.run_dir),
                    job_id=ctx.job_id,
                    failed_nodes=bad,
                )
            )
    elif bad and recorded and not recorded[-1].failed_nodes:
        # A node went down and SLURM's TERM let the engine stop cleanly, so the end hook already
        # recorded this restart as a TERM: name the real cause.
        recorded[-1].failed_nodes = bad
        recorded[-1].reason = f"requeued by SLURM after node failure ({','.join(bad)})"
    manifest.exclude_nodes += [n for n in bad if n not in manifest.exclude_nodes]
    if ctx.restart_count > manifest.max_restarts:
        last = manifest.restarts[-1].reason if manifest.restarts else "a requeue"
        reason = f"restart budget exhausted ({manifest.max_restarts}); last restart: {last}"
        transition(manifest, RunState.FAILED, Actor.JOB, reason)
        save_manifest(ctx.run_dir, manifest)
        print(f"[hpcllm] {manifest.reason}: not launching")
        return False
    # The engine writes summary.json on every exit it survives; one left by an earlier attempt
    # must not be read as this attempt's outcome (its facts are in the restart record).
    ctx.run_dir.summary.unlink(missing_ok=True)
    transition(manifest, RunState.RUNNING, Actor.JOB)  # or already running: SLURM requeued it itself
    manifest.job_id = ctx.job_id
    manifest.nodes = ctx.nodelist
    manifest.exit_code = None
    manifest.reason = None
    save_manifest(ctx.run_dir, manifest)
    return True


@_under_run_lock
def on_end(ctx: JobContext, rc: int, stop_signal: str) -> str:
    """Decide what the batch script does now: ``requeue``, ``cancel`` or ``exit N``; records the outcome.

    The end is the run-state machine's (``runstate.decide_end``): a completed summary first (a cancel
    racing the end does not undo a finished run), then a cancel, a stop on request (requeued while the
    budget lasts), a hang the watchdog ended (requeued without its nodes), else a failure.
    """
    manifest = _manifest(ctx)
    summary = read_json(ctx.run_dir.summary) or {}
    status = summary.get("status")
    manifest.exit_code = rc
    record_job_energy(manifest, ctx.job_id)
    verdict = this_attempts_verdict(ctx.run_dir, ctx.restart_count)
    cancel = None if status == SUMMARY_STATUS_COMPLETED else _cancel_reason(ctx, manifest, stop_signal)
    end = decide_end(Evidence(status, exit_code=rc, cancel_requested=cancel, hung=verdict is not None))
    if end.state == RunState.COMPLETED:
        transition(manifest, RunState.COMPLETED, Actor.JOB)
        save_manifest(ctx.run_dir, manifest)
        return "exit 0"
    if end.state == RunState.CANCELLED:
        reason = cancel or "cancelled (scancel)"
        if status == SUMMARY_STATUS_PREEMPTED:
            reason += f"; checkpoint at step {summary.get('steps_completed')}"
        transition(manifest, RunState.CANCELLED, Actor.JOB, reason)
        manifest.reason = reason
        save_manifest(ctx.run_dir, manifest)
        return "cancel"
    if end.preempted:
        return _requeue_or_fail(ctx, manifest, STOP_REASONS.get(stop_signal, "the engine stopped on request"))
    if (
        end.hung
        and verdict is not None
        and requeue_after_hang(
            ctx.run_dir, manifest, verdict, job_id=ctx.job_id, nodelist=ctx.nodelist, restart_count=ctx.restart_count
        )
    ):
        save_manifest(ctx.run_dir, manifest)  # the watchdog ended a hang: again, without its nodes
        return "requeue"
    error = summary_error(ctx.run_dir)  # e.g. a diverged run: failed, not requeued, and why
    reason = (
        f"engine exited with code {rc} (summary status: {status or 'none written'})"
        f"{f': {error}' if error else ''}; see {ctx.run_dir.log_file(ctx.job_id).name}"
    )
    transition(manifest, RunState.FAILED, Actor.JOB, reason)
    save_manifest(ctx.run_dir, manifest)
    return f"exit {rc if rc != 0 else 1}"


def _cancel_reason(ctx: JobContext, manifest: Manifest, stop_signal: str) -> str | None:
    """Why the run was cancelled, None when it was not: `hpcllm cancel` records its request before
    signalling; a plain scancel shows in the job state."""
    if manifest.cancel_requested:
        return manifest.cancel_requested
    if manifest.state == RunState.CANCELLED:
        return manifest.reason or "cancelled (scancel)"
    return "cancelled (scancel)" if stop_signal == "TERM" and _cancelled(ctx) else None


def _requeue_or_fail(ctx: JobContext, manifest: Manifest, why: str) -> str:
    """The engine stopped with a checkpoint: requeue while the restart budget lasts, else fail."""
    if ctx.restart_count < manifest.max_restarts and transition(manifest, RunState.PENDING, Actor.JOB):
        manifest.restarts.append(
            Restart(time=now(), reason=why, nodes=ctx.nodelist, last_step=last_step(ctx.run_dir), job_id=ctx.job_id)
        )
        save_manifest(ctx.run_dir, manifest)
        return "requeue"
    transition(manifest, RunState.FAILED, Actor.JOB, f"restart budget exhausted ({manifest.max_restarts}) after {why}")
    save_manifest(ctx.run_dir, manifest)
    return f"exit {EXIT_PREEMPTED}"


@_under_run_lock
def on_requeue_failed(ctx: JobContext, error: str) -> None:
    """``scontrol requeue`` refused: the restart recorded by ``on_end`` never happened, unless SLURM
    is requeueing the job itself (a node failed while the engine stopped on its TERM)."""
    manifest = _manifest(ctx)
    # "Job is pending execution" (ESLURM_JOB_PENDING): SLURM already requeued it; the restart stands.
    if "pending execution" in error or _slurm_state(ctx.job_id) in ("PENDING", "REQUEUED", "REQUEUE_FED"):
        return
    if manifest.restarts and manifest.restarts[-1].job_id == ctx.job_id:
        manifest.restarts.pop()  # the requeue it records never happened
    reason = f"could not requeue: {error or 'scontrol requeue failed'}"
    if not transition(manifest, RunState.FAILED, Actor.JOB, reason):
        print(f"[hpcllm] {reason}; the run stays {manifest.state.value} (recorded by another writer)")
    save_manifest(ctx.run_dir, manifest)


def _slurm_state(job_id: str) -> str:
    """The job's state word in squeue (``RUNNING``, ``CANCELLED``...), "" if SLURM does not know it."""
    proc = run_slurm(["squeue", "--noheader", "--states=all", f"--jobs={job_id}", "--format=%T"], check=False)
    return proc.stdout.strip().split("\n")[0] if proc.returncode == 0 else ""


# slurmstepd's line in the job's log when the job is cancelled; a time limit, preemption or node
# failure adds " DUE TO <reason>" before the closing stars, a plain scancel adds nothing.
_PLAIN_CANCEL = re.compile(r"\*\*\* JOB (\d+) ON \S+ CANCELLED AT \S+ \*\*\*\s*$")


def _cancelled(ctx: JobContext) -> bool:
    """True when the TERM came from a user's ``scancel`` (not a time limit, preemption or node failure).

    While its processes end, a cancelled job is only COMPLETING to squeue and scontrol, so SLURM's
    state says CANCELLED too late for this hook; slurmstepd's line in the job's log says it at once.
    """
    if _slurm_state(ctx.job_id).startswith("CANCELLED"):
        return True
    job = os.environ.get("SLURM_JOB_ID", ctx.job_id)  # an array task's own number, as slurmstepd writes it
    try:
        with open(ctx.run_dir.log_file(ctx.job_id), errors="replace") as fh:
            return any((m := _PLAIN_CANCEL.search(line)) and m.group(1) == job for line in fh)
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcllm.launch.jobhooks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="hook", required=True)
    sub.add_parser("start").add_argument("run_dir", type=Path)
    end = sub.add_parser("end")
    end.add_argument("run_dir", type=Path)
    end.add_argument("--rc", type=int, required=True, help="the launcher's exit code")
    end.add_argument("--signal", default="", help="USR1/TERM if the batch script trapped one")
    failed = sub.add_parser("requeue-failed")
    failed.add_argument("run_dir", type=Path)
    failed.add_argument("--error", default="")
    args = parser.parse_args(argv)
    ctx = JobContext.from_env(args.run_dir)
    try:
        if args.hook == "start":
            return 0 if on_start(ctx) else EXIT_NOT_STARTED
        if args.hook == "end":
            print(on_end(ctx, args.rc, args.signal))
            return 0
        on_requeue_failed(ctx, args.error)
        return 0
    except HpcllmError as exc:
        print(f"[hpcllm] jobhooks {args.hook}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
