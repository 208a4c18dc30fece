"""Successive halving over a search's trials: read what each trial's run did (``reconcile``), then
decide which trials continue to the next rung and which stop (``decide``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hpcllm.collect.searches import SearchState, Trial, TrialState
from hpcllm.fsutil import read_json
from hpcllm.launch.manifest import RunState
from hpcllm.launch.runstatus import collect_status
from hpcllm.rundir import SUMMARY_STATUS_COMPLETED, RunDir

# --- reconcile: what did the runs do? ----------------------------------------------------------


def rung_score(run_dir: RunDir, metric: str, steps: int) -> float | None:
    """The run's ``metric`` after ``steps`` (None if not finite: a diverged trial).

    From summary.json when its last attempt ended there, else from the metrics.jsonl line of that
    step (a trial promoted since has a newer summary).
    """
    summary = read_json(run_dir.summary) or {}
    value = None
    if summary.get("status") == SUMMARY_STATUS_COMPLETED and summary.get("steps_completed") == steps:
        value = summary.get(metric)
    if value is None:
        key = "eval_loss" if metric == "eval_loss" else "loss"
        for line in run_dir.metrics.read_text().splitlines() if run_dir.metrics.exists() else []:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("step") == steps and key in record:
                value = record[key]
    return float(value) if value is not None and math.isfinite(float(value)) else None


def reconcile(state: SearchState, folder: Path) -> None:
    """Update every live trial from its run directory and manifest (refreshed from the scheduler).

    ``queued`` is the search's intent (submit this trial for its rung): it only becomes running or
    finished when the run shows it was submitted (an ``advance`` interrupted between submitting
    and saving), never failed by an earlier attempt's manifest.
    """
    statuses = {s.run_dir.run_id: s for s in collect_status(folder)} if folder.is_dir() else {}
    for trial in state.trials:
        if trial.state not in (TrialState.QUEUED, TrialState.RUNNING):
            continue
        target = state.rungs[trial.rung]
        status = statuses.get(trial.run_id)
        manifest = status.manifest if status else None
        if status is None or manifest is None or manifest.state in (RunState.RENDERED, RunState.SUBMIT_FAILED):
            trial.state = TrialState.QUEUED
        elif manifest.state.active:
            trial.state = TrialState.RUNNING
        elif manifest.state == RunState.COMPLETED:
            done = (read_json(status.run_dir.summary) or {}).get("steps_completed") or 0
            if done >= target:
                trial.scores[str(target)] = rung_score(status.run_dir, state.metric, target)
                trial.state, trial.reason = TrialState.FINISHED, None
            else:
                trial.state = TrialState.QUEUED  # an earlier rung; its promotion is not submitted yet
        elif trial.state == TrialState.RUNNING:
            trial.state = TrialState.FAILED
            trial.reason = manifest.reason or manifest.state.value


# --- decide: successive halving ------------------------------------------------------------------


def decide(state: SearchState, eta: int, asynchronous: bool) -> list[tuple[Trial, str]]:
    """Promote and stop trials rung by rung; returns (trial, "promoted"|"stopped") decisions.

    A rung is complete when every trial that entered it has finished or failed and the rung below
    is complete (no more trials can enter). Then the best ``max(1, n // eta)`` of its ``n`` go on,
    the others stop. ASHA (``asynchronous``) also promotes before that: a trial in the top
    ``m // eta`` of the ``m`` trials that finished the rung so far goes on at once. A trial whose
    metric is not finite (diverged) is never promoted.
    """
    decisions: list[tuple[Trial, str]] = []
    last = len(state.rungs) - 1
    for group in state.groups:
        below_complete = True
        for k in range(last):
            steps = state.rungs[k]
            entered = [t for t in group.trials if t.rung >= k]
            finished = [
                t
                for t in entered
                if t.rung > k or t.state in (TrialState.FINISHED, TrialState.STOPPED, TrialState.FAILED)
            ]
            complete = below_complete and len(finished) == len(entered)
            ranked = sorted(
                (t for t in finished if t.state != TrialState.FAILED), key=lambda t: (t.score_at(steps), t.index)
            )
            if complete:
                winners = ranked[: max(1, len(entered) // eta)]
            elif asynchronous:
                winners = ranked[: len(finished) // eta]
            else:
                winners = []
            for t in winners:
                if t.rung == k and t.state == TrialState.FINISHED and math.isfinite(t.score_at(steps)):
                    t.rung, t.state = k + 1, TrialState.QUEUED
                    decisions.append((t, "promoted"))
            if complete:
                for t in entered:
                    if t.rung == k and t.state == TrialState.FINISHED:
                        t.state = TrialState.STOPPED
                        t.reason = (
                            f"diverged at step {steps}"
                            if not math.isfinite(t.score_at(steps))
                            else f"not in the best {max(1, len(entered) // eta)} of {len(entered)} at step {steps}"
                        )
                        decisions.append((t, "stopped"))
            below_complete = complete
    return decisions
