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
