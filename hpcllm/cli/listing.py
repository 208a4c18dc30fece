"""Print a list of runs so that nothing a user copies is cut: run ids and states stay whole.

On a terminal, a listing of up to ``RICH_MAX_ROWS`` rows is a rich table whose key columns never
wrap or shorten (other columns give way). Anything longer, and anything that is not a terminal (a
pipe, a log file, ``| grep``), is plain text in aligned columns: no box drawing, no colour, no
truncation at 80 columns, and fast (rich lays out a 10,000-row table in tens of seconds).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console

RICH_MAX_ROWS = 200


def print_listing(
    console: Console,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    keep_whole: Sequence[str] = (),
    styles: dict[str, dict[str, str]] | None = None,
) -> None:
    """``keep_whole``: headers of columns never cut; ``styles``: header -> {cell text -> rich style}."""
    if console.is_terminal and len(rows) <= RICH_MAX_ROWS:
        _rich(console, title, headers, rows, keep_whole, styles or {})
    else:
        # Straight to the console's file: even console.out lays the text out again (~0.2 s for 10,000 rows).
        console.file.write(plain_listing(title, headers, rows) + "\n")


def plain_listing(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns separated by two spaces; every cell complete."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    last = len(headers) - 1

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c if i == last else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    return "\n".join([title, line(headers), *(line(row) for row in rows)])


def _rich(
    console: Console,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    keep_whole: Sequence[str],
    styles: dict[str, dict[str, str]],
) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(title))  # Text: a run id or a path with brackets is not markup
    for i, header in enumerate(headers):
        if header in keep_whole:
            width = max([len(header), *(len(row[i]) for row in rows)])
            table.add_column(header, no_wrap=True, min_width=width)
        else:
            table.add_column(header, overflow="fold")
    for row in rows:
        table.add_row(
            *(
                Text(cell, style=styles.get(header, {}).get(cell) or "")
                for header, cell in zip(headers, row, strict=True)
            )
        )
    console.print(table)
