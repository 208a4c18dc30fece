"""What every ``hpcllm`` sub-app shares: the consoles and the one-line error exit."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)


def fail(exc: Exception, exit_code: int = 2) -> NoReturn:
    """Print ``exc`` as one unwrapped line on stderr (paths stay copyable) and exit, no traceback."""
    # escape: a message may hold brackets ("a tolerance is [lower, upper]") that are not markup
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exit_code)


# The results root every command defaults to (relative to where `hpcllm` runs).
RESULTS = Path("results")
