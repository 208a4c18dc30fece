"""Hyper-parameter search as an orchestrator over ordinary runs: plan, reconcile, decide, submit.

A trial is a run directory like any other (``results/<exp>/<cluster>/t<NNN>-<run id>/``), rendered
and submitted through the cluster's backend (SLURM job arrays where the profile allows). The
search's own state is ``search.json`` beside the trials, written atomically, and every ``advance``
first re-reads what the runs did from their directories. So ``hpcllm search run`` can be killed at
any time (or the login shell can go away) and run again later: it picks up where the runs are.

Successive halving trains each trial in rungs of growing length (``min_steps·eta^k``, then
``train.steps``) and keeps the best 1/eta after each rung. Promotion never retrains: the trial's
``run.yaml`` gets more steps and the job resumes from the checkpoint its last rung ended with. The
learning-rate schedule of every rung spans the *final* length (``schedule.total_steps``), so a
promoted trial's curve continues exactly the curve an uninterrupted run would have drawn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hpcllm.config import grid as gridlib
from hpcllm.config.cluster import ClusterProfile, load_cluster
from hpcllm.config.experiment import Experiment, RunSpec, expand_experiment, load_experiment
from hpcllm.config.search import Domain, SearchConfig
from hpcllm.errors import ConfigError, HpcllmError, LockBusy
from hpcllm.fsutil import atomic_write_json, read_json
from hpcllm.launch import locks
from hpcllm.launch.backends import backend_for
from hpcllm.launch.manifest import RunState, load_manifest, now, save_manifest
from hpcllm.launch.orchestrate import collect_status, prepare_run
from hpcllm.rundir import SUMMARY_STATUS_COMPLETED, RunDir

STATE_NAME = "search.json"
LOCK_NAME = ".search.lock"
STATE_VERSION = 1


class TrialState(str, Enum):
    QUEUED = "queued"  # to be submitted for its rung (first time, or promoted)
    RUNNING = "running"  # submitted for its rung: pending or running in the scheduler
    FINISHED = "finished"  # completed its rung, score recorded (at the last rung: done)
    STOPPED = "stopped"  # halving dropped it after its rung
    FAILED = "failed"  # its run failed or was cancelled


class Trial(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    run_id: str
    params: dict[str, Any]
    rung: int = 0  # index into the search's rungs: the length this trial is (or was last) trained to
    state: TrialState = TrialState.QUEUED
    scores: dict[str, float | None] = Field(default_factory=dict)  # steps -> metric; None = not finite
    reason: str | None = None

    def score_at(self, steps: int) -> float:
        """The metric after ``steps`` (inf when diverged or unknown): what ranking sorts by."""
        value = self.scores.get(str(steps))
        return math.inf if value is None else value


class Group(BaseModel):
    """One grid point of the experiment, searched on its own."""

    model_config = ConfigDict(extra="forbid")

    label: str
    point: dict[str, Any]
    trials: list[Trial]


class SearchState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = STATE_VERSION
    experiment: str
    cluster: str
    method: str
    metric: str
    seed: int
    rungs: list[int]
    definition: str  # digest of the experiment: a search never continues under another definition
    groups: list[Group]
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)

    @property
    def trials(self) -> list[Trial]:
        return [t for g in self.groups for t in g.trials]

    def done(self, trial: Trial) -> bool:
        return trial.state in (TrialState.STOPPED, TrialState.FAILED) or (
            trial.state == TrialState.FINISHED and trial.rung == len(self.rungs) - 1
        )

    @property
    def complete(self) -> bool:
        return all(self.done(t) for t in self.trials)


# --- drawing trials ----------------------------------------------------------------------------


def _draw(domain: Domain, rng: np.random.Generator) -> Any:
    if domain.kind == "choice":
        assert domain.values is not None
        return domain.values[int(rng.integers(len(domain.values)))]
    assert domain.low is not None and domain.high is not None
    if domain.kind == "int":
        return int(rng.integers(int(domain.low), int(domain.high) + 1))
    if domain.kind == "uniform":
        value = rng.uniform(domain.low, domain.high)
    else:
        value = math.exp(rng.uniform(math.log(domain.low), math.log(domain.high)))
    return float(f"{value:.4g}")  # readable in names, tables and YAML; 4 digits is finer than any LR sweep


def draw_trials(search: SearchConfig) -> list[dict[str, Any]]:
    """The trials' parameter values: every combination (grid) or ``trials`` seeded distinct draws.

    Depends only on the search section (domains in the order written, ``seed``), so the same
    experiment gives the same trials on any machine and after any restart.
    """
    keys = list(search.parameters)
    if search.method == "grid":
        values = [search.parameters[k].finite_values or [] for k in keys]
        return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]
    assert search.trials is not None
    rng = np.random.default_rng(search.seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(1000 * search.trials):
        params = {k: _draw(search.parameters[k], rng) for k in keys}
        key = json.dumps(params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(params)
            if len(out) == search.trials:
                return out
    raise ConfigError(
        f"search.trials: could not draw {search.trials} distinct configurations from these "
        "parameters (rounded to 4 significant digits); widen the ranges or ask for fewer"
    )


# --- from the experiment to trial runs ---------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """The experiment's search, resolved against a cluster: groups, trials, rungs."""

    experiment: Experiment
    cluster: ClusterProfile
    source: str
    search: SearchConfig
    groups: list[RunSpec]  # one per grid point (the base config at full length)
    params: list[dict[str, Any]]
    rungs: list[int]
    definition: str

    def trial_spec(self, group: RunSpec, index: int, params: dict[str, Any], steps: int | None = None) -> RunSpec:
        """The run of trial ``index`` of ``group``, trained to ``steps`` (default: full length).

        Its run id comes from the trial at full length, so it names the same directory at every rung.
        """
        spec = self._resolve(group, index, params, steps)
        full = spec if steps in (None, self.rungs[-1]) else self._resolve(group, index, params, None)
        run_id = trial_run_id(index, full)
        return dataclasses.replace(
            spec,
            run_id=run_id,
            point={**group.point, **params},
            training=spec.training.model_copy(update={"run_id": run_id}),
        )

    def _resolve(self, group: RunSpec, index: int, params: dict[str, Any], steps: int | None) -> RunSpec:
        """The experiment's base + the group's grid point + the trial's values, validated like a grid point."""
        full = self.rungs[-1]
        doc: dict[str, Any] = dict(self.experiment.training)
        training_point = {k: v for k, v in group.point.items() if not k.startswith("resources.")}
        try:
            for key, value in {**training_point, **params}.items():
                doc = gridlib.set_dotted(doc, key, value)
            if self.search.method == "halving":
                doc = gridlib.set_dotted(doc, "train.steps", steps or full)
                doc = gridlib.set_dotted(doc, "schedule.total_steps", full)
        except ValueError as exc:
            raise ConfigError(f"{self.source}: search trial {index}: {exc}") from None
        # The group's resources are already resolved against the profile (a search varies no resources).
        derived = self.experiment.model_copy(
            update={
                "resources": group.resources,
                "training": doc,
                "grid": {},
                "zip": [],
                "where": [],
                "search": None,
            }
        )
        label = ", ".join(f"{k}={v}" for k, v in {**group.point, **params}.items())
        (spec,) = expand_experiment(derived, self.cluster, f"{self.source}: search trial {index} {{{label}}}")
        _check_trial(spec, self.search, self.source)
        return spec


