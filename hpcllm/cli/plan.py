"""``hpcllm plan``: what a grid costs (node-hours, GPU-hours, the site's unit) before it is submitted,
against what the account has left; and the same check inside ``hpcllm submit``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from hpcllm.cli.common import console, err_console, fail, finite, results_option
from hpcllm.errors import HpcllmError

if TYPE_CHECKING:
    from hpcllm.site.budget import Plan

OVER_BUDGET_FLAG = "--over-budget"


def plan(
    experiment: Path = typer.Argument(..., help="Experiment YAML, e.g. experiments/scaling_2.7b.yaml."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster profile name (see `hpcllm clusters`)."),
    account: str | None = typer.Option(
        None,
        "--account",
        "-A",
        help="Account whose allowance to compare with (default: $HPCLLM_ACCOUNT, "
        "the profile's, else the scheduler's default account of the user).",
    ),
    results: Path | None = results_option(
        None, "Results root whose finished runs give step times (default: as submit)."
    ),
    mfu: float | None = typer.Option(
        None,
        "--mfu",
        min=0.001,
        max=1.0,
        callback=finite,
        help="MFU for points no run, seed row or fit prices (default: the median of the seed's rows on the GPU type).",
    ),
    no_memory_check: bool = typer.Option(
        False, "--no-memory-check", help="Also price points whose memory estimate exceeds the GPU memory."
    ),
) -> None:
    """Node-hours and GPU-hours per grid point and in total, which source each step time came from, and
    the account's remaining allocation (sacctmgr GrpTRESMins, sshare usage, the site's budget command)."""
    from hpcllm.site.budget import build_plan

    try:
        result = build_plan(
            experiment, cluster, account=account, results_root=results, mfu=mfu, memory_check=not no_memory_check
        )
    except HpcllmError as exc:
        fail(exc)
    print_plan(result)


def print_plan(result: Plan, *, per_point: bool = True) -> None:
    """The plan's table (stdout), its totals, and the budget comparison."""
    from hpcllm.cli.listing import print_listing

    if per_point:
        rows = [
            [
                c.run_id,
                str(c.nodes),
                str(c.gpus),
                str(c.steps),
                f"{c.step.seconds:.3g}" + (f" ± {c.step.uncertainty_s:.2g}" if c.step.uncertainty_s else ""),
                f"{c.step.source}: {c.step.detail}",
                f"{c.chunks}" + (" (> max)" if c.chunks > c.max_jobs else ""),
                str(c.checkpoints) + ("" if c.checkpoint_s is not None or not c.checkpoints else " (unpriced)"),
                f"{c.wall_s / 3600:.2f}",
                f"{c.node_hours:.2f}",
                f"{c.gpu_hours:.2f}",
            ]
            for c in result.costs
        ]
        print_listing(
            console,
            f"{result.experiment} on {result.cluster.name}: {len(result.costs)} points to run",
            (
                "run",
                "nodes",
                "GPUs",
                "steps",
                "step (s)",
                "step time from",
                "jobs",
                "ckpts",
                "hours",
                "node-h",
                "GPU-h",
            ),
            rows,
            keep_whole=("run", "node-h", "GPU-h"),
        )
    t = result.total
    billed = (
        f", {t.billed:.1f} {t.unit} (billing: {result.cluster.accounting.billing.source})"
        if (t.billed is not None and result.cluster.accounting.billing)
        else ""
    )
    console.print(
        f"total: {len(result.costs)} points, {t.node_hours:.2f} node-hours, {t.gpu_hours:.2f} GPU-hours{billed}",
        highlight=False,
        soft_wrap=True,
    )
    notes = []
    if result.done:
        notes.append(f"{len(result.done)} completed runs not priced (submit skips them)")
    if result.refused:
        notes.append(f"{len(result.refused)} points no QoS admits, not priced")
    if result.unfit:
        notes.append(f"{len(result.unfit)} points over the GPU memory, not priced (submit skips them)")
    if any(c.chunks > c.max_jobs for c in result.costs):
        notes.append("jobs: a point needs more requeues than its max_restarts allow")
    if any(c.checkpoints and c.checkpoint_s is None for c in result.costs):
        notes.append("checkpoints unpriced: the profile states no accounting.checkpoint_write_gib_s")
    for note in notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    _print_budget(result)


def _print_budget(result: Plan) -> None:
    if result.budget is not None:
        if not result.budget.allowances:
            console.print(f"account {result.budget.account}: no GrpTRESMins limit ({result.budget.source})")
        for a in result.budget.allowances:
            planned = result.planned_min(a.tres)
            verdict = (
                ""
                if planned is None
                else (
                    f"; this grid: {planned:.0f} ({'[red]exceeds what is left[/]' if planned > a.left_min else 'fits'})"
                )
            )
            console.print(
                f"account {a.account} {a.tres}: limit {a.limit_min:.0f} min, used {a.used_min:.0f}, "
                f"left {a.left_min:.0f}{verdict} ({result.budget.source})",
                highlight=False,
                soft_wrap=True,
            )
    elif result.budget_note:
        err_console.print(f"allowance not checked: {result.budget_note}", highlight=False, soft_wrap=True)
    command = result.cluster.accounting.budget_command
    if result.site_budget is not None and command is not None:
        console.print(f"{' '.join(command.argv)} ({command.source}):", highlight=False, soft_wrap=True)
        console.print(result.site_budget.rstrip(), highlight=False, markup=False)
    elif result.site_budget_note:
        err_console.print(f"site budget not read: {result.site_budget_note}", highlight=False, soft_wrap=True)


def budget_gate(
    experiment: Path,
    cluster: str,
    account: str | None,
    results: Path | None,
    *,
    over_budget: bool,
    dry_run: bool,
    memory_check: bool,
) -> None:
    """``submit``: print the grid's total; stop (exit 2) when it exceeds what the account has left,
    unless ``over_budget``. A dry run asks the scheduler nothing and so refuses nothing."""
    from hpcllm.site.budget import build_plan

    try:
        result = build_plan(
            experiment,
            cluster,
            account=account,
            results_root=results,
            ask_scheduler=not dry_run,
            memory_check=memory_check,
        )
    except HpcllmError as exc:
        fail(exc)
    print_plan(result, per_point=False)
    overruns = result.overruns
    if overruns and not over_budget:
        worst = overruns[0]
        err_console.print(
            f"[bold red]error:[/] {experiment}: the grid needs {worst.planned_min:.0f} {worst.tres}-minutes, account "
            f"{result.account or (result.budget.account if result.budget else '?')} has {worst.left_min:.0f} left "
            f"(GrpTRESMins): nothing submitted; `hpcllm plan` shows each point, {OVER_BUDGET_FLAG} submits anyway",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
