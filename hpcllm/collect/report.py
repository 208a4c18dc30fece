"""``hpcllm report``: one self-contained HTML page of a results folder.

Runs counted per state, the scaling table, the scaling plots and loss curves (plotly: hovering a
point names its run; plotly.js is inline), the comparison with the seed, the failures with their
reasons and log tails, and every run's details. No script, stylesheet, font or image is fetched:
the page opens offline on a laptop.
It reads what ``collect`` reads (``hpcllm.collect.records``); the page is a Jinja template
(``report.html.j2``, autoescaped) shipped in the package.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from hpcllm import __version__, runfiles
from hpcllm.collect import interactive
from hpcllm.collect.compare import STATUS_OURS_ONLY, compare_with_seed
from hpcllm.collect.fits import FIT_HEADERS, fit_records, fit_rows
from hpcllm.collect.records import RunRecord, scan
from hpcllm.collect.table import Table, build_table

TEMPLATE = "report.html.j2"
MAX_LOSS_CURVES = 40  # more runs than this on one loss plot is a thicket; the first 40 are drawn
LOG_TAIL_LINES = 30
FAILED_STATES = ("failed", "submit_failed", "cancelled")


@dataclass
class Figure:
    id: str
    title: str
    html: str  # a plotly fragment (hpcllm.collect.interactive); the first one carries plotly.js
    note: str = ""


@dataclass
class RunDetails:
    record: RunRecord
    state: str
    reason: str
    facts: list[tuple[str, str]]
    restarts: list[dict[str, Any]]
    log_name: str = ""
    log_tail: str = ""


@dataclass
class Report:
    root: Path
    generated: str
    counts: dict[str, int]
    table: Table
    comparison: Table | None
    comparison_note: str
    figures: list[Figure]
    failures: list[RunDetails] = field(default_factory=list)
    runs: list[RunDetails] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fits: list[list[str]] = field(default_factory=list)  # hpcllm.collect.fits.fit_rows, one per setup


def _last_line(text: object) -> str:
    lines = [line.strip() for line in str(text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _reason(record: RunRecord) -> str:
    """Why a run stopped, as the orchestrator recorded it (or its last restart's reason)."""
    m = record.manifest
    restarts = _restarts(record)
    for text in (m.get("reason"), m.get("error"), restarts[-1].get("reason") if restarts else None):
        if text:
            return _last_line(text)
    return ""


def _log_tail(record: RunRecord) -> tuple[str, str]:
    job_id = record.manifest.get("job_id")
    latest = record.run_dir.latest_log(job_id if isinstance(job_id, str) else None)
    if latest is None:
        return "", ""
    try:  # the tail only: a log can be gigabytes, and a FIFO in its place must not block
        lines = runfiles.tail_text(latest).splitlines()[-LOG_TAIL_LINES:]
    except runfiles.RunFileProblem as exc:
        return latest.name, f"(not shown: {exc.reason})"
    return latest.name, "\n".join(lines)


def _restarts(record: RunRecord) -> list[dict[str, Any]]:
    """The manifest's restart records that are JSON objects (a damaged entry is left out)."""
    return [r for r in record.manifest.get("restarts") or [] if isinstance(r, dict)]


def _facts(record: RunRecord) -> list[tuple[str, str]]:
    m, s = record.manifest, record.summary or {}
    point = m.get("point") or {}
    facts = [
        ("engine error", _last_line(s.get("error"))),  # the engine's own words (the last traceback line)
        ("experiment / cluster", f"{record.experiment} / {record.cluster}"),
        ("job", str(m.get("job_id") or "-")),
        ("grid point", ", ".join(f"{k}={v}" for k, v in point.items()) or "(base)"),
    ]
    for label, key, fmt in (
        ("steps", "steps_completed", "{}"),
        ("final loss", "final_loss", "{:.4f}"),
        ("eval loss", "eval_loss", "{:.4f}"),
        ("samples/s", "samples_per_s", "{:.2f}"),
        ("MFU / MFU+head / HFU", "mfu", "{:.4f}"),
        ("peak memory (GiB)", "mem_peak_gib", "{:.2f}"),
        ("wall time (s)", "wall_time_s", "{:.0f}"),
    ):
        value = s.get(key)
        if value is None:
            continue
        text = fmt.format(value)
        if key == "mfu":
            text = " / ".join("-" if s.get(k) is None else f"{s[k]:.4f}" for k in ("mfu", "mfu_with_head", "hfu"))
        facts.append((label, text))
    if s:
        facts.append(
            (
                "model / ranks",
                f"{s.get('model', '?')}, {s.get('n_params', 0):,} params, "
                f"{s.get('world_size', '?')} x {s.get('gpu_type', '?')}, "
                f"{s.get('sharding', '?')}, {s.get('precision', '?')}",
            )
        )
    return [(key, value) for key, value in facts if value]


def _details(record: RunRecord, with_log: bool) -> RunDetails:
    log_name, log_tail = _log_tail(record) if with_log else ("", "")
    return RunDetails(
        record,
        record.state,
        _reason(record),
        _facts(record),
        _restarts(record),
        log_name,
        log_tail,
    )


def build_report(root: Path, columns: str | None = None) -> Report:
    skipped: list[str] = []  # folders this user may not list: said, not left out without a word
    records = scan(root, skipped)
    completed = [r for r in records if r.completed]
    table_problems: list[str] = []
    table = build_table(completed, columns, problems=table_problems)
    comparison = compare_with_seed(completed)
    ran_on = {r.cluster for r in completed}
    # The seed's rows of clusters these results never ran on are noise here (`collect --compare
    # seed` lists them all); our runs that the seed has no row for stay.
    comparison.table.rows = [
        row for row in comparison.table.rows if row["cluster"] in ran_on or row["status"] == STATUS_OURS_ONLY
    ]
    # A column no row fills (the seed's figures when none of our runs matches a seed row) only
    # pushes the run ids out of sight: the page shows the columns that say something.
    comparison.table.columns = [
        c for c in comparison.table.columns if any(row[c.id] not in (None, "") for row in comparison.table.rows)
    ] or comparison.table.columns
    figures = [Figure("scaling", "Scaling", interactive.scaling_html(completed, "plot-scaling", include_js=True))]
    with_metrics = [r for r in records if r.has_metrics()]  # parsed only for the runs drawn
    note = (
        f"the first {MAX_LOSS_CURVES} of {len(with_metrics)} runs with metrics"
        if len(with_metrics) > MAX_LOSS_CURVES
        else ""
    )
    loss = interactive.loss_html(with_metrics[:MAX_LOSS_CURVES], "plot-losses", include_js=False)
    figures.append(Figure("losses", "Loss curves", loss, note))
    failures = [_details(r, with_log=True) for r in records if r.state in FAILED_STATES]
    runs = [_details(r, with_log=False) for r in records]
    return Report(
        root=root,
        generated=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        counts=dict(sorted(Counter(r.state for r in records).items())),
        table=table,
        comparison=comparison.table,
        comparison_note=comparison.summary_line(),
        figures=figures,
        failures=failures,
        runs=runs,
        problems=list(dict.fromkeys(skipped + table_problems + [p for r in records for p in r.problems])),
        fits=fit_rows(fit_records(completed)),
    )


def render_report(report: Report) -> str:
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(resources.files("hpcllm.collect").joinpath(TEMPLATE).read_text())
    return template.render(report=report, version=__version__, fit_headers=FIT_HEADERS)


def write_report(root: Path, output: Path, columns: str | None = None) -> Report:
    from hpcllm.fsutil import atomic_write_text

    report = build_report(root, columns)
    atomic_write_text(output, render_report(report))
    return report
