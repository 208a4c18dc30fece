"""``hpcllm report``: one self-contained HTML page of a results folder (tables, plots, failures)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from hpcllm.cli.common import (
    check_results_root,
    columns_spelling,
    err_console,
    fail,
    missing_path_message,
    paused_gc,
    results_option,
    results_root,
    warn_problems,
)
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

    root = results_root(results, old_root, "report")
    columns = columns_spelling(columns, old_columns)
    if not root.exists():
        fail(HpcllmError(missing_path_message(root, "the results folder (submit writes runs there)")))
    check_results_root(root)
    try:
        with err_console.status(Text(f"reading {root} and drawing the plots")):
            result = write_report(root, output, columns)
    except (ValueError, HpcllmError) as exc:  # HpcllmError: a full or read-only disk, in one line
        fail(exc)
    warn_problems(result.problems)
    counts = ", ".join(f"{n} {state}" for state, n in result.counts.items()) or "no runs"
    err_console.print(f"wrote {output}: {len(result.runs)} runs ({counts})", highlight=False, soft_wrap=True)
