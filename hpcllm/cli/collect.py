"""``hpcllm collect``: the scaling table of finished runs, plots, and the reference check."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from hpcllm.cli.common import RESULTS, console, err_console, fail
from hpcllm.errors import HpcllmError


class TableFormat(str, Enum):
    markdown = "markdown"
    csv = "csv"
    json = "json"


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
    _show_probes(root)
    if check:
        _check_references(root)


def _show_probes(root: Path) -> None:
    """Batch-size probes under ``root`` (hpcllm explore-batch), as their own table on stderr."""
    from hpcllm.collect.probes import collect_probes

    problems: list[str] = []
    probes = collect_probes(root, problems)
    for problem in problems:
        err_console.print(f"[yellow]skipped:[/] {problem}", highlight=False)
    if probes.empty:
        return
    table = Table(title="Batch-size probes (* = fastest that fitted)")
    for col in probes.columns:
        table.add_column(col)
    for record in probes.itertuples(index=False):
        table.add_row(*("" if v is None or (isinstance(v, float) and v != v) else str(v) for v in record))
    err_console.print(table)


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
