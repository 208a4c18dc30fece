"""``hpcllm clusters``: list the cluster profiles and show one."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from hpcllm.cli.common import console, fail, warn_problems
from hpcllm.cli.listing import print_listing
from hpcllm.errors import HpcllmError

clusters_app = typer.Typer(help="List and inspect cluster profiles (clusters/*.yaml).", invoke_without_command=True)


@clusters_app.callback()
def clusters_list(ctx: typer.Context) -> None:
    """Without a subcommand: a table of every profile in clusters/."""
    if ctx.invoked_subcommand is not None:
        return
    from hpcllm.config.cluster import available_clusters, load_cluster

    headers = ("name", "scheduler", "partition", "GPU", "GPUs/node", "GiB/GPU", "cores/node", "max nodes", "QoS")
    rows, problems = [], []
    for name in available_clusters():  # one bad profile is one warning line; the others are still listed
        try:
            c = load_cluster(name)
        except HpcllmError as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        rows.append(
            [
                c.name,
                c.scheduler,
                c.partition or "-",
                c.gpu_type,
                str(c.gpus_per_node),
                f"{c.gpu_memory_gib:g}" if c.gpu_memory_gib else "-",
                str(c.cpus_per_node),
                str(c.max_nodes),
                ", ".join(f"{q} ({s.max_time})" for q, s in c.qos.items()) or "-",
            ]
        )
    warn_problems(problems)
    if problems and not rows:
        fail(HpcllmError(f"no usable cluster profile ({len(problems)} refused, above)"))
    print_listing(
        console,
        "Cluster profiles",
        headers,
        rows,
        keep_whole=("name",),
        short={
            "scheduler": "sched",
            "partition": "part",
            "GPUs/node": "GPU/n",
            "cores/node": "cpu/n",
            "max nodes": "max n",
            "GiB/GPU": "GiB",
        },
        drop_first=("cores/node", "scheduler", "partition"),
        wrap=("QoS",),
    )


@clusters_app.command("show")
def clusters_show(name: str = typer.Argument(..., help="Profile name, e.g. leonardo.")) -> None:
    """Every setting of one profile."""
    from hpcllm.config.cluster import load_cluster

    try:
        profile = load_cluster(name)
    except HpcllmError as exc:
        fail(exc)
    table = Table(title=f"Cluster {profile.name}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in profile.model_dump(mode="json").items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, indent=1) if value else "-"
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
