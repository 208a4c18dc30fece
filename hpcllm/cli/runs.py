"""``hpcllm submit|status|cancel|logs``: the life of runs, from grid to finished job."""

from __future__ import annotations

import os
from collections import Counter
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from hpcllm.cli.common import (
    EXIT_NONE_SUBMITTED,
    EXIT_SOME_REFUSED,
    check_results_root,
    console,
    err_console,
    fail,
    int64,
    json_text,
    paused_gc,
    results_option,
    results_root,
    warn_problems,
)
from hpcllm.cli.listing import print_listing
from hpcllm.cli.waiting import wait_for
from hpcllm.errors import HpcllmError
from hpcllm.fsutil import read_json
from hpcllm.rundir import TENSORBOARD_DIR, describe_stragglers

if TYPE_CHECKING:
    from hpcllm.launch.memcheck import Unfit
    from hpcllm.launch.orchestrate import SubmitResult
    from hpcllm.launch.runstatus import RunStatus
    from hpcllm.rundir import RunDir


def submit(
    experiment: Path = typer.Argument(..., help="Experiment YAML, e.g. experiments/smoke.yaml."),
    cluster: str = typer.Option(..., "--cluster", "-c", help="Cluster profile name (see `hpcllm clusters`)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Render scripts and run dirs, submit nothing."),
    account: str | None = typer.Option(None, "--account", "-A", help="Project to charge (beats $HPCLLM_ACCOUNT)."),
    results: Path | None = results_option(
        None, "Results root folder (default: $HPCLLM_RESULTS, the profile's paths.results, ./results)."
    ),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Resubmit failed and cancelled runs."),
    wait: bool = typer.Option(False, "--wait", help="Show progress until every run has finished."),
    after: list[str] | None = typer.Option(
        None, "--after", metavar="JOBID", help="SLURM job id every run waits for (afterok); repeat for several."
    ),
    no_memory_check: bool = typer.Option(
        False, "--no-memory-check", help="Also submit points whose memory estimate exceeds the GPU memory."
    ),
    over_budget: bool = typer.Option(
        False, "--over-budget", help="Submit even when the grid exceeds the account's remaining GrpTRESMins."
    ),
    preflight: bool | None = typer.Option(
        None,
        "--preflight/--no-preflight",
        help="Measure the nodes before training (default: the profile's node count).",
    ),
    spare_nodes: int = typer.Option(
        0, "--spare-nodes", min=0, callback=int64, help="Ask for this many extra nodes; train on the best."
    ),
) -> None:
    """Expand an experiment grid, render one sbatch script per point and submit them."""
    from hpcllm.cli.plan import budget_gate
    from hpcllm.launch.orchestrate import submit_experiment

    budget_gate(
        experiment,
        cluster,
        account,
        results,
        over_budget=over_budget,
        dry_run=dry_run,
        memory_check=not no_memory_check,
    )

    try:
        result = submit_experiment(
            experiment,
            cluster,
            results,
            account=account,
            dry_run=dry_run,
            retry_failed=retry_failed,
            after=after,
            memory_check=not no_memory_check,
            resources={
                **({"preflight": preflight} if preflight is not None else {}),
                **({"spare_nodes": spare_nodes} if spare_nodes else {}),
            },
        )
    except HpcllmError as exc:
        fail(exc)
    for warning in result.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    if result.unfit:
        _print_unfit(result.unfit)
    rows = []
    for run in result.runs:
        t, p = run.spec.training, run.spec.training.parallel
        rows.append(
            [
                run.spec.run_id,
                str(run.spec.resources.nodes),
                str(run.spec.world_size),
                str(t.train.micro_batch_size),
                str(t.train.grad_accum),
                str(t.train.global_batch_size),
                p.sharding,
                p.activation_checkpointing,
                f"{run.action} {run.detail}".strip(),
                run.job_id or "-",
            ]
        )
    if rows:
        print_listing(
            console,
            f"{experiment} on {cluster}: {len(result.runs)} run{'' if len(result.runs) == 1 else 's'}",
            ("run", "nodes", "ranks", "MBS", "GA", "GBS", "sharding", "AC", "action", "job"),
            rows,
            keep_whole=("run", "job"),
        )
    _print_plan_notes(result)
    if result.runs:
        console.print(f"run directories: {result.runs[0].run_dir.path.parent}", markup=False)
    if wait and not dry_run:
        wait_for(result.results_root, [r.run_dir.path for r in result.runs])
    code = submit_exit_code(result)
    if code:
        refused = len(result.refused) + len(result.unfit)
        err_console.print(
            f"[yellow]{refused} of {refused + len(result.runs)} points refused[/] (exit {code})", soft_wrap=True
        )
        raise typer.Exit(code)


