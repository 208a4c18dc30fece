"""The commands' logic, torch-free: submit a grid, show states, cancel, find runs.

Each function returns data; ``hpcllm.cli`` prints it. Resubmitting an experiment is safe: a run's id
is derived from its resolved config, completed and queued runs are skipped, failed runs are only
resubmitted when asked.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from hpcllm.config.cluster import AccountMissing, ClusterProfile, clusters_dir, load_cluster
from hpcllm.config.experiment import Experiment, RunSpec, load_experiment
from hpcllm.errors import BackendError, ConfigError, HpcllmError
from hpcllm.fsutil import atomic_write_text
from hpcllm.launch.backends import backend_for
from hpcllm.launch.backends.base import Backend
from hpcllm.launch.inputs import refuse_missing_inputs, unset_on_login
from hpcllm.launch.leftovers import prepare_folder
from hpcllm.launch.locks import exclusive
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, manifest_lock, save_manifest
from hpcllm.launch.memcheck import Unfit, split_by_fit
from hpcllm.launch.probeindex import measured_largest_fits
from hpcllm.launch.render import render_job
from hpcllm.launch.runstate import Actor, transition
from hpcllm.launch.storage import Room, StorageError, StorageNeed, check_storage, storage_need
from hpcllm.plan.expand import expand_experiment
from hpcllm.plan.qos import RefusedPoint
from hpcllm.plan.references import references_for_point
from hpcllm.rundir import DEFAULT_RESULTS, RunDir, check_results_folder, results_from_env, submit_lock
from hpcllm.sitepaths import expand_path

# The default results root when neither --results nor the profile's paths.results names one.


# libyaml's emitter (same text as yaml.safe_dump, ~10x faster) where PyYAML was built with it.
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


@dataclass
class PlannedRun:
    spec: RunSpec
    run_dir: RunDir
    action: str  # submitted | rendered | skipped
    detail: str = ""
    job_id: str | None = None


@dataclass
class SubmitResult:
    cluster: ClusterProfile
    runs: list[PlannedRun] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    results_root: Path = Path("results")
    refused: list[RefusedPoint] = field(default_factory=list)  # points no QoS of the profile admits
    storage: StorageNeed | None = None  # what the submitted runs' checkpoints take
    room: Room | None = None  # the tightest free space where they go, when it could be measured
    unfit: list[Unfit] = field(default_factory=list)  # points left out: over the GPU memory


def run_config_text(spec: RunSpec) -> str:
    header = (
        f"# Resolved training config of run {spec.run_id} ({spec.experiment} on {spec.cluster}).\n"
        "# Written by `hpcllm submit`; the engine's only input (see docs/run-contract.md).\n"
    )
    doc = spec.training.model_dump(mode="json")
    return header + "".join(_yaml_section(key, json.dumps(value)) for key, value in doc.items())


@lru_cache(maxsize=4096)
def _yaml_section(key: str, value_json: str) -> str:
    """One top-level key of run.yaml. Most sections (model, data, checkpoint, ...) are the same for
    every point of a grid, so each distinct one is turned into YAML once (PyYAML's representer is
    the slow part of rendering a large grid); the text equals yaml.safe_dump of the whole mapping."""
    return yaml.dump({key: json.loads(value_json)}, Dumper=_YAML_DUMPER, sort_keys=False)


def submit_experiment(
    experiment_path: Path,
    cluster_name: str,
    results_root: Path | None = None,
    *,
    account: str | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    after: list[str] | None = None,
    memory_check: bool = True,
    resources: dict[str, Any] | None = None,
) -> SubmitResult:
    """``after``: job ids every run waits for (afterok); ``resources``: overrides from --preflight/--spare-nodes.

    ``results_root`` defaults to ``$HPCLLM_RESULTS``, else the profile's ``paths.results``, else
    ``./results``. Points no QoS admits are listed in ``refused``; the checkpoints of the runs to
    submit must fit the results root's free space and quota (StorageError otherwise).
    ``memory_check``: leave out the points whose memory estimate exceeds the profile's GPU memory
    and that no probe of the experiment ran at their micro-batch size (``SubmitResult.unfit`` says why).
    """
    experiment = load_experiment(experiment_path)
    if resources:
        experiment = experiment.model_copy(update={"resources": experiment.resources.model_copy(update=resources)})
    if experiment.search is not None:
        raise ConfigError(
            f"{experiment_path}: search: this experiment is a hyper-parameter search; run it "
            f"with `hpcllm search run {experiment_path} --cluster {cluster_name}`"
        )
    cluster = load_cluster(cluster_name)
    result = SubmitResult(cluster)
    account = resolve_account(cluster, account, dry_run, result.warnings)
    results_root = result.results_root = _results_root(results_root, cluster, account, dry_run, result.warnings)
    specs = expand_experiment(experiment, cluster, str(experiment_path), account=account, refused=result.refused)
    result.warnings += unset_on_login(specs)
    specs = refuse_missing_inputs(specs, cluster, after=bool(after), refused=result.refused, warnings=result.warnings)
    if memory_check:
        measured = measured_largest_fits(results_root, experiment.name, cluster.name)
        specs, result.unfit = split_by_fit(specs, cluster, measured)
        if cluster.gpu_memory_gib is None:
            result.warnings.append(f"cluster {cluster.name!r} states no gpu_memory_gib: memory not checked")
    return submit_runs(
        experiment,
        cluster,
        specs,
        results_root,
        account=account,
        dry_run=dry_run,
        retry_failed=retry_failed,
        after=after,
        result=result,
    )


def resolve_account(cluster: ClusterProfile, account: str | None, dry_run: bool, warnings: list[str]) -> str | None:
    """The account to charge (``ClusterProfile.resolve_account``); a dry run renders without one."""
    try:
        return cluster.resolve_account(account)
    except AccountMissing:  # only a missing one: an account that is no folder name is refused even then
        if not dry_run:
            raise
        warnings.append(f"no account for {cluster.name!r}: rendered without --account")
        return None


def submit_runs(
    experiment: Experiment,
    cluster: ClusterProfile,
    specs: list[RunSpec],
    results_root: Path,
    *,
    account: str | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    after: list[str] | None = None,
    result: SubmitResult | None = None,
) -> SubmitResult:
    """Render, write and submit ``specs``, points of ``experiment`` on ``cluster``: the one path from a
    RunSpec to a queued job (``hpcllm submit`` and ``hpcllm explore-batch`` both use it). ``account``
    is the resolved one (``resolve_account``); ``result`` collects into a caller's result."""
    if after and cluster.scheduler != "slurm":
        raise ConfigError(f"--after: cluster {cluster.name!r} is {cluster.scheduler!r}; dependencies need SLURM")
    if after and not all(a.isdigit() for a in after):
        raise ConfigError(f"--after: {', '.join(after)}: give SLURM job ids (digits), e.g. --after 1234")
    if result is None:
        result = SubmitResult(cluster, results_root=Path(results_root))
    backend = None if dry_run else backend_for(cluster)
    # The local backend runs jobs with this interpreter, which has hpcllm installed.
    python = sys.executable if cluster.scheduler == "local" else None
    if not specs:
        return result
    _check_storage(specs, experiment, cluster, results_root, retry_failed, dry_run, result)
    # One submitter per grid at a time: deciding what to submit and recording it must not
    # interleave with another `hpcllm submit` of the same experiment (a colleague's, or a
    # second terminal's), or both would submit every run.
    with exclusive(submit_lock(results_root, experiment.name, cluster.name)):
        return _submit_specs(
            specs,
            experiment,
            cluster,
            results_root,
            backend,
            python,
            account=account,
            retry_failed=retry_failed,
            after=after,
            result=result,
        )


