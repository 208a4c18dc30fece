"""Which nodes train after the pre-flight (``preflight.json``): the best N of the job's N + k.

``python -m hpcllm.launch.preflight choose RUN_DIR --nodes N`` runs in the batch script after
``python -m hpcllm.engine.preflight`` and prints the node list for the engine's ``srun``. Torch-free:
it only reads the pre-flight's verdict. The slow nodes go into the manifest (``slow_nodes``, which
``hpcllm status`` shows, and ``exclude_nodes``: a requeue and later submits avoid them). Without
spare nodes a slow node still trains (there is nothing to replace it with); it is named all the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from hpcllm.config.cluster import ClusterProfile
from hpcllm.config.experiment import Resources
from hpcllm.errors import HpcllmError
from hpcllm.fsutil import read_json
from hpcllm.launch.manifest import update_manifest
from hpcllm.launch.slurmcmd import hostnames
from hpcllm.rundir import RunDir


def preflight_context(res: Resources, cluster: ClusterProfile, run_dir: RunDir) -> dict[str, Any]:
    """The batch script's pre-flight settings: on when asked or with spare nodes (only the pre-flight
    can choose which nodes train), else from the profile's node count (``preflight_from_nodes``)."""
    allocated = res.nodes + res.spare_nodes
    by_profile = cluster.preflight_from_nodes is not None and allocated >= cluster.preflight_from_nodes
    on = res.preflight if res.preflight is not None else (res.spare_nodes > 0 or by_profile)
    return {
        "alloc_nodes": allocated,
        "preflight": on and cluster.scheduler == "slurm",  # a profile's default; asked for on local: refused
        "preflight_min_fraction": cluster.preflight_min_fraction,
        "preflight_path": str(run_dir.preflight.absolute()),
    }


def choose(allocated: list[str], verdict: dict[str, Any] | None, nodes: int) -> list[str]:
    """The ``nodes`` to train on: the nodes not named slow, in allocation order, then the least
    slow of the named ones if too few are left. Without a verdict (the pre-flight failed): the first."""
    if verdict is None:
        return allocated[:nodes]
    slow = verdict.get("slow_nodes", {})
    score = verdict.get("score", {})
    good = [n for n in allocated if n not in slow]
    worst_last = sorted((n for n in allocated if n in slow), key=lambda n: -float(score.get(n, 0.0)))
    chosen = set((good + worst_last)[:nodes])
    return [n for n in allocated if n in chosen]


def record(run_dir: RunDir, verdict: dict[str, Any]) -> None:
    """Name the slow nodes in the manifest; they join the nodes a requeue and later submits avoid."""
    slow: dict[str, str] = verdict.get("slow_nodes", {})
    with update_manifest(run_dir) as manifest:
        manifest.slow_nodes = dict(slow)
        manifest.exclude_nodes += [n for n in slow if n not in manifest.exclude_nodes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcllm.launch.preflight", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("choose", help="print the nodes to train on (comma-separated)")
    cmd.add_argument("run_dir", type=Path)
    cmd.add_argument("--nodes", type=int, required=True, help="nodes the run trains on")
    args = parser.parse_args(argv)
    run_dir = RunDir(args.run_dir)
    try:
        allocated = hostnames(os.environ.get("SLURM_JOB_NODELIST", ""))
        verdict = read_json(run_dir.preflight)
        if verdict is None:
            print("[hpcllm] pre-flight wrote no verdict: training on the first nodes", file=sys.stderr)
        else:
            record(run_dir, verdict)
        chosen = choose(allocated, verdict, args.nodes)
    except HpcllmError as exc:
        print(f"[hpcllm] pre-flight: {exc}", file=sys.stderr)
        return 1
    left_out = [n for n in allocated if n not in chosen]
    print(
        f"[hpcllm] training on {','.join(chosen)}" + (f"; left out {','.join(left_out)}" if left_out else ""),
        file=sys.stderr,
    )
    print(",".join(chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
