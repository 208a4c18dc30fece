"""What every ``hpcllm`` sub-app shares: the consoles and the one-line error exit."""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from hpcllm.errors import HpcllmError
from hpcllm.rundir import DEFAULT_RESULTS, results_from_env
from hpcllm.runfiles import strict_json

console = Console()
err_console = Console(stderr=True)


# Every command's exit status for a user error (bad input, missing files, a refusing scheduler),
# as click's own usage errors: 1 stays for verdicts (`collect --check` misses, `submit --wait` failures).
EXIT_ERROR = 2


def fail(exc: Exception) -> NoReturn:
    """Print ``exc`` as one unwrapped line on stderr (paths stay copyable) and exit 2, no traceback."""
    # escape: a message may hold brackets ("a tolerance is [lower, upper]") that are not markup
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def missing_path_message(path: Path, wanted: str) -> str:
    """``path`` does not exist: say so, what its nearest existing folder holds, and what was wanted."""
    parent = path.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    try:
        names = sorted(p.name for p in parent.iterdir() if not p.name.startswith("."))
    except OSError:
        names = []
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    there = f"{parent} holds: {shown}" if names else f"{parent} is empty"
    return f"{path}: no such folder or file ({there}); give {wanted}"


# `submit`'s exit status, for scripts (docs/slurm.md): 0 every point of the grid went to the queue
# (or had run already), 3 some were refused (no QoS admits them, over the GPU memory, an input path
# missing) and the others went, 4 none went: every point was refused. 2 stays a user error.
EXIT_SOME_REFUSED = 3
EXIT_NONE_SUBMITTED = 4


INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def int64(value: int | None) -> int | None:
    """typer callback of every int option: a value beyond a signed 64-bit integer would pass the CLI
    and then fail in a C call (torch.Generator.manual_seed) as an internal error."""
    if value is not None and not INT_MIN <= value <= INT_MAX:
        raise typer.BadParameter(f"{value} is out of range; at most {INT_MAX} in size")
    return value


def finite(value: float | None) -> float | None:
    """typer callback of every float option: click's ranges let ``nan`` through (every comparison with
    it is false), and ``inf`` is no setting of ours."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def warn_problems(problems: list[str], label: str = "skipped") -> None:
    """One line per distinct problem on stderr, the text shown as it is (a path or a reason read from a
    file may hold brackets: never rich markup)."""
    for problem in dict.fromkeys(problems):
        err_console.print(f"[yellow]{label}:[/] {escape(problem)}", highlight=False, soft_wrap=True)


def json_text(data: Any) -> str:
    """``data`` as strict JSON for ``--format json`` (see ``runfiles.strict_json``)."""
    return strict_json(data)


def check_results_root(root: Path) -> None:
    """One error line and exit 2 unless ``root`` is a folder (a missing root is a typo, not 'no runs')."""
    if not root.exists():
        fail(FileNotFoundError(f"{root}: no such folder (the results root; --help says where it defaults to)"))
    if not root.is_dir():
        fail(NotADirectoryError(f"{root}: not a folder (give the results root, or a folder below it)"))


# The results root every command defaults to (hpcllm.rundir: $HPCLLM_RESULTS, else ./results;
# point it at a profile's paths.results once).
RESULTS = results_from_env() or DEFAULT_RESULTS


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: for commands that read 10,000 runs (``status``,
    ``collect``, ``report``). Their ~10^5 small dicts and strings all live until the command ends,
    yet each collection walks them all again: pausing it takes a fifth off ``collect``'s reading and
    table, and 10-20 % off ``report``'s 6-7 s. Reference counting still frees what goes out of use.
    Also a decorator: ``@paused_gc()``."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# One spelling of the results root in every command: ``--results`` / ``-r``.
RESULTS_HELP = "Results root folder (default: $HPCLLM_RESULTS, else ./results)."


def results_option(default: Path | None = RESULTS, help: str = RESULTS_HELP) -> Any:
    return typer.Option(default, "--results", "-r", help=help)


def deprecated(old: str, new: str) -> None:
    """One line on stderr for an old spelling that still works (for one release)."""
    err_console.print(f"[yellow]deprecated:[/] {old}: use {new}", highlight=False, soft_wrap=True)


def results_root(option: Path | None, positional: Path | None, command: str) -> Path:
    """The results root of status/collect/report: ``--results``, or the old positional FOLDER."""
    if positional is not None:
        if option is not None:
            fail(HpcllmError(f"hpcllm {command}: give the results folder once, as --results ({positional}, {option})"))
        deprecated(f"hpcllm {command} FOLDER", f"hpcllm {command} --results FOLDER (-r)")
        return positional
    return option if option is not None else RESULTS


def columns_spelling(columns: str | None, old_c: str | None) -> str | None:
    """``--columns`` / ``-k``; ``-c`` (which means --cluster everywhere else) still works, with a warning."""
    if old_c is not None:
        deprecated("-c for --columns", "-k (-c means --cluster in every command)")
        return columns or old_c
    return columns


def table_inputs(
    option: Path | None, positional: Path | None, columns: str | None, old_c: str | None, command: str
) -> tuple[Path, str | None]:
    """The results root and columns of ``collect`` and ``report``: a root that is missing is named with
    what its nearest folder holds, one that is a file is refused (one line, exit 2)."""
    root = results_root(option, positional, command)
    chosen = columns_spelling(columns, old_c)
    if not root.exists():
        fail(HpcllmError(missing_path_message(root, "the results folder (submit writes runs there)")))
    check_results_root(root)
    return root, chosen
