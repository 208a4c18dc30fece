"""``hpcllm status``, ``cancel`` and ``logs``: every run's state under a results root (through its
backend, which reconciles the manifest with the scheduler), and one run found by its id."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hpcllm.config.cluster import load_cluster
from hpcllm.errors import HpcllmError
from hpcllm.launch.backends import backend_for
from hpcllm.launch.manifest import Manifest, load_manifest
from hpcllm.rundir import RunDir, find_run_dirs


@dataclass
class RunStatus:
    run_dir: RunDir
    manifest: Manifest | None
    state: str
    step: int | None
    loss: float | None
    waiting_for: str | None = None  # the scheduler's reason a pending run has not started
    software: str = ""  # what the latest attempt ran with (runtime.jsonl)
    problems: list[str] = field(default_factory=list)  # one line per file of this run that could not be read


def collect_status(root: Path, skipped: list[str] | None = None) -> list[RunStatus]:
    """Every run under ``root`` with its state (refreshed from its backend) and last step/loss;
    ``skipped`` receives the folders that could not be read."""
    from hpcllm.launch.progress import last_metrics
    from hpcllm.launch.runinfo import last_runtime, software_label

    run_dirs = find_run_dirs(root, skipped)
    problems: dict[int, list[str]] = {}  # a damaged file is that run's warning, not the command's failure
    manifests = [_manifest_or_problem(rd, i, problems) for i, rd in enumerate(run_dirs)]  # indexed like run_dirs
    states: list[str] = []
    waiting: dict[str, str] = {}
    by_cluster: dict[str, list[tuple[int, Manifest]]] = {}
    for i, m in enumerate(manifests):
        states.append("unknown" if m is None else m.state.value)
        if m is not None and m.state.active:
            by_cluster.setdefault(m.cluster, []).append((i, m))
    for cluster_name, items in by_cluster.items():
        try:
            backend = backend_for(load_cluster(cluster_name))
            fresh = backend.refresh([(run_dirs[i], m) for i, m in items])
            waiting.update(backend.pending_reasons)
        except HpcllmError:
            fresh = {m.run_id: m.state for _, m in items}
        for i, m in items:
            states[i] = fresh.get(m.run_id, m.state).value
            manifests[i] = _manifest_or_problem(run_dirs[i], i, problems)
    out = []
    for i, (rd, manifest, state) in enumerate(zip(run_dirs, manifests, states, strict=True)):
        found = problems.setdefault(i, [])
        last = last_metrics(rd, found) or {}
        out.append(
            RunStatus(
                rd,
                manifest,
                state,
                last.get("step"),
                last.get("loss"),
                waiting.get(rd.run_id) if state == "pending" else None,
                software_label(last_runtime(rd, found)),
                found,
            )
        )
    return out


def _manifest_or_problem(run_dir: RunDir, index: int, problems: dict[int, list[str]]) -> Manifest | None:
    try:
        return load_manifest(run_dir)
    except HpcllmError as exc:  # read twice when refreshed: said once
        problems[index] = [str(exc)]
        return None


def find_run(root: Path, run_id: str) -> RunDir:
    """The run directory whose name is ``run_id`` or starts with it (unique), below ``root``."""
    from hpcllm.launch.runids import resolve_run_id

    return resolve_run_id(root, run_id)


def cancel_run(root: Path, run_id: str) -> Manifest:
    run_dir = find_run(root, run_id)
    manifest = load_manifest(run_dir)
    if manifest is None:
        raise HpcllmError(f"{run_dir.path}: no manifest: this run was never submitted")
    backend_for(load_cluster(manifest.cluster)).cancel(run_dir, manifest)
    return load_manifest(run_dir) or manifest
