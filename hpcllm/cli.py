"""The ``hpcllm`` command. Thin: each command parses, calls one function, prints with rich.

Nothing here imports torch: the commands must answer in a fraction of a second on a login node.
"""

from __future__ import annotations

import json
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from hpcllm import __version__
from hpcllm.cli_ckpt import ckpt_app
from hpcllm.cli_common import console, err_console, fail
from hpcllm.cli_data import data_app
from hpcllm.cli_model import model_app
from hpcllm.errors import HpcllmError

app = typer.Typer(
    name="hpcllm",
    help="Run LLM pretraining scaling experiments on SLURM clusters with the bundled FSDP2 engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
clusters_app = typer.Typer(help="List and inspect cluster profiles (clusters/*.yaml).", invoke_without_command=True)
app.add_typer(clusters_app, name="clusters")
# Sub-apps of their own modules; each imports torch only inside its commands.
app.add_typer(data_app, name="data")
app.add_typer(ckpt_app, name="ckpt")
app.add_typer(model_app, name="model")


RESULTS = Path("results")


def _version(value: bool) -> None:
    if value:
        console.print(f"hpcllm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """hpcllm: experiment grids -> sbatch scripts -> torchrun + FSDP2 -> scaling tables."""


# --- clusters -----------------------------------------------------------------------------------
@clusters_app.callback()
def clusters_list(ctx: typer.Context) -> None:
    """Without a subcommand: a table of every profile in clusters/."""
    if ctx.invoked_subcommand is not None:
        return
    from hpcllm.config.cluster import available_clusters, load_cluster

    table = Table(title="Cluster profiles")
    for col in ("name", "scheduler", "partition", "GPU", "GPUs/node", "cores/node", "max nodes", "QoS"):
        table.add_column(col)
    try:
        for name in available_clusters():
            c = load_cluster(name)
            table.add_row(
                c.name, c.scheduler, c.partition or "-", c.gpu_type, str(c.gpus_per_node),
                str(c.cpus_per_node), str(c.max_nodes),
                ", ".join(f"{q} ({s.max_time})" for q, s in c.qos.items()) or "-",
            )
    except HpcllmError as exc:
        fail(exc)
    console.print(table)


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


# --- submit / status / cancel / logs -------------------------------------------------------------
@app.command()
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
) -> None:
    """Expand an experiment grid, render one sbatch script per point and submit them."""
    from hpcllm.launch.orchestrate import submit_experiment

    try:
        result = submit_experiment(
            experiment, cluster, results, account=account, dry_run=dry_run, retry_failed=retry_failed,
            after=after,
        )
    except HpcllmError as exc:
        fail(exc)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}")
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


@app.command()
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


@app.command()
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


@app.command()
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


# --- collect --------------------------------------------------------------------------------------
class TableFormat(str, Enum):
    markdown = "markdown"
    csv = "csv"
    json = "json"


@app.command()
def collect(
    root: Path = typer.Argument(RESULTS, help="Results folder to scan for completed runs."),
    fmt: TableFormat = typer.Option(TableFormat.markdown, "--format", "-f", help="Output format."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the table to this file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also save a scaling plot (PNG)."),
    check: bool = typer.Option(
        False, "--check", help="Check runs against the experiments' `expected:` references; exit 1 on a miss."
    ),
) -> None:
    """The seed's scaling table (one row per completed run) as markdown, csv or json."""
    from hpcllm.collect.table import collect_table, format_table

    if not root.exists():
        fail(HpcllmError(f"{root}: no such folder"))
    problems: list[str] = []
    table = collect_table(root, problems)
    for problem in problems:
        err_console.print(f"[yellow]skipped:[/] {problem}", highlight=False)
    text = format_table(table, fmt.value)
    if output:
        from hpcllm.fsutil import atomic_write_text

        atomic_write_text(output, text)
        err_console.print(f"wrote {len(table)} rows to {output}")
    else:
        console.print(text, markup=False, highlight=False, end="", soft_wrap=True)
    if plot:
        from hpcllm.collect.plot import plot_scaling

        err_console.print(f"plot: {plot_scaling(table, plot)}")
    if table.empty:
        err_console.print(f"[yellow]no completed runs under {root}[/]")
    if check:
        _check_references(root)


def _check_references(root: Path) -> None:
    from hpcllm.collect.references import check_references

    verdicts = check_references(root)
    table = Table(title="Performance references")
    for col in ("run", "metric", "measured", "reference", "bounds", "verdict"):
        table.add_column(col)
    for v in verdicts:
        lo, hi = v.reference.bounds()
        bounds = f"[{'-inf' if lo is None else f'{lo:.4g}'}, {'inf' if hi is None else f'{hi:.4g}'}]"
        measured = "n/a" if v.measured is None else f"{v.measured:.4g}"
        table.add_row(v.run_id, v.metric, measured, f"{v.reference.value:.4g}", bounds,
                      "[green]ok[/]" if v.ok else "[red]FAIL[/]")
    err_console.print(table if verdicts else "[yellow]no references to check (no `expected:` for these runs)[/]")
    if any(not v.ok for v in verdicts):
        raise typer.Exit(1)


# --- schema ---------------------------------------------------------------------------------------
class SchemaKind(str, Enum):
    cluster = "cluster"
    experiment = "experiment"
    training = "training"


@app.command()
def schema(kind: SchemaKind = typer.Argument(..., help="Which file: cluster, experiment or training (run.yaml).")) -> None:
    """JSON Schema of a YAML file type, for editor completion (e.g. yaml-language-server)."""
    from hpcllm.config.cluster import ClusterProfile
    from hpcllm.config.experiment import Experiment
    from hpcllm.config.training import TrainingConfig

    model = {"cluster": ClusterProfile, "experiment": Experiment, "training": TrainingConfig}[kind.value]
    console.print_json(json.dumps(model.model_json_schema()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
