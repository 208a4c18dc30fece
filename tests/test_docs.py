"""Docs that cannot drift: every output README.md and docs/*.md show between cog markers is what the
command prints today (``cog --check``; ``make docs`` rewrites them), and the samples that depend on
timing keep the shape of today's output."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(p for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")] if "[[[cog" in p.read_text())
COG = [sys.executable, "-m", "cogapp", "-I", "tests", "-p", "from docs_cog import *"]


def test_the_docs_show_what_the_commands_print():
    assert {p.name for p in DOCS} >= {"README.md", "getting-started.md", "reports.md", "generate.md"}
    proc = subprocess.run([*COG, "--check", *map(str, DOCS)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\na shown output changed: run `make docs` and review"


def test_the_timed_collect_sample_has_the_columns_of_the_header():
    """reports.md's sample rows (measured once) under today's header, cell for cell."""
    text = (ROOT / "docs" / "reports.md").read_text()
    header = re.search(r"^\| # Params \(B\).*\|$", text, re.M)
    assert header and "| Experiment | Cluster |" in header.group(0), "no current collect header in docs/reports.md"
    rows = re.findall(r"^\| 0\.00013 \|.*\|$", text, re.M)
    assert len(rows) == 3 and all(row.count("|") == header.group(0).count("|") for row in rows), rows


def test_only_volatile_fields_are_masked_in_a_shown_sample():
    """The guide's generate sample is compared byte for byte (tests/test_getting_started.py) but for its
    timing and the folder it ran in: a changed time, rate or run-id digest passes, any other change fails."""
    from docs_cog import mask_volatile, shown_output

    command = 'hpcllm generate results/getting_started/local --prompt "The for statement" --seed 1'
    shown = "\n".join(shown_output("docs/getting-started.md", command))
    assert re.search(r"\d+ tokens in \d+\.\d+ s \(\d+ tokens/s\)$", shown), shown
    timed = re.sub(r"in \d+\.\d+ s \(\d+ tokens/s\)", "in 12.34 s (8 tokens/s)", shown)
    assert timed != shown and mask_volatile(timed) == mask_volatile(shown)
    moved = re.sub(r"seq128-[0-9a-f]{8}", "seq128-0badcafe", shown)  # the guide run in another folder
    assert moved != shown and mask_volatile(moved) == mask_volatile(shown)
    for old, new in (
        ("statement", "statements"),
        ("step 100", "step 50"),
        ("100 tokens", "99 tokens"),
        ("cpu", "cuda"),
        ("mbs8", "mbs16"),  # the run id's readable part
    ):
        assert old in shown and mask_volatile(shown.replace(old, new, 1)) != mask_volatile(shown), old


def test_the_report_screenshot_shows_todays_page():
    """docs/report-screenshot.png was taken (scripts/report-screenshot.py) from the page today's code draws."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("report_screenshot", ROOT / "scripts" / "report-screenshot.py")
    assert spec is not None and spec.loader is not None
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    stamped = shot.png_text((ROOT / "docs" / "report-screenshot.png").read_bytes(), shot.DIGEST_KEY)
    assert stamped == shot.page_digest(), (
        "docs/report-screenshot.png shows an older report page: run `make report-screenshot` and review it"
    )
