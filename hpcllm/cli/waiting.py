"""``hpcllm submit --wait``: progress until the submitted runs have ended (a live display on a
terminal, a line per state change in a log), exit 1 when any did not complete."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from hpcllm.cli.common import console, err_console

if TYPE_CHECKING:
    from hpcllm.launch.runstatus import RunStatus


def wait_for(results: Path, run_paths: list[Path]) -> None:
    """Show progress until none of ``run_paths`` is pending or running: a live display on a
    terminal, a line per state change in a log."""
    from hpcllm.config.loader import load_model
    from hpcllm.config.training import TrainingConfig
    from hpcllm.rundir import RunDir

    wanted = {p.absolute() for p in run_paths}
    totals = {p: load_model(TrainingConfig, RunDir(p).config).train.steps for p in wanted}
    # A log or a pipe gets one whole line per change: no live display to cut.
    statuses = _wait_live(results, wanted, totals) if console.is_terminal else _wait_plain(results, wanted, totals)
    failed = [s for s in statuses if s.state != "completed"]
    if failed:
        for s in failed:
            reason = s.manifest.reason if s.manifest else ""
            err_console.print(f"[red]{escape(s.run_dir.run_id)}: {s.state}[/] {escape(reason or '')}", soft_wrap=True)
        raise typer.Exit(1)


def _wait_live(results: Path, wanted: set[Path], totals: dict[Path, int]) -> list[RunStatus]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hpcllm.launch.runstatus import collect_status

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks = {p: progress.add_task(p.name[:60], total=totals[p], info="") for p in sorted(wanted)}
        while True:
            statuses = [s for s in collect_status(results) if s.run_dir.path.absolute() in wanted]
            for s in statuses:
                loss = f" loss {s.loss:.3f}" if s.loss is not None else ""
                progress.update(tasks[s.run_dir.path.absolute()], completed=s.step or 0, info=f"{s.state}{loss}")
            if all(s.state not in ("pending", "running") for s in statuses):
                return statuses
            time.sleep(1.0)


def _wait_plain(results: Path, wanted: set[Path], totals: dict[Path, int]) -> list[RunStatus]:
    """Print ``<run id>: <state> [step n/total, loss x]`` when a run's state changes."""
    from hpcllm.launch.runstatus import collect_status

    said: dict[Path, str] = {}
    while True:
        statuses = [s for s in collect_status(results) if s.run_dir.path.absolute() in wanted]
        for s in statuses:
            path = s.run_dir.path.absolute()
            if said.get(path) != s.state:
                said[path] = s.state
                progress = "" if s.step is None else f" step {s.step}/{totals[path]}"
                loss = "" if s.loss is None else f" loss {s.loss:.3f}"
                console.out(f"{s.run_dir.run_id}: {s.state}{progress}{loss}", highlight=False)
        if all(s.state not in ("pending", "running") for s in statuses):
            return statuses
        time.sleep(1.0)
