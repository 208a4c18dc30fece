"""``hpcllm report``: one self-contained HTML page, checked as HTML and in a real headless Chromium."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import Browser, find_chromium
from collect_support import engine_summary, loss_curve, write_run
from typer.testing import CliRunner

from hpcllm.cli import app
from hpcllm.launch.manifest import RunState

runner = CliRunner()
PNG = b"\x89PNG\r\n\x1a\n"
FAILED_REASON = "engine exited with code 1 (summary status: failed); see slurm-4242.out"


@pytest.fixture
def results(tmp_path: Path) -> Path:
    """Scaling runs of 2.7b on Leonardo (FULL_SHARD 8/16/32 GPUs, one restarted), a failed run with
    its log, a cancelled one."""
    root = tmp_path / "results"
    for gpus, sps, restart in ((8, 18.2, None), (16, 36.1, 30), (32, 71.0, None)):
        write_run(
            root,
            f"2.7b-n{gpus // 4}x4-mbs2-ga1-fs-acnone-seq4096-0000000{gpus % 7}",
            summary=engine_summary(
                world_size=gpus,
                global_batch_size=2 * gpus,
                samples_per_s=sps,
                mfu=round(0.5847 * sps / 18.63 * 8 / gpus, 4),
            ),
            point={"resources.nodes": gpus // 4},
            restarts=int(restart is not None),
            metrics=loss_curve(60, restart_at=restart),
        )
    write_run(
        root,
        "2.7b-n16x4-mbs4-ga1-fs-acnone-seq4096-deadbeef",
        state=RunState.FAILED,
        reason=FAILED_REASON,
        summary=engine_summary(status="failed", error="Traceback ...\ntorch.OutOfMemoryError: CUDA out of memory"),
        log="[hpcllm] attempt 1 on nodes lrdn[0001-0016]\ntorch.OutOfMemoryError: CUDA out of memory\n",
    )
    write_run(
        root, "2.7b-n64x4-mbs2-ga1-hs-acnone-seq4096-cafef00d", state=RunState.CANCELLED, reason="cancelled by the user"
    )
    return root


class _Page(HTMLParser):
    """The parts of the page the tests look at: elements by id, table rows, images, links."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.rows: dict[str, int] = {}
        self._table: str | None = None
        self.text: list[str] = []
        self.scripts: list[str] = []
        self.scripts_with_src: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "table":
            self._table = a.get("id")
            self.rows[self._table or ""] = 0
        if tag == "tr" and self._table:
            self.rows[self._table] += 1
        if tag == "img":
            self.images.append(a)
        if tag == "script":
            self._in_script = True
            self.scripts.append("")
            if a.get("src"):
                self.scripts_with_src.append(a["src"])
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data
        else:
            self.text.append(data)