def trial_run_id(index: int, full_spec: RunSpec) -> str:
    """``t<index>-<the run id of the trial at full length>``: stable across rungs, sorted by index."""
    return f"t{index:03d}-{full_spec.run_id}"


def _check_trial(spec: RunSpec, search: SearchConfig, source: str) -> None:
    t = spec.training
    if search.metric == "eval_loss" and (t.eval is None or not t.eval.at_end):
        raise ConfigError(
            f"{source}: search.metric: eval_loss needs an eval section with at_end: true in "
            "training (and data.holdout or eval.sources); or search final_loss"
        )
    if search.method == "halving" and not (t.checkpoint.at_end and t.checkpoint.resume):
        raise ConfigError(
            f"{source}: search.method halving resumes trials from the checkpoint at the end "
            "of each rung: training.checkpoint.at_end and resume must be true"
        )


def plan_search(experiment_path: Path, cluster_name: str) -> Plan:
    """Load the experiment and resolve its search; every trial config is validated here."""
    source = str(experiment_path)
    experiment = load_experiment(experiment_path)
    if experiment.search is None:
        raise ConfigError(
            f"{source}: search: this experiment has no search section; submit it with "
            "`hpcllm submit`, or add search: (see docs/search.md)"
        )
    search = experiment.search
    cluster = load_cluster(cluster_name)
    groups = expand_experiment(experiment.model_copy(update={"search": None}), cluster, source)
    if not groups:
        raise ConfigError(f"{source}: where: keeps no grid point to search")
    full = groups[0].training.train.steps
    if any(g.training.train.steps != full for g in groups):
        raise ConfigError(f"{source}: grid: train.steps must be the same in every group of a search")
    rungs = [full]
    if search.method == "halving":
        assert search.halving is not None
        if search.halving.min_steps >= full:
            raise ConfigError(
                f"{source}: search.halving.min_steps: {search.halving.min_steps} must be below "
                f"training.train.steps ({full}), the length of the last rung"
            )
        rungs = search.halving.rungs(full)
        if any(g.training.schedule.total_steps not in (None, full) for g in groups):
            raise ConfigError(
                f"{source}: schedule.total_steps: set by the search (to train.steps) in a halving search; leave it out"
            )
    plan = Plan(experiment, cluster, source, search, groups, draw_trials(search), rungs, _definition_digest(experiment))
    for group in groups:  # validate every trial now: a bad value fails before anything is submitted
        for index, params in enumerate(plan.params):
            plan.trial_spec(group, index, params, rungs[0])
    return plan


