"""The run-state machine: which state a run is in, who may move it, on what evidence, in one order.

Every writer of ``manifest.json`` (``hpcllm submit``, the local runner, the batch script's hooks,
``hpcllm cancel`` and ``hpcllm status``) changes a run's state through ``transition``, under the
run's lock, so two of them racing end in one state that matches what happened:

- ``completed`` is final. A cancel that arrives as the run completes finds a summary that says
  ``completed`` (training finished and saved its final checkpoint): the run is completed.
- An end is decided by ``decide_end`` from facts, in this order: the engine's ``summary.json``
  (completed), a cancel that the scheduler or the local runner confirmed, the scheduler's verdict,
  then the summary's other statuses, the exit code and the watchdog's verdict on a hang. A process
  that is still alive has no end yet.
- A transition to the state the run is already in changes nothing (idempotent); a transition the
  table below does not allow is refused (``False``) and the caller leaves the manifest as it is —
  another writer decided first, with better evidence.

    from \\ by      submit           job (runner, hooks)           cancel            status
    rendered        pending/failed*  -                             -                 -
    submit_failed   pending          -                             -                 -
    pending         -                running, failed, cancelled    cancelled         any end
    running         -                pending (requeue), any end    -                 any end
    failed          pending (retry)  -                             -                 -
    cancelled       pending (retry)  -                             -                 -
    completed       -                -                             -                 -

(* ``submit_failed``.) ``cancel`` records ``cancelled`` itself only for a run nothing runs for yet
(a pending job the scheduler confirmed it removed, a local run whose runner never started);
a running run is asked to stop (``cancel_requested``) and its own end records the cancellation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import Enum

from hpcllm.errors import BackendError, HpcllmError
from hpcllm.launch.locks import exclusive
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, manifest_lock, save_manifest
from hpcllm.rundir import EXIT_PREEMPTED, SUMMARY_STATUS_COMPLETED, SUMMARY_STATUS_PREEMPTED, RunDir


class Actor(str, Enum):
    SUBMIT = "submit"  # hpcllm submit (and --retry-failed)
    JOB = "job"  # the local runner, the batch script's hooks: the job itself
    CANCEL = "cancel"  # hpcllm cancel, after the scheduler/runner confirmed
    STATUS = "status"  # hpcllm status/submit recording an end the job could not write


_ENDS = frozenset({RunState.COMPLETED, RunState.FAILED, RunState.CANCELLED})
_S = RunState
ALLOWED: dict[Actor, dict[RunState, frozenset[RunState]]] = {
    Actor.SUBMIT: {
        _S.RENDERED: frozenset({_S.PENDING, _S.SUBMIT_FAILED, _S.RENDERED}),
        _S.SUBMIT_FAILED: frozenset({_S.PENDING, _S.RENDERED}),
        _S.FAILED: frozenset({_S.PENDING, _S.SUBMIT_FAILED}),
        _S.CANCELLED: frozenset({_S.PENDING, _S.SUBMIT_FAILED}),
    },
    Actor.JOB: {
        _S.PENDING: frozenset({_S.RUNNING, _S.FAILED, _S.CANCELLED, _S.COMPLETED}),
        _S.RUNNING: frozenset({_S.PENDING} | _ENDS),
    },
    Actor.CANCEL: {_S.PENDING: frozenset({_S.CANCELLED})},
    Actor.STATUS: {_S.PENDING: _ENDS, _S.RUNNING: _ENDS},
}


def allowed(current: RunState, to: RunState, by: Actor) -> bool:
    return to in ALLOWED[by].get(current, frozenset())


def transition(manifest: Manifest, to: RunState, by: Actor, reason: str | None = None) -> bool:
    """Move ``manifest`` to ``to`` if ``by`` may; True when it changed (the caller saves it).

    The caller holds the run's lock and read ``manifest`` under it. Same state: no change.
    """
    if manifest.state == to or not allowed(manifest.state, to, by):
        return False
    manifest.state = to
    if to in _ENDS:
        manifest.reason = None if to == RunState.COMPLETED else reason
        manifest.cancel_requested = None
    elif to == RunState.RUNNING:
        manifest.reason = None
    return True


@dataclass(frozen=True)
class Evidence:
    """What is known about a run's end. ``None`` = not known (not asked, or nothing written)."""

    summary_status: str | None = None  # summary.json "status", written by the engine's rank 0
    exit_code: int | None = None
    scheduler: RunState | None = None  # the scheduler's final verdict on the job
    cancel_requested: str | None = None  # manifest.cancel_requested: a confirmed `hpcllm cancel`
    alive: bool = False  # a process (or job) of the run still runs: it has no end yet
    hung: bool = False  # the engine's watchdog ended this attempt for making no progress (watchdog.json)


