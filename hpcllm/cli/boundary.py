"""The CLI's one exception boundary: no bare Python traceback ever reaches a user.

Expected failures (a user's input or environment: bad config, a damaged or missing file, a refusing
scheduler, a full disk) are one line naming the problem, exit 2, as ``fail`` prints them. Anything
else is a bug: one line saying so and where the crash report with the traceback is (to attach to an
issue); ``HPCLLM_DEBUG=1`` prints the traceback too.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path

import typer
from rich.markup import escape

from hpcllm import __version__
from hpcllm.cli.common import EXIT_ERROR, err_console
from hpcllm.errors import HpcllmError

EXIT_BUG = 70  # EX_SOFTWARE (sysexits.h): an internal error
EXIT_INTERRUPTED = 130  # as a shell reports SIGINT
CRASH_DIR_ENV = "HPCLLM_CRASH_DIR"


def run_guarded(command: Callable[[], object]) -> None:
    """Run ``command`` (the typer app); turn every exception that escapes it into one line and an exit."""
    try:
        command()
    except SystemExit as exc:
        if _interrupted(exc):  # typer turns Ctrl-C into a silent SystemExit(130)
            _say_interrupted()
        raise
    except KeyboardInterrupt:
        _say_interrupted()
        sys.exit(EXIT_INTERRUPTED)
    except (HpcllmError, OSError) as exc:  # the user's input or environment: how to fix it is in the message
        err_console.print(f"[bold red]error:[/] {escape(_one_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except Exception as exc:
        report = write_crash_report(exc)
        err_console.print(
            f"[bold red]internal error:[/] {escape(_one_line(exc))} (a bug in hpcllm {__version__}; "
            f"traceback in {escape(str(report))}, HPCLLM_DEBUG=1 prints it)",
            highlight=False,
            soft_wrap=True,
        )
        if os.environ.get("HPCLLM_DEBUG") == "1":
            traceback.print_exception(exc)
        sys.exit(EXIT_BUG)


class UnexpectedEndOfInput(RuntimeError):
    """An ``EOFError`` out of a command: a reader met a truncated file its boundary did not check."""


def guard_callbacks(app: typer.Typer) -> None:
    """Make an ``EOFError`` in any command of ``app`` (and its sub-apps) a bug the boundary reports.

    click turns an ``EOFError`` into "Aborted." and exit 1 (meant for a prompt whose input ended;
    hpcllm has no prompts), which names neither the file nor the bug: a truncated file some reader
    did not check. Re-raised as ``UnexpectedEndOfInput`` it becomes one line and a crash report."""
    for info in app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_hpcllm_guarded", False):
            info.callback = _guarded(info.callback)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            guard_callbacks(group.typer_instance)


def _guarded(callback: Callable[..., object]) -> Callable[..., object]:
    @functools.wraps(callback)
    def call(*args: object, **kwargs: object) -> object:
        try:
            return callback(*args, **kwargs)
        except EOFError as exc:
            raise UnexpectedEndOfInput(f"unexpected end of input: {exc or 'a file ended early'}") from exc

    call._hpcllm_guarded = True  # type: ignore[attr-defined]
    return call


def _interrupted(exc: SystemExit) -> bool:
    """Whether ``exc`` ends a command that a KeyboardInterrupt stopped (the chain of what it replaced)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _say_interrupted() -> None:
    err_console.print(
        "interrupted: rerun the command to finish what it had not done",
        highlight=False,
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, HpcllmError) else f"{type(exc).__name__}: {text}"


def write_crash_report(exc: BaseException) -> Path:
    """A file holding the command line, the version and the traceback; its path."""
    folder = Path(os.environ.get(CRASH_DIR_ENV) or Path(tempfile.gettempdir()) / f"hpcllm-crash-{os.getuid()}")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = f"hpcllm {__version__}, Python {sys.version.split()[0]}\ncommand: {' '.join(sys.argv)}\n\n" + "".join(
        traceback.format_exception(exc)
    )
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, name = tempfile.mkstemp(prefix=f"crash-{stamp}-", suffix=".txt", dir=folder)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return Path(name)
    except OSError:  # nowhere to write: the traceback goes to stderr instead
        sys.stderr.write(text)
        return Path("(stderr: the crash report could not be written)")