def _definition_digest(experiment: Experiment) -> str:
    doc = experiment.model_dump(mode="json", exclude={"description", "expected"})
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _group_label(spec: RunSpec) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.point.items()) or "(base)"


def new_state(plan: Plan) -> SearchState:
    groups = []
    for g in plan.groups:
        trials = [Trial(index=i, run_id=plan.trial_spec(g, i, p).run_id, params=p) for i, p in enumerate(plan.params)]
        groups.append(Group(label=_group_label(g), point=g.point, trials=trials))
    s = plan.search
    return SearchState(
        experiment=plan.experiment.name,
        cluster=plan.cluster.name,
        method=s.method,
        metric=s.metric,
        seed=s.seed,
        rungs=plan.rungs,
        definition=plan.definition,
        groups=groups,
    )


# --- the state file ----------------------------------------------------------------------------


def search_folder(results_root: Path, experiment: str, cluster: str) -> Path:
    """Where the trials and ``search.json`` live (the experiment's results folder for the cluster)."""
    return Path(results_root) / experiment / cluster


def load_state(folder: Path) -> SearchState | None:
    try:
        data = read_json(folder / STATE_NAME)
        return None if data is None else SearchState.model_validate(data)
    except (ValueError, ValidationError) as exc:
        raise HpcllmError(
            f"{folder / STATE_NAME}: not a valid search state ({str(exc).splitlines()[0]}); "
            "move it away to start the search over"
        ) from None


def save_state(folder: Path, state: SearchState) -> None:
    state.updated_at = now()
    atomic_write_json(folder / STATE_NAME, state.model_dump(mode="json"))


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """One ``search run`` at a time per search (two would submit the same trial twice)."""
    try:
        with locks.exclusive(folder / LOCK_NAME, timeout=0):
            yield
    except LockBusy as exc:
        raise HpcllmError(f"{folder}: another `hpcllm search run` is advancing this search right now ({exc})") from None


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


def best_trial(state: SearchState, group: Group) -> Trial | None:
    """The best trial so far: lowest metric at the longest rung any trial of the group finished."""
    for steps in reversed(state.rungs):
        scored = [t for t in group.trials if math.isfinite(t.score_at(steps))]
        if scored:
            return min(scored, key=lambda t: (t.score_at(steps), t.index))
    return None


# --- advance: one pass of the search -----------------------------------------------------------


@dataclasses.dataclass
class Step:
    """What one ``advance`` did."""

    state: SearchState
    folder: Path
    submitted: list[Trial] = dataclasses.field(default_factory=list)
    decisions: list[tuple[Trial, str]] = dataclasses.field(default_factory=list)
    rendered_only: bool = False


