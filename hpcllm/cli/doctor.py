"""``hpcllm doctor``: check a cluster profile against the live cluster before the first submit."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from hpcllm.cli.common import console, fail, results_option
from hpcllm.errors import HpcllmError

STATUS_STYLE = {"ok": "green", "fail": "bold red", "warn": "yellow", "skip": "dim"}


def doctor(
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster profile name (or a path to its YAML)."),
    experiment: Path | None = typer.Option(
        None, "--experiment", "-e", help="Also try every point of this experiment with sbatch --test-only."
    ),
    account: str | None = typer.Option(None, "--account", "-A", help="Project to charge (beats $HPCLLM_ACCOUNT)."),
    results: Path | None = results_option(None, "Results root to check (default: the profile's)."),
    gpu: bool = typer.Option(
        False,
        "--gpu",
        help="Also run a short 2-node job: nvidia-smi, torch's CUDA, network interfaces, one all-reduce.",
    ),
) -> None:
    """Check a profile against the cluster: partition, nodes, CPUs, GPUs, QoS, account, points, storage,
    the Python environment. Exits 1 when a check fails; skipped checks say why they could not be made."""
    from hpcllm.config.cluster import clusters_dir, load_cluster
    from hpcllm.site.doctor import run_doctor

    try:
        profile = load_cluster(cluster)
        profile_file = cluster if cluster.endswith((".yaml", ".yml")) else str(clusters_dir() / f"{cluster}.yaml")
        checks = run_doctor(
            profile, profile_file=profile_file, account=account, experiment=experiment, results_root=results, gpu=gpu
        )
    except HpcllmError as exc:
        fail(exc)
    table = Table(title=f"hpcllm doctor: {profile.name} ({profile_file})")
    for col in ("area", "check", "status", "detail", "fix"):
        table.add_column(col, overflow="fold")
    for check in checks:
        style = STATUS_STYLE.get(check.status, "white")
        table.add_row(
            escape(check.area),
            escape(check.name),
            f"[{style}]{check.status}[/]",
            escape(check.detail),
            escape(check.fix),
        )
    console.print(table)
    counts = {s: sum(c.status == s for c in checks) for s in STATUS_STYLE}
    console.print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if counts["fail"]:
        raise typer.Exit(1)
