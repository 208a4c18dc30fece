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
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpcllm.collect.searches import STATE_NAME, Group, SearchState, Trial, TrialState, load_state
from hpcllm.config import grid as gridlib
from hpcllm.config.cluster import ClusterProfile, load_cluster
from hpcllm.config.experiment import Experiment, RunSpec, load_experiment
from hpcllm.config.search import SearchConfig
from hpcllm.errors import ConfigError, HpcllmError, LockBusy
from hpcllm.fsutil import atomic_write_json
from hpcllm.launch import locks
from hpcllm.launch.backends import backend_for
from hpcllm.launch.manifest import RunState, load_manifest, save_manifest
from hpcllm.launch.orchestrate import prepare_run
from hpcllm.plan.expand import expand_experiment
from hpcllm.rundir import RunDir, now
from hpcllm.tune.draw import draw_trials
from hpcllm.tune.halving import decide, reconcile

LOCK_NAME = ".search.lock"


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
