"""A run the engine's watchdog ended (``watchdog.json``): requeue it without the nodes it named.

The engine (hpcllm.engine.watchdog) names the ranks and nodes behind the others when a run stops
making progress. Here, torch-free, the batch script's end hook turns that verdict into a restart
(bounded by the run's ``max_restarts`` like any other requeue) and puts those nodes into the
manifest's ``exclude_nodes``, the list ``--retry-failed`` and later submits pass to ``--exclude``.
A requeued job keeps its job id and its node constraints, and SLURM takes a new ``ExcNodeList``
only while the job is pending: so the batch script asks ``python -m hpcllm.launch.hangs excludes
RUN_DIR`` for the list before ``scontrol requeue`` and sets it right after (the job is pending by
then, and the script, which traps TERM, is still alive).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from hpcllm.errors import HpcllmError
from hpcllm.fsutil import read_json
from hpcllm.launch.backends.slurmtext import usable_excludes
from hpcllm.launch.manifest import Manifest, Restart, RunState, load_manifest
from hpcllm.launch.progress import last_step
from hpcllm.launch.runstate import Actor, allowed, transition
from hpcllm.launch.slurmcmd import hostnames, parse_scontrol_record, run_slurm
from hpcllm.rundir import RunDir, now


def this_attempts_verdict(run_dir: RunDir, restart_count: int) -> dict[str, Any] | None:
    """``watchdog.json`` if this job's current attempt wrote it (an older one is history)."""
    verdict = read_json(run_dir.watchdog_verdict)
    if not isinstance(verdict, dict):
        return None
    if verdict.get("restart") != restart_count or verdict.get("job_id") != os.environ.get("SLURM_JOB_ID"):
        return None
    return verdict


def requeue_after_hang(
    run_dir: RunDir, manifest: Manifest, verdict: dict[str, Any], *, job_id: str, nodelist: str, restart_count: int
) -> bool:
    """Record a restart for a hang the watchdog ended (``verdict``, this attempt's), with its nodes
    excluded, and move the run back to pending through the run-state machine; False = the budget is
    spent or the run is no longer running (the run then fails with the engine's error, which names
    the nodes)."""
    if restart_count >= manifest.max_restarts or not allowed(manifest.state, RunState.PENDING, Actor.JOB):
        return False
    nodes = [str(n) for n in verdict.get("nodes", [])]
    manifest.restarts.append(
        Restart(
            time=now(),
            reason=str(verdict.get("reason", "watchdog: no progress")),
            nodes=nodelist,
            last_step=last_step(run_dir),
            job_id=job_id,
            failed_nodes=nodes,
        )
    )
    manifest.exclude_nodes += [n for n in nodes if n not in manifest.exclude_nodes]
    return transition(manifest, RunState.PENDING, Actor.JOB)


def partition_size(partition: str) -> int:
    """Nodes in ``partition`` (scontrol's TotalNodes), 0 when SLURM does not say."""
    proc = run_slurm(["scontrol", "-o", "show", "partition", partition], check=False)
    return int(parse_scontrol_record(proc.stdout).get("TotalNodes", "0") or 0)


def requeue_excludes(run_dir: RunDir) -> list[str]:
    """The run's excluded nodes that still leave its job room in the partition (newest first kept)."""
    manifest = load_manifest(run_dir)
    if manifest is None or not manifest.exclude_nodes:
        return []
    nodes = int(os.environ.get("SLURM_NNODES") or len(hostnames(manifest.nodes or "")) or 1)
    return usable_excludes(manifest.exclude_nodes, nodes, partition_size(os.environ.get("SLURM_JOB_PARTITION", "")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcllm.launch.hangs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    excludes = sub.add_parser("excludes", help="print the nodes a requeued job must avoid (comma-separated)")
    excludes.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        print(",".join(requeue_excludes(RunDir(args.run_dir))))
    except HpcllmError as exc:
        print(f"[hpcllm] cannot list the nodes to exclude: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