def submit_exit_code(result: SubmitResult) -> int:
    """0: nothing refused; EXIT_SOME_REFUSED: some points refused, others planned; EXIT_NONE_SUBMITTED: all refused."""
    if not result.refused and not result.unfit:
        return 0
    return EXIT_SOME_REFUSED if result.runs else EXIT_NONE_SUBMITTED


def _print_plan_notes(result: SubmitResult) -> None:
    """Points no QoS admits, and what the checkpoints take where they go."""
    from hpcllm.launch.storage import human_bytes

    for refused in result.refused:
        point = ", ".join(f"{k}={v}" for k, v in refused.point.items()) or "(base)"
        err_console.print(f"[yellow]refused[/] {{{point}}}: {refused.reason}", highlight=False, soft_wrap=True)
    if result.storage is not None and result.storage.runs:
        room = f"; {human_bytes(result.room.free)} free ({result.room.source})" if result.room else ""
        console.print(
            f"storage: {result.storage.describe()} under {result.results_root}{room}", highlight=False, soft_wrap=True
        )


def _print_unfit(unfit: list[Unfit]) -> None:
    """The points left out for memory, each with its estimate's largest terms and what would fit."""
    rows = []
    for u in unfit:
        t, p = u.spec.training, u.spec.training.parallel
        rows.append(
            [
                u.spec.run_id,
                str(u.spec.world_size),
                str(t.train.micro_batch_size),
                p.sharding,
                p.activation_checkpointing,
                u.reason,
            ]
        )
    print_listing(
        err_console,
        f"{len(unfit)} points skipped: estimated over the GPU memory (--no-memory-check submits them)",
        ("run", "ranks", "MBS", "sharding", "AC", "why"),
        rows,
        keep_whole=("run",),
    )
    err_console.print(
        "the breakdown of one point: hpcllm model info NAME --mbs … --gpus … --cluster … (docs/memory.md)",
        soft_wrap=True,
    )


class StatusFormat(str, Enum):
    table = "table"
    json = "json"


# Headers as a narrow terminal shows them (docs/cli.md lists what each means).
STATUS_SHORT = {"experiment": "exp", "restarts": "rst", "ran with": "sw"}

STATE_STYLES = {
    "completed": "green",
    "running": "cyan",
    "pending": "yellow",
    "failed": "red",
    "submit_failed": "red",
    "cancelled": "magenta",
}


@paused_gc()
def status(
    old_root: Path | None = typer.Argument(None, hidden=True, help="Deprecated: use --results."),
    results: Path | None = results_option(None, "Results folder (or one experiment/cluster below it)."),
    fmt: StatusFormat = typer.Option(
        StatusFormat.table, "--format", "-f", help="table (ends with the count per state), or json for scripts."
    ),
) -> None:
    """Each run's state (pending/running/completed/failed/...), last step and loss, restarts."""
    from hpcllm.launch.runstatus import collect_status

    root = results_root(results, old_root, "status")
    check_results_root(root)
    skipped: list[str] = []
    try:
        statuses = collect_status(root, skipped)
    except HpcllmError as exc:
        fail(exc)
    for line in skipped:
        err_console.print(f"[yellow]skipped:[/] {escape(line)}", highlight=False, soft_wrap=True)
    warn_problems([problem for s in statuses for problem in s.problems], "warning")
    records = _status_records(statuses)
    if fmt == StatusFormat.json:
        console.out(json_text(records), highlight=False)
        return
    headers = ("experiment", "cluster", "run", "state", "job", "step", "loss", "restarts", "reason", "ran with")
    rows = [
        [
            r["experiment"] or "?",
            r["cluster"] or "?",
            r["run_id"],
            r["state"],
            r["job_id"] or "-",
            "-" if r["step"] is None else str(r["step"]),
            "-" if not isinstance(r["loss"], (int, float)) else f"{r['loss']:.4f}",
            str(r["restarts"]),
            f"waiting: {r['waiting_for']}" if r["waiting_for"] else r["reason"] or "",
            r["ran_with"],
        ]
        for r in records
    ]
    print_listing(
        console,
        f"Runs under {root}",
        headers,
        rows,
        keep_whole=("run", "state", "job"),
        styles={"state": STATE_STYLES},
        short=STATUS_SHORT,
        drop_first=("ran with", "restarts", "loss", "step", "cluster", "experiment"),
        wrap=("reason",),
        common=("experiment", "cluster"),
    )
    counts = Counter(r["state"] for r in records)
    console.out(
        f"{len(records)} run{'' if len(records) == 1 else 's'}: "
        + (", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"),
        highlight=False,
    )
    _print_artifacts(root, [s.run_dir for s in statuses])


