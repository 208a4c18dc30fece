"""Build the scaling table from completed runs and write it as markdown, csv, json or LaTeX.

The default columns start with exactly the seed's (Modalities' README), in its order, so our tables
can be put next to theirs; ``--columns seed`` prints only those. MFU and the other figures come from
the engine's ``summary.json``, which computed them with ``hpcllm.perf``.

Rows are plain dicts (column id -> value): ``collect`` over 10,000 runs must answer in well under a
second, and importing pandas alone takes a third of that. pandas is imported for LaTeX (its Styler
writes booktabs tables) and by the plots.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpcllm.collect import columns as cols
from hpcllm.collect.formats import FORMATS
from hpcllm.collect.records import RunRecord, scan
from hpcllm.config import grid as gridlib
from hpcllm.rundir import SUMMARY_KIND_PROBE
from hpcllm.runfiles import strict_json

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

    from hpcllm.collect.fits import Verdict

COLUMNS = [cols.COLUMNS[c].header for c in cols.SEED]  # the seed's headers, in its order
DEFAULT_SORT = ["experiment", "cluster", "params", "gpus", "mbs", "sharding"]

Format = Literal["markdown", "csv", "json", "latex"]


@dataclass
class Table:
    columns: list[cols.Column]
    rows: list[dict[str, Any]] = field(default_factory=list)  # column id -> value

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def headers(self) -> list[str]:
        return [c.header for c in self.columns]

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame([[row[c.id] for c in self.columns] for row in self.rows], columns=self.headers)


def completed_records(root: Path, problems: list[str] | None = None) -> list[RunRecord]:
    """Records of the completed runs under ``root``; unusable summaries are described in ``problems``."""
    return completed_of(scan(root), problems)


def completed_of(scanned: list[RunRecord], problems: list[str] | None = None) -> list[RunRecord]:
    """The completed training runs among ``scanned`` (batch-size probes have their own table)."""
    records = []
    for record in scanned:
        if problems is not None:
            problems.extend(record.problems)
        if record.completed and (record.summary or {}).get("kind") != SUMMARY_KIND_PROBE:
            records.append(record)
    return records


def build_table(
    records: list[RunRecord],
    columns: str | None = None,
    *,
    where: str | None = None,
    sort: str | None = None,
    problems: list[str] | None = None,
) -> Table:
    """The table of ``records``: ``columns``/``where``/``sort`` as the CLI options of those names.

    A run whose summary lacks a field a column needs is left out and described in ``problems``
    (one bad run must not hide the table of the others). ValueError for a bad option.
    """
    chosen = cols.resolve(columns, records)
    fit_verdicts = _fit_verdicts(records, chosen, columns)
    if columns is None and any(v.flagged for v in fit_verdicts.values()):
        chosen.append(cols.COLUMNS["fit"])  # a run far below its setup's fit: say so unasked
    selector = _where(where, records, chosen) if where else None
    table = Table(chosen)
    getters = [(c.id, c.get) for c in chosen]
    # Grouped by experiment and cluster even where those columns are not shown (--columns seed).
    for record in sorted(records, key=lambda r: (r.experiment, r.cluster)):
        try:
            row = {column_id: get(record) for column_id, get in getters}
        except (KeyError, TypeError, ValueError) as exc:
            _note(problems, f"{record.run_dir.summary}: missing or bad field {exc}")
            continue
        if "fit" in row:
            verdict = fit_verdicts.get(record.run_id)
            row["fit"] = None if verdict is None else verdict.note() or None
        if selector is not None and not selector(record):
            continue
        table.rows.append(row)
    _sort(table, records, sort)
    return table


def _fit_verdicts(records: list[RunRecord], chosen: list[cols.Column], columns: str | None) -> dict[str, Verdict]:
    """Each run against its setup's scaling fit, when the table shows ``fit`` or may add it (default columns)."""
    if columns is not None and all(c.id != "fit" for c in chosen):
        return {}
    from hpcllm.collect.fits import fit_records, verdicts_by_name

    return verdicts_by_name(fit_records(records))


def collect_table(root: Path, problems: list[str] | None = None) -> pd.DataFrame:
    """The seed's table of the completed runs under ``root``, as a DataFrame (headers as columns)."""
    return build_table(completed_records(root, problems), "seed", problems=problems).to_frame()


def _note(problems: list[str] | None, message: str) -> None:
    if problems is not None:
        problems.append(message)


def _view(record: RunRecord, names: list[str]) -> dict[str, Any]:
    """A nested dict of the named columns' values, as ``where`` expressions read it."""
    doc: dict[str, Any] = {}
    for name in names:
        column = _column_for(name)
        doc = gridlib.set_dotted(doc, name, column.get(record)) if "." in name else {**doc, name: column.get(record)}
    return doc