def _check_storage(
    specs: list[RunSpec],
    experiment: Experiment,
    cluster: ClusterProfile,
    results_root: Path,
    retry_failed: bool,
    dry_run: bool,
    result: SubmitResult,
) -> None:
    """Refuse (StorageError) before anything is written when the checkpoints of the runs to submit
    cannot fit where they go; a dry run only warns. Runs are judged by their manifests as they are
    (no scheduler query): a run that is queued or done needs no new room."""
    to_run = [
        spec
        for spec in specs
        if not _skip_reason(
            load_manifest(RunDir.of(results_root, experiment.name, cluster.name, spec.run_id)), retry_failed
        )
    ]
    result.storage = storage_need(to_run)
    try:
        result.room = check_storage(result.storage, results_root, profile_file=_profile_file(cluster))
    except StorageError as exc:
        if not dry_run:
            raise
        result.warnings.append(str(exc))


def _submit_specs(
    specs: list[RunSpec],
    experiment: Experiment,
    cluster: ClusterProfile,
    results_root: Path,
    backend: Backend | None,
    python: str | None,
    *,
    account: str | None,
    retry_failed: bool,
    after: list[str] | None,
    result: SubmitResult,
) -> SubmitResult:
    """Render every run that needs it and submit them (``backend`` None: a dry run)."""
    existing: list[tuple[RunSpec, RunDir, str, Manifest | None]] = []
    for spec in specs:
        run_dir = RunDir.of(results_root, experiment.name, cluster.name, spec.run_id)
        config_text = run_config_text(spec)
        _guard_foreign_run(run_dir, config_text)
        existing.append((spec, run_dir, config_text, load_manifest(run_dir)))
    if backend is not None and existing:  # first what a submit of this grid killed midway left queued
        note = backend.cancel_orphans(existing[0][1].path.parent)
        if note:
            result.warnings.append(note)
    # Runs still queued or running by the manifest: ask the scheduler once, for all of them.
    active = [(rd, m) for _, rd, _, m in existing if m is not None and m.state.active]
    fresh = backend.refresh(active) if backend is not None and active else {}

    for spec, _, _, manifest in existing:
        if manifest is not None and spec.run_id in fresh:
            manifest.state = fresh[spec.run_id]

    queued: list[tuple[PlannedRun, Manifest]] = []
    for spec, run_dir, config_text, manifest in existing:
        skip = _skip_reason(manifest, retry_failed)
        if skip:
            result.runs.append(PlannedRun(spec, run_dir, "skipped", skip, manifest.job_id if manifest else None))
            continue
        manifest = prepare_run(
            spec,
            run_dir,
            manifest,
            experiment=experiment,
            cluster=cluster,
            account=account,
            python=python,
            after=after,
            config_text=config_text,
        )
        if backend is None:
            if manifest.state == RunState.RENDERED:
                with manifest_lock(run_dir):
                    save_manifest(run_dir, manifest, durable=False)
            result.runs.append(PlannedRun(spec, run_dir, "rendered"))
            continue
        planned = PlannedRun(spec, run_dir, "submitted")
        result.runs.append(planned)
        queued.append((planned, manifest))
    unreferenced = sum(references_for_point(experiment.expected.get(cluster.name), spec)[1] for spec in specs)
    if unreferenced:
        result.warnings.append(
            f"{unreferenced} of {len(specs)} points have no row in the seed's tables: "
            "no seed reference for them (`hpcllm collect --compare seed` lists the seed's rows)"
        )
    if backend is not None and queued:
        # All at once, so that a backend can batch them (SLURM job arrays).
        try:
            job_ids = backend.submit_all([(planned.run_dir, manifest) for planned, manifest in queued])
        except BackendError as exc:
            for planned, manifest in queued:
                if manifest.state != RunState.PENDING:  # not submitted before the error
                    transition(manifest, RunState.SUBMIT_FAILED, Actor.SUBMIT)  # rendered/failed/cancelled: allowed
                    manifest.error = str(exc)
                    with manifest_lock(planned.run_dir):
                        save_manifest(planned.run_dir, manifest)
            raise
        for (planned, _), job_id in zip(queued, job_ids, strict=True):
            planned.job_id = job_id
    return result


