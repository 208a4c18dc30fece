"""The commands' logic, torch-free: submit a grid, show states, cancel, find runs.

Each function returns data; ``hpcllm.cli`` prints it. Resubmitting an experiment is safe: a run's id
is derived from its resolved config, completed and queued runs are skipped, failed runs are only
resubmitted when asked.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hpcllm.config.cluster import ClusterProfile, load_cluster
from hpcllm.config.experiment import Experiment, RunSpec, expand_experiment, load_experiment
from hpcllm.errors import BackendError, ConfigError, HpcllmError
from hpcllm.fsutil import atomic_write_text
from hpcllm.launch.backends import backend_for
from hpcllm.launch.manifest import Manifest, RunState, load_manifest, save_manifest
from hpcllm.launch.memcheck import Unfit, split_by_fit
from hpcllm.launch.probeindex import measured_largest_fits
from hpcllm.launch.render import render_job
from hpcllm.rundir import RunDir, find_run_dirs


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
    unfit: list[Unfit] = field(default_factory=list)  # points left out: over the GPU memory


def run_config_text(spec: RunSpec) -> str:
    header = (
        f"# Resolved training config of run {spec.run_id} ({spec.experiment} on {spec.cluster}).\n"
        "# Written by `hpcllm submit`; the engine's only input (see docs/run-contract.md).\n"
    )
    body = yaml.safe_dump(spec.training.model_dump(mode="json"), sort_keys=False)
    return header + body


def submit_experiment(
    experiment_path: Path,
    cluster_name: str,
    results_root: Path,
    *,
    account: str | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    after: list[str] | None = None,
    memory_check: bool = True,
) -> SubmitResult:
    """``after``: SLURM job ids every submitted run waits for (``--dependency=afterok``).

    ``memory_check``: leave out the points whose memory estimate exceeds the profile's GPU memory
    and that no probe of the experiment ran at their micro-batch size (``SubmitResult.unfit`` says why).
    """
    experiment = load_experiment(experiment_path)
    cluster = load_cluster(cluster_name)
    specs = expand_experiment(experiment, cluster, str(experiment_path))
    measured = measured_largest_fits(results_root, experiment.name, cluster.name) if memory_check else {}
    fitting, unfit = split_by_fit(specs, cluster, measured) if memory_check else (specs, [])
    result = submit_runs(experiment, cluster, fitting, results_root, account=account, dry_run=dry_run,
                         retry_failed=retry_failed, after=after)
    result.unfit = unfit
    if memory_check and cluster.gpu_memory_gib is None:
        result.warnings.append(f"cluster {cluster.name!r} states no gpu_memory_gib: memory not checked")
    return result


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
) -> SubmitResult:
    """Render, write and submit ``specs``, points of ``experiment`` on ``cluster``: the one path from a
    RunSpec to a queued job (``hpcllm submit`` and ``hpcllm explore-batch`` both use it)."""
    if after and cluster.scheduler != "slurm":
        raise ConfigError(f"--after: cluster {cluster.name!r} is {cluster.scheduler!r}; dependencies need SLURM")
    if after and not all(a.isdigit() for a in after):
        raise ConfigError(f"--after: {', '.join(after)}: give SLURM job ids (digits), e.g. --after 1234")
    result = SubmitResult(cluster)
    try:
        account = cluster.resolve_account(account)
    except ConfigError:
        if not dry_run:
            raise
        result.warnings.append(f"no account for {cluster.name!r}: rendered without --account")
        account = None
    backend = None if dry_run else backend_for(cluster)
    # The local backend runs jobs with this interpreter, which has hpcllm installed.
    python = sys.executable if cluster.scheduler == "local" else None

    existing: list[tuple[RunSpec, RunDir, str, Manifest | None]] = []
    for spec in specs:
        run_dir = RunDir.of(results_root, experiment.name, cluster.name, spec.run_id)
        config_text = run_config_text(spec)
        _guard_foreign_run(run_dir, config_text)
        existing.append((spec, run_dir, config_text, load_manifest(run_dir)))
    # Runs still queued or running by the manifest: ask the scheduler once, for all of them.
    active = [(rd, m) for _, rd, _, m in existing if m is not None and m.state.active]
    fresh = backend.refresh(active) if backend is not None and active else {}

    queued: list[tuple[PlannedRun, Manifest]] = []
    for spec, run_dir, config_text, manifest in existing:
        if manifest is not None and spec.run_id in fresh:
            manifest.state = fresh[spec.run_id]
        skip = _skip_reason(manifest, retry_failed)
        if skip:
            result.runs.append(PlannedRun(spec, run_dir, "skipped", skip, manifest.job_id if manifest else None))
            continue
        script = render_job(spec, cluster, run_dir, account=account, python=python)
        run_dir.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir.config, config_text)
        atomic_write_text(run_dir.job_script, script)
        run_dir.job_script.chmod(0o755)
        if manifest is None or manifest.state == RunState.RENDERED:
            manifest = Manifest(
                run_id=spec.run_id, experiment=experiment.name, cluster=cluster.name,
                backend=cluster.scheduler, point=spec.point,
            )
        manifest.max_restarts = spec.resources.max_restarts or 0
        manifest.expected = {
            metric: ref.model_dump() for metric, ref in experiment.expected.get(cluster.name, {}).items()
        }
        manifest.time_limit = spec.resources.time
        manifest.signal_before_end_s = cluster.signal_before_end_s
        manifest.depends_on = list(after or [])
        if backend is None:
            if manifest.state == RunState.RENDERED:
                save_manifest(run_dir, manifest)
            result.runs.append(PlannedRun(spec, run_dir, "rendered"))
            continue
        planned = PlannedRun(spec, run_dir, "submitted")
        result.runs.append(planned)
        queued.append((planned, manifest))
    if backend is not None and queued:
        # All at once, so that a backend can batch them (SLURM job arrays).
        try:
            job_ids = backend.submit_all([(planned.run_dir, manifest) for planned, manifest in queued])
        except BackendError as exc:
            for planned, manifest in queued:
                if manifest.state != RunState.PENDING:  # not submitted before the error
                    manifest.state = RunState.SUBMIT_FAILED
                    manifest.error = str(exc)
                    save_manifest(planned.run_dir, manifest)
            raise
        for (planned, _), job_id in zip(queued, job_ids):
            planned.job_id = job_id
    return result


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


@dataclass
class RunStatus:
    run_dir: RunDir
    manifest: Manifest | None
    state: str
    step: int | None
    loss: float | None
    waiting_for: str | None = None  # the scheduler's reason a pending run has not started


def collect_status(root: Path) -> list[RunStatus]:
    """Every run under ``root`` with its state (refreshed from its backend) and last step/loss."""
    from hpcllm.launch.progress import last_metrics

    run_dirs = find_run_dirs(root)
    manifests = {rd.path: load_manifest(rd) for rd in run_dirs}
    states: dict[Path, str] = {}
    waiting: dict[str, str] = {}
    by_cluster: dict[str, list[tuple[RunDir, Manifest]]] = {}
    for rd in run_dirs:
        m = manifests[rd.path]
        if m is None:
            states[rd.path] = "unknown"
        elif m.state.active:
            by_cluster.setdefault(m.cluster, []).append((rd, m))
        else:
            states[rd.path] = m.state.value
    for cluster_name, items in by_cluster.items():
        try:
            backend = backend_for(load_cluster(cluster_name))
            fresh = backend.refresh(items)
            waiting.update(backend.pending_reasons)
        except HpcllmError:
            fresh = {m.run_id: m.state for _, m in items}
        for rd, m in items:
            states[rd.path] = fresh.get(m.run_id, m.state).value
            manifests[rd.path] = load_manifest(rd)
    out = []
    for rd in run_dirs:
        last = last_metrics(rd) or {}
        out.append(RunStatus(rd, manifests[rd.path], states[rd.path], last.get("step"), last.get("loss"),
                             waiting.get(rd.run_id) if states[rd.path] == "pending" else None))
    return out


def find_run(root: Path, run_id: str) -> RunDir:
    """The run directory whose name is ``run_id`` or starts with it (unique), below ``root``."""
    matches = [rd for rd in find_run_dirs(root) if rd.run_id == run_id] or [
        rd for rd in find_run_dirs(root) if rd.run_id.startswith(run_id)
    ]
    if not matches:
        raise HpcllmError(f"no run {run_id!r} under {root}")
    if len(matches) > 1:
        names = ", ".join(str(m.path) for m in matches[:5])
        raise HpcllmError(f"{run_id!r} matches {len(matches)} runs ({names}); give the full id")
    return matches[0]


def cancel_run(root: Path, run_id: str) -> Manifest:
    run_dir = find_run(root, run_id)
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise HpcllmError(f"{run_dir.path}: no manifest: this run was never submitted")
    backend_for(load_cluster(manifest.cluster)).cancel(run_dir, manifest)
    return load_manifest(run_dir) or manifest
