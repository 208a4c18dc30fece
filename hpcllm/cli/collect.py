"""``hpcllm collect``: the scaling table of finished runs, plots, the seed comparison and the
reference check."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from hpcllm.cli.common import (
    err_console,
    fail,
    paused_gc,
    results_option,
    table_inputs,
    warn_problems,
)
from hpcllm.collect.empty import no_search, none_completed, nothing_to_collect
from hpcllm.collect.formats import FORMATS, TableFormat
from hpcllm.errors import HpcllmError
from hpcllm.rundir import SUMMARY_KIND_PROBE

if TYPE_CHECKING:
    import pandas as pd

    from hpcllm.collect.table import Table
    from hpcllm.rundir import RunDir


class CompareWith(str, Enum):
    seed = "seed"


@paused_gc()
def collect(
    old_root: Path | None = typer.Argument(None, hidden=True, help="Deprecated: use --results."),
    results: Path | None = results_option(
        None, "Results folder to scan for completed runs (default: $HPCLLM_RESULTS, else ./results)."
    ),
    fmt: TableFormat = typer.Option(
        FORMATS[0],
        "--format",
        "-f",
        help="markdown (the seed's layout), csv, json, or latex (booktabs).",
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the table to this file."),
    columns: str | None = typer.Option(
        None,
        "--columns",
        "-k",
        help="Comma-separated column ids or groups: seed, default, all, swept; a grid key (optim.lr); "
        "summary.<key>. Ids: params, gpus, samples_per_s, mfu, mfu_with_head, hfu, loss, eval_loss, "
        "restarts, wall_time, run, ... (docs/reports.md).",
    ),
    old_columns: str | None = typer.Option(None, "-c", hidden=True, help="Deprecated: use -k."),
    where: str | None = typer.Option(
        None, "--where", "-w", help="Keep rows where this is true, e.g. \"gpus >= 16 and sharding == 'FULL_SHARD'\"."
    ),
    sort: str | None = typer.Option(
        None, "--sort", "-s", help="Column ids to sort by; -id for descending, e.g. gpus,-mfu."
    ),
    compare: CompareWith | None = typer.Option(
        None, "--compare", help="seed: our runs beside the seed's published rows, with ours/seed per row."
    ),
    plot: Path | None = typer.Option(None, "--plot", help="Also save the scaling plots (PNG)."),
    loss_plot: Path | None = typer.Option(None, "--loss-plot", help="Also save the loss curves (PNG)."),
    check: bool = typer.Option(
        False, "--check", help="Check runs against the experiments' `expected:` references; exit 1 on a miss."
    ),
    best: bool = typer.Option(
        False, "--best", help="Only the best run of each search group (`hpcllm search`), with its parameters."
    ),
    fits: bool = typer.Option(
        False,
        "--fits",
        help="Also print each setup's scaling fit: efficiency, runs far below it, the next sizes' samples/s "
        "(with --compare seed: the seed's too).",
    ),
) -> None:
    """The seed's scaling table (one row per completed run) and more columns, as markdown, csv, json or LaTeX."""
    from hpcllm.collect.records import scan
    from hpcllm.collect.table import build_table, completed_of, format_table

    root, columns = table_inputs(results, old_root, columns, old_columns, "collect")
    problems: list[str] = []
    skipped: list[str] = []
    scanned = scan(root, skipped)
    warn_problems(skipped)  # folders that could not be read: said first, whatever follows
    if not scanned:
        fail(HpcllmError(nothing_to_collect(root, len(skipped))))
    records = completed_of(scanned, problems)
    probes = [r.run_dir for r in scanned if r.summary is None or r.summary.get("kind") == SUMMARY_KIND_PROBE]
    table: Table | pd.DataFrame
    try:
        if best:
            from hpcllm.collect.best import best_table

            table = best_table(root, problems)
            if len(table) == 0:
                fail(HpcllmError(no_search(root, scanned)))
        elif not records and compare is None and not check:
            # Nothing for the table: the probes' own table, if any (explore-batch), else say why.
            if any(r.summary and r.summary.get("kind") == SUMMARY_KIND_PROBE for r in scanned):
                err_console.print(f"[yellow]no completed runs under {root}[/]: only probes", soft_wrap=True)
                _show_probes(probes)
                return
            warn_problems(problems + [p for r in scanned for p in r.problems])  # each damaged run once, first
            fail(HpcllmError(none_completed(root, scanned)))
        elif compare is not None:
            from hpcllm.collect.compare import compare_with_seed

            comparison = compare_with_seed(records, where)
            table = comparison.table
        else:
            table = build_table(records, columns, where=where, sort=sort, problems=problems)
    except (ValueError, HpcllmError) as exc:
        fail(exc)
    # and what the table's columns found on reading manifests (read only when a column needs one)
    warn_problems(problems + [p for r in records for p in r.problems])
    text = format_table(table, fmt)
    if output:
        from hpcllm.fsutil import atomic_write_text

        try:
            atomic_write_text(output, text)
        except HpcllmError as exc:  # a full or read-only disk, a path too long: one line
            fail(exc)
        err_console.print(f"wrote {len(table)} rows to {output}", highlight=False, soft_wrap=True)
    else:
        sys.stdout.write(text)  # the table is data: as it is (rich would wrap 10,000 rows for ~0.1 s)
    if compare is not None and not best:
        err_console.print(comparison.summary_line(), highlight=False, soft_wrap=True)
    if not best:
        _show_fits(records, seed=compare is not None, listing=fits)
    if plot or loss_plot:
        try:
            _plots(records, plot, loss_plot)
        except HpcllmError as exc:
            fail(exc)
    if best and len(table) == 0:
        err_console.print(f"[yellow]no search with a finished trial under {escape(str(root))}[/]", soft_wrap=True)
    elif not records:
        err_console.print(f"[yellow]no completed runs under {escape(str(root))}[/]", soft_wrap=True)
    # A finished training run is no probe (a probe's summary says kind: probe): only runs without a
    # summary yet, and probes, may have a probe.json.
    _show_probes(probes)
    if check:
        _check_references(root)


