"""CLI calls that more than one test file makes."""

from __future__ import annotations

from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from hpcllm.cli import app


def submit_dry_run(results: Path, columns: int) -> Result:
    """``hpcllm submit experiments/scaling_2.7b.yaml --cluster leonardo --dry-run`` (18 points) into
    ``results``, on a terminal ``columns`` wide; run from the repository (the ``in_project`` fixture)."""
    args = ["submit", "experiments/scaling_2.7b.yaml", "--cluster", "leonardo", "--dry-run", "--no-memory-check"]
    return CliRunner().invoke(app, [*args, "--results", str(results)], env={"COLUMNS": str(columns)})
