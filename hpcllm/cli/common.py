"""What every ``hpcllm`` sub-app shares: the consoles and the one-line error exit."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def fail(exc: Exception, exit_code: int = 2) -> NoReturn:
    """Print ``exc`` as one unwrapped line on stderr (paths stay copyable) and exit, no traceback."""
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


# The results root every command defaults to: $HPCLLM_RESULTS (point it at a profile's paths.results
# once), else ./results (relative to where `hpcllm` runs).
RESULTS = Path(os.environ.get("HPCLLM_RESULTS") or "results")
