"""``hpcllm report``: one self-contained HTML page of a results folder (tables, plots, failures)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from hpcllm.cli.common import RESULTS, check_results_root, err_console, fail, paused_gc, warn_problems
from hpcllm.errors import HpcllmError


@paused_gc()
def report(
    root: Path = typer.Argument(RESULTS, help="Results folder (or one experiment/cluster below it)."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="The HTML file to write."),
    columns: str | None = typer.Option(None, "--columns", "-c", help="Columns of the scaling table, as for `collect`."),
) -> None:
    """Write one HTML page (no network needed to view it): runs per state, the scaling table, scaling
    plots and loss curves, the seed comparison, failures with their reasons, every run's details."""
    from hpcllm.collect.report import write_report

    check_results_root(root)
    try:
        with err_console.status(Text(f"reading {root} and drawing the plots")):
            result = write_report(root, output, columns)
    except (ValueError, HpcllmError) as exc:  # HpcllmError: a full or read-only disk, in one line
        fail(exc)
    warn_problems(result.problems)
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items()) or "no runs"
    err_console.print(f"wrote {output}: {len(result.runs)} runs ({counts})", highlight=False, soft_wrap=True)
