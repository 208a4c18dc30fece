"""``hpcllm submit|status|cancel|logs``: the life of runs, from grid to finished job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.table import Table

from hpcllm.cli.common import RESULTS, console, err_console, fail
from hpcllm.errors import HpcllmError

if TYPE_CHECKING:
    from hpcllm.launch.memcheck import Unfit


def submit(
    experiment: Path = typer.Argument(..., help="Experiment YAML, e.g. experiments/smoke.yaml."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster profile name (see `hpcllm clusters`)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render scripts and run dirs, submit nothing."),
    account: Optional[str] = typer.Option(None, "--account", "-A", help="Project to charge (beats $HPCLLM_ACCOUNT)."),
    results: Path = typer.Option(RESULTS, "--results", help="Results root folder."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Resubmit failed and cancelled runs."),
    wait: bool = typer.Option(False, "--wait", help="Show progress until every run has finished."),
    after: Optional[list[str]] = typer.Option(
        None, "--after", metavar="JOBID", help="SLURM job id every run waits for (afterok); repeat for several."
    ),
    no_memory_check: bool = typer.Option(
        False, "--no-memory-check", help="Also submit points whose memory estimate exceeds the GPU memory."
    ),
) -> None:
    """Expand an experiment grid, render one sbatch script per point and submit them."""
    from hpcllm.launch.orchestrate import submit_experiment

    try:
        result = submit_experiment(
            experiment, cluster, results, account=account, dry_run=dry_run, retry_failed=retry_failed,
            after=after, memory_check=not no_memory_check,
        )
    except HpcllmError as exc:
        fail(exc)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
    if result.unfit:
        _print_unfit(result.unfit)
    table = Table(title=f"{experiment} on {cluster}: {len(result.runs)} runs")
    for col in ("run", "nodes", "ranks", "MBS", "GA", "GBS", "sharding", "AC", "action", "job"):
        table.add_column(col)
    for run in result.runs:
        t, p = run.spec.training, run.spec.training.parallel
        table.add_row(
            run.spec.run_id, str(run.spec.resources.nodes), str(run.spec.world_size),
            str(t.train.micro_batch_size), str(t.train.grad_accum), str(t.train.global_batch_size),
            p.sharding, p.activation_checkpointing, f"{run.action} {run.detail}".strip(), run.job_id or "-",
        )
    console.print(table)
    if result.runs:
        console.print(f"run directories: {result.runs[0].run_dir.path.parent}")
    if wait and not dry_run:
        _wait_for(results, [r.run_dir.path for r in result.runs])


def _print_unfit(unfit: list["Unfit"]) -> None:
    """The points left out for memory, each with its estimate's largest terms and what would fit."""
    table = Table(title=f"{len(unfit)} points skipped: estimated over the GPU memory (--no-memory-check submits them)")
    for col in ("run", "ranks", "MBS", "sharding", "AC", "why"):
        table.add_column(col)
    for u in unfit:
        t, p = u.spec.training, u.spec.training.parallel
        table.add_row(u.spec.run_id, str(u.spec.world_size), str(t.train.micro_batch_size), p.sharding,
                      p.activation_checkpointing, u.reason)
    err_console.print(table)
    err_console.print("the breakdown of one point: hpcllm model info NAME --mbs … --gpus … --cluster … (docs/memory.md)")


def _wait_for(results: Path, run_paths: list[Path]) -> None:
    """A live progress display until none of ``run_paths`` is pending or running."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hpcllm.config.training import TrainingConfig
    from hpcllm.config.loader import load_model
    from hpcllm.launch.orchestrate import collect_status
    from hpcllm.rundir import RunDir

    wanted = {p.absolute() for p in run_paths}
    totals = {p: load_model(TrainingConfig, RunDir(p).config).train.steps for p in wanted}
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        tasks = {p: progress.add_task(p.name[:60], total=totals[p], info="") for p in sorted(wanted)}
        while True:
            statuses = [s for s in collect_status(results) if s.run_dir.path.absolute() in wanted]
            for s in statuses:
                loss = f" loss {s.loss:.3f}" if s.loss is not None else ""
                progress.update(tasks[s.run_dir.path.absolute()], completed=s.step or 0, info=f"{s.state}{loss}")
            if all(s.state not in ("pending", "running") for s in statuses):
                break
            time.sleep(1.0)
    failed = [s for s in statuses if s.state != "completed"]
    if failed:
        for s in failed:
            reason = s.manifest.reason if s.manifest else ""
            err_console.print(f"[red]{s.run_dir.run_id}: {s.state}[/] {reason or ''}")
        raise typer.Exit(1)


def status(root: Path = typer.Argument(RESULTS, help="Results folder (or one experiment/cluster below it).")) -> None:
    """Each run's state (pending/running/completed/failed/...), last step and loss, restarts."""
    from hpcllm.launch.orchestrate import collect_status

    try:
        rows = collect_status(root)
    except HpcllmError as exc:
        fail(exc)
    table = Table(title=f"Runs under {root}")
    for col in ("experiment", "cluster", "run", "state", "job", "step", "loss", "restarts", "reason"):
        table.add_column(col)
    colors = {"completed": "green", "running": "cyan", "pending": "yellow", "failed": "red", "cancelled": "magenta"}
    for s in rows:
        m = s.manifest
        last_restart = m.restarts[-1].reason if m and m.restarts else ""
        table.add_row(
            m.experiment if m else "?", m.cluster if m else "?", s.run_dir.run_id,
            f"[{colors.get(s.state, 'white')}]{s.state}[/]", (m.job_id if m else None) or "-",
            "-" if s.step is None else str(s.step), "-" if s.loss is None else f"{s.loss:.4f}",
            str(len(m.restarts)) if m else "0",
            f"waiting: {s.waiting_for}" if s.waiting_for else ((m.reason or last_restart) if m else ""),
        )
    console.print(table)


def cancel(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix), as `hpcllm status` shows it."),
    results: Path = typer.Option(RESULTS, "--results", help="Results root folder."),
) -> None:
    """Stop a run: a running engine checkpoints, then the job ends as cancelled."""
    from hpcllm.launch.orchestrate import cancel_run

    try:
        manifest = cancel_run(results, run_id)
    except HpcllmError as exc:
        fail(exc)
    console.print(f"cancel requested for {manifest.run_id} (job {manifest.job_id}, now {manifest.state.value})")


def logs(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    results: Path = typer.Option(RESULTS, "--results", help="Results root folder."),
    lines: int = typer.Option(40, "--lines", "-n", help="How many lines from the end."),
) -> None:
    """Print the end of the run's scheduler log (all attempts are appended to one file per job)."""
    from collections import deque

    from hpcllm.launch.orchestrate import find_run

    try:
        run_dir = find_run(results, run_id)
    except HpcllmError as exc:
        fail(exc)
    files = run_dir.log_files()
    if not files:
        fail(HpcllmError(f"{run_dir.path}: no log yet (the job has not started)"))
    latest = max(files, key=lambda p: p.stat().st_mtime)
    console.print(f"[dim]==> {latest} <==[/]")
    with open(latest, errors="replace") as fh:
        for line in deque(fh, maxlen=lines):
            console.print(line.rstrip("\n"), markup=False, highlight=False)