@dataclass(frozen=True)
class End:
    state: RunState | None  # None: not ended (still alive), or a preempted stop to requeue
    preempted: bool = False  # stopped on request with a checkpoint (the caller's budget decides)
    hung: bool = False  # ended by the watchdog: requeued without its nodes while the budget lasts, else failed


def decide_end(ev: Evidence) -> End:
    """The one order in which the facts of an end are weighed."""
    if ev.alive:
        return End(None)
    if ev.summary_status == SUMMARY_STATUS_COMPLETED:
        return End(RunState.COMPLETED)  # training finished and saved: whatever else happened
    if ev.cancel_requested is not None or ev.scheduler == RunState.CANCELLED:
        return End(RunState.CANCELLED)
    if ev.scheduler in (RunState.COMPLETED, RunState.FAILED) and ev.summary_status is None:
        return End(ev.scheduler)
    if ev.summary_status == SUMMARY_STATUS_PREEMPTED or ev.exit_code == EXIT_PREEMPTED:
        return End(None, preempted=True)
    if ev.hung:
        return End(None, hung=True)
    return End(RunState.FAILED)


@contextmanager
def observer_lock(run_dir: RunDir) -> Iterator[bool]:
    """The run's lock for an observer (``status``) recording an end: True when held, False at once
    when a writer holds it (the writer records; a status never waits). A results folder that cannot
    be locked (read-only) is False too: the observed state is shown, not recorded."""
    lock = exclusive(run_dir.lock_file, timeout=0, make_parents=False)
    try:
        lock.__enter__()
    except HpcllmError:
        yield False
        return
    try:
        yield True
    finally:
        lock.__exit__(None, None, None)


def save_observed(run_dir: RunDir, manifest: Manifest) -> None:
    """Save what an observer recorded; a write the file system refuses leaves the record to a later
    status (the state shown is the observed one either way)."""
    with suppress(HpcllmError, OSError):
        save_manifest(run_dir, manifest)


def request_cancel(run_dir: RunDir, manifest: Manifest, reason: str) -> Manifest:
    """Record that a cancel is on its way (the job's end hook must not requeue a run it sees stopping);
    the state stays until the scheduler or runner confirmed. BackendError for a run that is not active."""
    with manifest_lock(run_dir):
        fresh = load_manifest(run_dir) or manifest
        if not fresh.state.active:
            raise BackendError(f"run {fresh.run_id} is {fresh.state.value}, not pending or running")
        fresh.cancel_requested = reason
        save_manifest(run_dir, fresh)
    return fresh


def confirm_cancel(run_dir: RunDir) -> None:
    """The scheduler confirmed it removed a job that never started: the run is cancelled."""
    with manifest_lock(run_dir):
        fresh = load_manifest(run_dir)
        if fresh is not None and transition(fresh, RunState.CANCELLED, Actor.CANCEL, fresh.cancel_requested):
            save_manifest(run_dir, fresh)


def withdraw_cancel(run_dir: RunDir) -> None:
    """The cancel did not reach the job (the scheduler refused): nothing is recorded as cancelled."""
    with manifest_lock(run_dir):
        fresh = load_manifest(run_dir)
        if fresh is not None and fresh.state.active and fresh.cancel_requested:
            fresh.cancel_requested = None
            save_manifest(run_dir, fresh)
