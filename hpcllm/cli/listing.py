"""Print a list of runs so that nothing a user copies is cut: ids, paths and states stay whole.

On a terminal, a listing of up to ``RICH_MAX_ROWS`` rows is a rich table laid out for the console's
width before rich sees it: columns whose value is the same in every row (``common``) move into the
title, headers shorten to their abbreviations, and then whole columns are left out, least important
first, with a caption naming them. No cell is folded mid-word or cut with an ellipsis: free-text
columns (``wrap``) break at spaces only, every other column is one line. When even the columns that
must stay do not fit, the listing is plain text.

Anything longer, and anything that is not a terminal (a pipe, a log file, ``| grep``), is plain text
in aligned columns: no box drawing, no colour, every column and cell whole, and fast (rich lays out
a 10,000-row table in tens of seconds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console

RICH_MAX_ROWS = 200
_FREE_TEXT_MIN = 12  # a wrapping column narrower than this reads one word a line: leave it out instead


@dataclass
class Layout:
    """What a terminal table shows: the headers to print, the column indices kept, and what moved out."""

    headers: list[str]
    kept: list[int]
    widths: list[int]  # per kept column
    title_extra: str  # `experiment exp · cluster leonardo` for the common columns
    hidden: list[str]

    @property
    def width(self) -> int:
        return table_width(self.widths)


def table_width(widths: Sequence[int]) -> int:
    """The width of the table ``_rich`` draws: a rule under the header, no outer edge, columns
    three characters apart (a 60-character run id, its state and job fit 80 columns)."""
    return sum(widths) + 3 * max(len(widths) - 1, 0)


def layout(
    width: int,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    keep_whole: Sequence[str] = (),
    short: Mapping[str, str] | None = None,
    drop_first: Sequence[str] = (),
    wrap: Sequence[str] = (),
    common: Sequence[str] = (),
) -> Layout | None:
    """The columns that fit ``width``, or None when the ``keep_whole`` ones alone do not.

    ``short``: header -> abbreviation, used (all at once) when the full headers do not fit;
    ``drop_first``: headers left out before the others, which go from the right; ``wrap``: free-text
    headers that may break at spaces; ``common``: headers moved into the title when every row agrees.
    """
    short = short or {}
    n = len(headers)
    columns = list(range(n))
    title_bits = []
    if len(rows) > 1:
        for i, header in enumerate(headers):
            values = {row[i] for row in rows}
            if header in common and len(values) == 1:
                title_bits.append(f"{header} {next(iter(values))}")
                columns.remove(i)

    def natural(i: int, names: Sequence[str]) -> int:
        cells = [row[i] for row in rows]
        if headers[i] in wrap:
            longest_word = max((len(w) for c in cells for w in c.split()), default=0)
            return max(len(names[i]), longest_word, min(_FREE_TEXT_MIN, max(map(len, cells), default=0)))
        return max([len(names[i]), *map(len, cells)])

    def full(i: int) -> int:
        return max([len(headers[i]), *(len(row[i]) for row in rows)])

    names = list(headers)
    widths = {i: natural(i, names) for i in columns}
    if table_width([widths[i] for i in columns]) > width:
        names = [short.get(h, h) for h in headers]
        widths = {i: natural(i, names) for i in columns}
    # Columns with nothing to say (every cell empty or "-") go first, then the caller's order.
    order = [i for i in range(n) if headers[i] not in keep_whole and all(row[i] in ("", "-") for row in rows)]
    order += [headers.index(h) for h in drop_first if h in headers and h not in keep_whole]
    order += [i for i in reversed(range(n)) if headers[i] not in keep_whole and i not in order]
    order = list(dict.fromkeys(order))
    hidden = []
    for i in order:
        if table_width([widths[c] for c in columns]) <= width:
            break
        if i in columns:
            columns.remove(i)
            hidden.append(headers[i])
    if table_width([widths[c] for c in columns]) > width:
        return None
    # Room left over goes to the wrapping columns, up to their one-line width.
    spare = width - table_width([widths[c] for c in columns])
    for i in columns:
        if headers[i] in wrap:
            grow = min(spare, full(i) - widths[i])
            if grow > 0:
                widths[i] += grow
                spare -= grow
    return Layout(
        [names[i] for i in columns], columns, [widths[i] for i in columns], " · ".join(title_bits), hidden[::-1]
    )


def print_listing(
    console: Console,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    keep_whole: Sequence[str] = (),
    styles: dict[str, dict[str, str]] | None = None,
    short: Mapping[str, str] | None = None,
    drop_first: Sequence[str] = (),
    wrap: Sequence[str] = (),
    common: Sequence[str] = (),
) -> None:
    """``keep_whole``: headers of columns never left out; ``styles``: header -> {cell text -> rich
    style}; ``short``, ``drop_first``, ``wrap``, ``common``: as for ``layout``."""
    if console.is_terminal and len(rows) <= RICH_MAX_ROWS:
        fitted = layout(
            console.width,
            headers,
            rows,
            keep_whole=keep_whole,
            short=short,
            drop_first=drop_first,
            wrap=wrap,
            common=common,
        )
        if fitted is not None:
            _rich(console, title, headers, rows, fitted, wrap, styles or {})
            return
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
    fitted: Layout,
    wrap: Sequence[str],
    styles: dict[str, dict[str, str]],
) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    caption = None
    if fitted.hidden:
        caption = f"not shown at {console.width} columns: {', '.join(fitted.hidden)} (a wider terminal, or | cat)"
    if len(title) > console.width:  # a path in the title: a line of its own, never folded
        console.print(title, soft_wrap=True, highlight=False, markup=False)
        title = ""
    full_title = "\n".join(escape(t) for t in (title, fitted.title_extra) if t)
    table = Table(
        title=full_title or None,
        caption=caption,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
    )
    for i, name, width in zip(fitted.kept, fitted.headers, fitted.widths, strict=True):
        if headers[i] in wrap:
            table.add_column(name, overflow="fold", min_width=width, max_width=width)  # fold: only a word > width
        else:
            table.add_column(name, no_wrap=True, min_width=width)
    for row in rows:
        cells = []
        for i in fitted.kept:
            header, cell = headers[i], row[i]
            style = styles.get(header, {}).get(cell)
            cells.append(f"[{style}]{escape(cell)}[/]" if style else escape(cell))
        table.add_row(*cells)
    console.print(table)
