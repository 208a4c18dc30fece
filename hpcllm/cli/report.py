"""``hpcllm report``: one self-contained HTML page of a results folder (tables, plots, failures)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from hpcllm.cli.common import err_console, fail, paused_gc, results_option, table_inputs, warn_problems
from hpcllm.errors import HpcllmError


@paused_gc()
def report(
    old_root: Path | None = typer.Argument(None, hidden=True, help="Deprecated: use --results."),
    results: Path | None = results_option(None, "Results folder (or one experiment/cluster below it)."),
    output: Path = typer.Option(Path("report.html"), "--output", "-o", help="The HTML file to write."),
    columns: str | None = typer.Option(None, "--columns", "-k", help="Columns of the scaling table, as for `collect`."),
    old_columns: str | None = typer.Option(None, "-c", hidden=True, help="Deprecated: use -k."),
) -> None:
    """Write one HTML page (no network needed to view it): runs per state, the scaling table, scaling
    plots and loss curves, the seed comparison, failures with their reasons, every run's details."""
    from hpcllm.collect.report import write_report

    root, columns = table_inputs(results, old_root, columns, old_columns, "report")
    try:
        with err_console.status(Text(f"reading {root} and drawing the plots")):
            result = write_report(root, output, columns)
    except (ValueError, HpcllmError) as exc:  # HpcllmError: a full or read-only disk, in one line
        fail(exc)
    warn_problems(result.problems)
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items()) or "no runs"
    err_console.print(
        f"wrote {output}: {len(result.runs)} run{'' if len(result.runs) == 1 else 's'} ({counts})",
        highlight=False,
        soft_wrap=True,
    )