def _column_for(name: str) -> cols.Column:
    if name in cols.COLUMNS:
        return cols.COLUMNS[name]
    if name.startswith("summary."):
        return cols.summary_column(name[len("summary.") :])
    return cols.swept_column(name)


def _where(expression: str, records: list[RunRecord], chosen: list[cols.Column]) -> Callable[[RunRecord], bool]:
    """A predicate on records; names are column ids, grid keys and ``summary.<key>``."""
    names = gridlib.where_names(expression)
    for name in names:
        if name not in cols.COLUMNS and not name.startswith("summary.") and "." not in name:
            raise ValueError(
                f"--where: {name!r} is not a column; use {', '.join(cols.COLUMNS)}, a grid key such as "
                "parallel.sharding, or summary.<key>"
            )
    predicate = gridlib.compile_where(expression)
    return lambda record: predicate(_view(record, names))


def _sort(table: Table, records: list[RunRecord], sort: str | None) -> None:
    """Stable multi-key sort; ``-id`` sorts descending; empty cells last either way."""
    keys = [k.strip() for k in (sort.split(",") if sort else DEFAULT_SORT) if k.strip()]
    ids = {c.id for c in table.columns}
    for key in reversed(keys):
        descending = key.startswith("-")
        name = key.lstrip("-")
        if name not in ids:
            if sort:  # the user's: say so; the default sort skips columns not shown
                raise ValueError(f"--sort: {name!r} is not a column of this table; columns: {', '.join(sorted(ids))}")
            continue
        present = [r for r in table.rows if r[name] is not None]
        absent = [r for r in table.rows if r[name] is None]
        present.sort(key=lambda r: _sortable(r[name]), reverse=descending)
        table.rows[:] = present + absent


def _sortable(value: Any) -> tuple[int, Any]:
    """Numbers before text, so a column of mixed values still sorts."""
    return (0, value) if isinstance(value, (int, float)) else (1, str(value))


# --- formats ---------------------------------------------------------------------------------------


def format_table(table: Table | pd.DataFrame, fmt: Format) -> str:
    if not isinstance(table, Table):
        table = _from_frame(table)
    if fmt == "markdown":
        return _markdown(table)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(table.headers)
        for row in table.rows:
            writer.writerow(["" if row[c.id] is None else row[c.id] for c in table.columns])
        return out.getvalue()
    if fmt == "json":
        records = [{c.header: row[c.id] for c in table.columns} for row in table.rows]
        return strict_json(records) + "\n"  # NaN/Infinity are not JSON: null, and "non_finite" says why
    if fmt == "latex":
        return _latex(table)
    raise ValueError(f"unknown format {fmt!r}; use {', '.join(FORMATS)}")


def _from_frame(frame: pd.DataFrame) -> Table:
    """A DataFrame (``collect_table``, or another table with known headers) as a Table."""
    by_header = {c.header: c for c in cols.COLUMNS.values()}
    chosen = [by_header.get(h) or cols.Column(str(h), str(h), lambda r: None) for h in frame.columns]
    rows = []
    for values in frame.itertuples(index=False):
        rows.append({c.id: (None if _isnan(v) else v) for c, v in zip(chosen, values, strict=True)})
    return Table(chosen, rows)


def _isnan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _markdown(table: Table) -> str:
    """The seed's layout: ``| a | b |`` rows under a ``|---|`` rule; an empty value is an empty cell."""
    lines = ["| " + " | ".join(map(markdown_cell, table.headers)) + " |", "|" + "---|" * len(table.columns)]
    for row in table.rows:
        lines.append("| " + " | ".join(markdown_cell(c.cell(row[c.id])) for c in table.columns) + " |")
    return "\n".join(lines) + "\n"


def markdown_cell(text: str) -> str:
    """``text`` as one markdown table cell: a ``|`` cannot add a column (escaped, with any backslash
    before it), a line break cannot end the row. Other characters stay, so cells read as the seed's."""
    if "|" in text:
        text = text.replace("\\", "\\\\").replace("|", "\\|")
    if "\n" in text or "\r" in text:
        text = " ".join(text.splitlines())
    return text


def _latex(table: Table) -> str:
    """A booktabs tabular (``\\toprule``/``\\midrule``/``\\bottomrule``; needs ``\\usepackage{booktabs}``)."""
    import pandas as pd

    cells = [[c.cell(row[c.id]) for c in table.columns] for row in table.rows]
    frame = pd.DataFrame(cells, columns=table.headers)
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    align = "".join("r" if c.numeric else "l" for c in table.columns)
    return styler.to_latex(hrules=True, column_format=align)