def advance(
    experiment_path: Path,
    cluster_name: str,
    results_root: Path,
    *,
    account: str | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
) -> Step:
    """Reconcile the trials with their runs, promote/stop, submit what is due; safe to repeat.

    ``retry_failed``: submit failed trials again for their rung (they resume from their last
    checkpoint, like any resubmitted run).
    """
    plan = plan_search(experiment_path, cluster_name)
    folder = search_folder(results_root, plan.experiment.name, plan.cluster.name)
    if dry_run:
        return _render_first_rung(plan, folder, account)
    account = plan.cluster.resolve_account(account)
    with exclusive(folder):
        state = load_state(folder)
        if state is None:
            state = new_state(plan)
        elif state.definition != plan.definition:
            raise HpcllmError(
                f"{folder / STATE_NAME}: this search was started from another version of {experiment_path} "
                "(its search, training, grid or resources changed); restore the experiment, or move "
                f"{folder} away to start a new search"
            )
        if retry_failed:
            for trial in state.trials:
                if trial.state == TrialState.FAILED:
                    trial.state, trial.reason = TrialState.QUEUED, None
        reconcile(state, folder)
        step = Step(state, folder)
        if plan.search.method == "halving":
            assert plan.search.halving is not None
            step.decisions = decide(state, plan.search.halving.eta, plan.search.halving.asynchronous)
        save_state(folder, state)  # the decisions are recorded before anything is submitted
        step.submitted = _submit_queued(plan, state, folder, account)
        save_state(folder, state)
    return step


def _trial_specs(plan: Plan, state: SearchState, trials: list[Trial]) -> list[RunSpec]:
    by_label = {_group_label(g): g for g in plan.groups}
    wanted = {id(t) for t in trials}
    out = []
    for group in state.groups:
        for t in group.trials:
            if id(t) in wanted:
                out.append(plan.trial_spec(by_label[group.label], t.index, t.params, state.rungs[t.rung]))
    return out


def _submit_queued(plan: Plan, state: SearchState, folder: Path, account: str | None) -> list[Trial]:
    queued = [t for t in state.trials if t.state == TrialState.QUEUED]
    if not queued:
        return []
    backend = backend_for(plan.cluster)
    python = sys.executable if plan.cluster.scheduler == "local" else None
    items = []
    for spec in _trial_specs(plan, state, queued):
        run_dir = RunDir(folder / spec.run_id)
        manifest = prepare_run(
            spec,
            run_dir,
            load_manifest(run_dir),
            experiment=plan.experiment,
            cluster=plan.cluster,
            account=account,
            python=python,
        )
        items.append((run_dir, manifest))
    backend.submit_all(items)  # SLURM: one job array per group of equal resources
    for trial in queued:
        trial.state, trial.reason = TrialState.RUNNING, None
    return queued


def _render_first_rung(plan: Plan, folder: Path, account: str | None) -> Step:
    """``--dry-run``: the trials' run directories as their first rung would run, nothing submitted."""
    try:
        account = plan.cluster.resolve_account(account)
    except ConfigError:
        account = None
    state = new_state(plan)
    python = sys.executable if plan.cluster.scheduler == "local" else None
    for spec in _trial_specs(plan, state, state.trials):
        run_dir = RunDir(folder / spec.run_id)
        manifest = load_manifest(run_dir)
        if manifest is not None and manifest.state != RunState.RENDERED:
            continue  # a real trial of this search: leave it alone
        save_manifest(
            run_dir,
            prepare_run(
                spec,
                run_dir,
                manifest,
                experiment=plan.experiment,
                cluster=plan.cluster,
                account=account,
                python=python,
            ),
        )
    return Step(state, folder, rendered_only=True)


# --- status (read-only) ------------------------------------------------------------------------


def search_status(experiment_path: Path, cluster_name: str, results_root: Path) -> SearchState:
    """The search as it stands, reconciled in memory with the runs (search.json is not written)."""
    experiment = load_experiment(experiment_path)
    cluster = load_cluster(cluster_name)
    folder = search_folder(results_root, experiment.name, cluster.name)
    state = load_state(folder)
    if state is None:
        raise HpcllmError(
            f"{folder / STATE_NAME}: no search started yet; start it with "
            f"`hpcllm search run {experiment_path} --cluster {cluster_name}`"
        )
    reconcile(state, folder)
    return state


def find_searches(root: Path) -> list[tuple[Path, SearchState]]:
    """Every search state below ``root`` (for ``hpcllm collect --best``)."""
    root = Path(root)
    paths = [root / STATE_NAME] if (root / STATE_NAME).is_file() else sorted(root.rglob(STATE_NAME))
    return [(p.parent, state) for p in paths if (state := load_state(p.parent)) is not None]