def _print_artifacts(root: Path, run_dirs: list[RunDir]) -> None:
    """Where the profiler traces are, and how to open the TensorBoard event files."""
    for rd in run_dirs:
        traces = rd.profile_files()
        if traces:
            console.print(
                f"{rd.run_id}: profiler traces in {rd.profile}/: {', '.join(p.name for p in traces)}",
                soft_wrap=True,
                highlight=False,
            )
    if any(os.path.isdir(rd.file(TENSORBOARD_DIR)) for rd in run_dirs):
        console.print(f"TensorBoard: tensorboard --logdir {root}", soft_wrap=True, highlight=False)


def _slow_nodes(m: Any) -> str | None:
    """The nodes the last pre-flight named slow (manifest ``slow_nodes``), for the reason column."""
    return f"pre-flight: slow {', '.join(m.slow_nodes)}" if m.slow_nodes else None


def _stragglers(s: RunStatus) -> str | None:
    """A running run's stragglers (the watchdog's stragglers.json; a finished run's are in its summary)."""
    record = read_json(s.run_dir.stragglers) if s.state == "running" else None
    return f"stragglers: {describe_stragglers(record['ranks'])}" if record and record.get("ranks") else None


def _status_records(statuses: list[RunStatus]) -> list[dict[str, Any]]:
    """``collect_status`` as plain data (``hpcllm status --format json``; the table prints the same)."""
    out = []
    for s in statuses:
        m = s.manifest
        last_restart = m.restarts[-1].reason if m and m.restarts else None
        out.append(
            {
                "experiment": m.experiment if m else None,
                "cluster": m.cluster if m else None,
                "run_id": s.run_dir.run_id,
                "path": str(s.run_dir.path),
                "state": s.state,
                "job_id": m.job_id if m else None,
                "step": s.step,
                "loss": s.loss,
                "restarts": len(m.restarts) if m else 0,
                "reason": "; ".join(filter(None, [m.reason or last_restart, _slow_nodes(m), _stragglers(s)])) or None
                if m
                else None,
                "waiting_for": s.waiting_for,
                "ran_with": s.software,
            }
        )
    return out


def cancel(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix), as `hpcllm status` shows it."),
    results: Path = results_option(),
) -> None:
    """Stop a run: a running engine checkpoints, then the job ends as cancelled."""
    from hpcllm.launch.runstatus import cancel_run

    try:
        manifest = cancel_run(results, run_id)
    except HpcllmError as exc:
        fail(exc)
    console.print(
        f"cancel requested for {manifest.run_id} (job {manifest.job_id}, now {manifest.state.value})", markup=False
    )


def logs(
    run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
    results: Path = results_option(),
    lines: int = typer.Option(40, "--lines", "-n", min=0, max=100_000, help="How many lines from the end."),
) -> None:
    """Print the end of the run's scheduler log (all attempts are appended to one file per job)."""
    from hpcllm import runfiles
    from hpcllm.launch.manifest import load_manifest
    from hpcllm.launch.runstatus import find_run

    try:
        run_dir = find_run(results, run_id)
    except HpcllmError as exc:
        fail(exc)
    try:  # the manifest names the current job; a damaged one leaves the newest log by job id
        manifest = load_manifest(run_dir)
    except HpcllmError:
        manifest = None
    latest = run_dir.latest_log(manifest.job_id if manifest else None)
    if latest is None:
        fail(HpcllmError(f"{run_dir.path}: no log yet (the job has not started)"))
    console.print(f"[dim]==> {escape(str(latest))} <==[/]", soft_wrap=True, highlight=False)  # a path: never wrapped
    try:  # the tail only, never blocking: a log can be gigabytes, and a FIFO in its place must not hang
        tail = runfiles.tail_text(latest, max(1 << 16, lines * 1024))
    except runfiles.RunFileProblem as exc:
        fail(exc)
    for line in tail.splitlines()[-lines:] if lines else []:
        console.print(line, markup=False, highlight=False)