def _plots(records: list, plot: Path | None, loss_plot: Path | None) -> None:
    from hpcllm.collect.plot import plot_losses, plot_scaling

    if plot:
        err_console.print(f"plot: {plot_scaling(records, plot)}", highlight=False, soft_wrap=True)
    if loss_plot:
        err_console.print(f"loss curves: {plot_losses(records, loss_plot)}", highlight=False, soft_wrap=True)


def _show_fits(records: list, seed: bool, listing: bool) -> None:
    """Runs far below their setup's scaling fit (hpcllm.collect.fits), always; the fits with --fits."""
    from hpcllm.cli.listing import print_listing
    from hpcllm.collect.fits import FIT_HEADERS, fit_records, fit_rows, fit_seed

    ours = fit_records(records)
    for fit in ours:
        for v in fit.flagged:
            err_console.print(
                f"[yellow]below the scaling fit:[/] {v.point.name} ({fit.key.label()}, {v.point.gpus} GPUs): "
                f"{v.point.samples_per_s:.4g} samples/s, {v.note()} of its smaller runs ({v.predicted:.4g})",
                highlight=False,
                soft_wrap=True,
            )
    if not listing:
        return
    for title, fits in (("Scaling fits", ours), ("Scaling fits of the seed's rows", fit_seed() if seed else [])):
        if fits:
            print_listing(err_console, title, FIT_HEADERS, fit_rows(fits), keep_whole=("GPUs",))


def _show_probes(run_dirs: list[RunDir]) -> None:
    """Batch-size probes among ``run_dirs`` (hpcllm explore-batch), as their own table on stderr."""
    from hpcllm.cli.listing import print_listing
    from hpcllm.collect.probes import COLUMNS, collect_probes

    problems: list[str] = []
    probes = collect_probes(run_dirs, problems)
    warn_problems(problems)
    if probes:
        rows = [["" if row[c] is None else str(row[c]) for c in COLUMNS] for row in probes]
        print_listing(err_console, "Batch-size probes (* = fastest that fitted)", COLUMNS, rows, keep_whole=("Probe",))


def _check_references(root: Path) -> None:
    from hpcllm.cli.listing import print_listing
    from hpcllm.collect.references import check_references

    verdicts = check_references(root)
    if not verdicts:
        err_console.print("[yellow]no references to check (no `expected:` for these runs)[/]")
        return
    rows = []
    for v in verdicts:
        lo, hi = v.reference.bounds()
        bounds = f"[{'-inf' if lo is None else f'{lo:.4g}'}, {'inf' if hi is None else f'{hi:.4g}'}]"
        measured = "n/a" if v.measured is None else f"{v.measured:.4g}"
        rows.append(
            [
                v.run_id,
                v.metric,
                measured,
                f"{v.reference.value:.4g}",
                bounds,
                v.reference.source or "",
                "ok" if v.ok else "FAIL",
            ]
        )
    print_listing(
        err_console,
        "Performance references",
        ("run", "metric", "measured", "reference", "bounds", "source", "verdict"),
        rows,
        keep_whole=("run", "verdict"),
        styles={"verdict": {"ok": "green", "FAIL": "red"}},
    )
    if any(not v.ok for v in verdicts):
        raise typer.Exit(1)