def _report(results: Path, out: Path) -> _Page:
    result = runner.invoke(app, ["report", "-r", str(results), "--output", str(out)], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "5 runs (1 cancelled, 3 completed, 1 failed)" in result.output
    page = _Page()
    page.feed(out.read_text())
    return page


def test_report_is_one_self_contained_page(results, tmp_path):
    page = _report(results, tmp_path / "report.html")
    assert {"counts", "scaling-table", "plot-scaling", "plot-losses", "comparison-table", "failures"} <= page.ids
    assert page.rows["scaling-table"] == 1 + 3  # header + completed runs
    # the plots are plotly, its JavaScript inline once: nothing is fetched from anywhere
    assert page.images == [] and page.scripts_with_src == []
    assert sum(len(script) > 1_000_000 and "plotly.js" in script[:1000] for script in page.scripts) == 1
    assert all(url.startswith("data:") for url in page.urls)
    scaling = next(script for script in page.scripts if '"plot-scaling"' in script)
    assert "2.7b-n2x4-mbs2-ga1-fs-acnone-seq4096-00000001" in scaling  # hover data: the run id
    assert "exp\\u002fleonardo: 2.7B FULL_SHARD mbs=2" in scaling  # legend: the setup (plotly escapes /)
    text = " ".join(page.text)
    assert FAILED_REASON in text and "cancelled by the user" in text
    assert "torch.OutOfMemoryError: CUDA out of memory" in text  # the log's tail
    assert "seed rows matched by our runs: 3" in text  # Leonardo rows 1, 4 and 6


@pytest.mark.integration
def test_report_renders_in_a_headless_browser(results, tmp_path):
    """Chromium (Debian's package; scripts/install-browser.sh) opens the page offline at 1,400 px:
    the tables and every plot are laid out and on screen when scrolled to, nothing overflows the
    page sideways (the scaling table's last column, Wall time, is in view), and moving the mouse
    onto a point of the scaling plot shows that point's run id."""
    exe = find_chromium()
    assert exe, "no chromium on PATH: run scripts/install-browser.sh (as root), as `make test` does"
    report = tmp_path / "report.html"
    _report(results, report)
    with Browser(exe) as browser:
        browser.open(report, width=1400)
        checks = browser.evaluate(VISIBILITY_JS)
        point = browser.evaluate(POINT_JS)
        for kind in ("mouseMoved",):
            browser.call("Input.dispatchMouseEvent", {"type": kind, "x": point["x"], "y": point["y"]}, page=True)
        hover = browser.evaluate(HOVER_JS)
        shot = browser.screenshot(tmp_path / "report.png")
    assert checks["external"] == []
    for name, element in checks["elements"].items():
        assert element["found"], name
        assert element["width"] > 100 and element["height"] > 40, (name, element)
        assert element["shown"], f"{name} is hidden or covered: {element}"
    assert checks["plots"] == 2  # both plotly figures drawn (their SVG exists)
    assert checks["overflow"] == {"page": 1400, "scroll": 1400}, checks["overflow"]
    assert checks["tableFits"], checks["tableBoxes"]
    assert checks["rows"] == {"scaling-table": 4, "comparison-table": 1 + 3 + 21}  # header, ok, not run (Leonardo)
    assert point["run"] in hover, (point, hover)
    assert point["run"].startswith("2.7b-n") and "samples/s" in hover
    data = shot.read_bytes()
    assert data[:8] == PNG and len(data) > 50_000


# Run in the page: for each element, its box, and whether the element (or a child) is what the
# browser shows at the centre of its box once scrolled into view (so neither hidden nor covered).
VISIBILITY_JS = r"""
(async () => {
  const ids = ["counts", "scaling-table", "plot-scaling", "plot-losses", "comparison-table", "failures"];
  const elements = {};
  for (const id of ids) {
    const el = document.getElementById(id);
    if (!el) { elements[id] = {found: false}; continue; }
    el.scrollIntoView({block: "center", inline: "nearest"});
    await new Promise(r => requestAnimationFrame(r));
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    const x = Math.min(box.left + box.width / 2, innerWidth - 1);
    const y = Math.min(box.top + box.height / 2, innerHeight - 1);
    const hit = document.elementFromPoint(x, y);
    elements[id] = {found: true, width: box.width, height: box.height,
                    shown: style.display !== "none" && style.visibility === "visible"
                           && !!hit && (hit === el || el.contains(hit))};
  }
  const plots = [...document.querySelectorAll(".js-plotly-plot")].filter(p => p.querySelector(".main-svg")).length;
  window.scrollTo(0, 0);
  const overflow = {page: innerWidth, scroll: document.documentElement.scrollWidth};
  const table = document.querySelector("#scaling-table");
  const wrap = table.parentElement.getBoundingClientRect();
  const last = table.querySelector("tr th:last-child").getBoundingClientRect();
  const tableBoxes = {table: table.getBoundingClientRect().right, container: wrap.right, lastHeader: last.right};
  const tableFits = table.scrollWidth <= table.parentElement.clientWidth && last.right <= wrap.right;
  const rows = {};
  for (const id of ["scaling-table", "comparison-table"]) rows[id] = document.querySelectorAll(`#${id} tr`).length;
  const external = performance.getEntriesByType("resource").map(e => e.name).filter(n => !n.startsWith("data:"));
  return {elements, plots, overflow, tableFits, tableBoxes, rows, external};
})()
"""

# The first point of the scaling plot, scrolled into view: where it is on screen and whose run it is
# (the run id the report put in the point's hover data).
POINT_JS = r"""
(async () => {
  const plot = document.getElementById("plot-scaling");
  plot.scrollIntoView({block: "center"});
  await new Promise(r => requestAnimationFrame(r));
  const dot = plot.querySelector(".scatterlayer .trace .points path");
  const box = dot.getBoundingClientRect();
  return {x: box.left + box.width / 2, y: box.top + box.height / 2, run: plot.data[0].customdata[0]};
})()
"""

# What the hover label says once the mouse is on the point (plotly draws it in .hoverlayer).
HOVER_JS = r"""
(async () => {
  for (let i = 0; i < 50; i++) {
    const text = [...document.querySelectorAll("#plot-scaling .hoverlayer")].map(e => e.textContent).join(" ");
    if (text.trim()) return text;
    await new Promise(r => setTimeout(r, 20));
  }
  return "";
})()
"""


def test_the_mfu_panel_says_why_it_is_empty(tmp_path):
    """CPU runs have no peak FLOP/s, so no MFU: the panel says so instead of staying blank."""
    from hpcllm.collect.interactive import scaling_html
    from hpcllm.collect.records import scan

    for mfu, root in ((None, tmp_path / "cpu"), (0.41, tmp_path / "gpu")):
        write_run(root, "tiny-n1x1", summary=engine_summary(mfu=mfu))
    cpu = scaling_html(scan(tmp_path / "cpu"), "plot", include_js=False)
    gpu = scaling_html(scan(tmp_path / "gpu"), "plot", include_js=False)
    assert "no MFU: no run knows its device" in cpu and "no MFU" not in gpu


def test_the_seed_comparison_drops_columns_no_row_fills(results, tmp_path):
    """Runs the seed has no row for leave the seed's columns empty: they are left out, so the run
    ids stay in sight; the fixture's runs that match seed rows keep every column."""
    from hpcllm.collect.report import build_report

    write_run(tmp_path / "cpu", "tiny-n1x1", summary=engine_summary(mfu=None))
    ours_only = build_report(tmp_path / "cpu").comparison
    matched = build_report(results).comparison
    assert ours_only is not None and matched is not None
    assert len(ours_only.columns) < len(matched.columns)
    assert "run" in [c.id for c in ours_only.columns]
    assert all(any(row[c.id] not in (None, "") for row in ours_only.rows) for c in ours_only.columns)