def prepare_run(
    spec: RunSpec,
    run_dir: RunDir,
    manifest: Manifest | None,
    *,
    experiment: Experiment,
    cluster: ClusterProfile,
    account: str | None,
    python: str | None,
    after: list[str] | None = None,
    config_text: str | None = None,
) -> Manifest:
    """Write the run's ``run.yaml`` (``config_text`` when the caller has it already) and ``job.sbatch``;
    return its manifest, ready to submit."""
    script = render_job(spec, cluster, run_dir, account=account, python=python)
    prepare_folder(run_dir)  # and what a submit interrupted here before left (we hold the grid's submit lock)
    # both rendered again on resubmit
    atomic_write_text(run_dir.config, config_text or run_config_text(spec), durable=False)
    atomic_write_text(run_dir.job_script, script, durable=False, executable=True)
    if manifest is None or manifest.state == RunState.RENDERED:
        manifest = Manifest(
            run_id=spec.run_id,
            experiment=experiment.name,
            cluster=cluster.name,
            backend=cluster.scheduler,
            point=spec.point,
        )
    manifest.max_restarts = spec.resources.max_restarts or 0
    references, _ = references_for_point(experiment.expected.get(cluster.name), spec)
    manifest.expected = {metric: ref.as_manifest() for metric, ref in references.items()}
    manifest.time_limit = spec.resources.time
    manifest.signal_before_end_s = cluster.signal_before_end_s
    manifest.depends_on = list(after or [])
    return manifest


def _profile_file(cluster: ClusterProfile) -> str:
    return str(clusters_dir() / f"{cluster.name}.yaml")


def results_root_for(cluster: ClusterProfile, account: str | None, given: Path | None = None) -> Path:
    """Where run directories go: ``given`` (--results), else $HPCLLM_RESULTS, else the profile's
    ``paths.results`` (expanded here, on the login node, where run directories are made), else
    ./results. ConfigError when the profile's root cannot be resolved here; HpcllmError when it is a file."""
    return check_results_folder(_chosen_root(cluster, account, given))


def _chosen_root(cluster: ClusterProfile, account: str | None, given: Path | None) -> Path:
    if given is not None:
        return Path(given)
    from_env = results_from_env()
    if from_env is not None:
        return from_env
    configured = cluster.storage_roots(account).get("results")
    if configured is None:
        return DEFAULT_RESULTS
    key = f"{_profile_file(cluster)}: paths.results"
    if "{account}" in configured:
        raise ConfigError(f"{key}: {configured!r} needs an account (--account, $HPCLLM_ACCOUNT or account:)")
    return Path(expand_path(configured, key))


def _results_root(
    given: Path | None, cluster: ClusterProfile, account: str | None, dry_run: bool, warnings: list[str]
) -> Path:
    """``results_root_for``; a dry run that cannot resolve the profile's root renders under ./results."""
    try:
        return results_root_for(cluster, account, given)
    except ConfigError as exc:
        if not dry_run:
            raise
        warnings.append(f"{exc}; rendering under ./results instead")
        return Path("results")


def _skip_reason(manifest: Manifest | None, retry_failed: bool) -> str | None:
    if manifest is None:
        return None
    if manifest.state == RunState.COMPLETED:
        return "completed"
    if manifest.state.active:
        return f"already {manifest.state.value} (job {manifest.job_id})"
    if manifest.state in (RunState.FAILED, RunState.CANCELLED) and not retry_failed:
        return f"{manifest.state.value}; pass --retry-failed to resubmit"
    return None


def _guard_foreign_run(run_dir: RunDir, config_text: str) -> None:
    """Never overwrite a directory that holds a different run (e.g. a hand-edited run.yaml)."""
    if run_dir.config.exists() and run_dir.config.read_text() != config_text:
        raise HpcllmError(
            f"{run_dir.config} exists with a different config: refusing to overwrite another run's "
            "directory (move it away, or change the experiment)"
        )
