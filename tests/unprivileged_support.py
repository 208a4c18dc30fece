"""Run a CLI command as a user that permission bits stop: the tests run as root, which reads any file.

``invoke_unprivileged`` forks, and the child drops to uid/gid 65534 (nobody) before it runs the command
with typer's CliRunner: the kernel then refuses what a mode of 000 or 0300 refuses a real user. The
tree the command reads is handed to that user first (``hand_over``), so its own files are its own and
a folder owned by someone else (``foreign``) is another user's. Run as a user other than root, the
command runs in-process: the bits already apply.

The command runs as root first (its output unused): Python's standard library lives under /root
here, closed to nobody, so every module the command imports lazily must be loaded before the drop.
"""

from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from hpcllm.cli import app

NOBODY = 65534
OTHER_USER = 4321  # owns the "another user's" folders
AS_ROOT = os.geteuid() == 0


@dataclass
class Outcome:
    exit_code: int
    stdout: str
    stderr: str
    exception: str | None  # repr of an exception that escaped the command (SystemExit is an exit, not one)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def hand_over(tree: Path) -> None:
    """Every path under ``tree`` (itself included) that root owns becomes nobody's (links not followed)."""
    if not AS_ROOT:
        return
    for folder, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            path = os.path.join(folder, name)
            if os.lstat(path).st_uid == 0:
                os.lchown(path, NOBODY, NOBODY)
    os.lchown(tree, NOBODY, NOBODY)


def foreign(folder: Path) -> None:
    """``folder`` becomes another user's, private to them (umask 077): nobody may not list it."""
    if not AS_ROOT:
        folder.chmod(0)  # the one way to make our own folder unlistable to ourselves
        return
    for sub, dirs, files in os.walk(folder):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(sub, name), OTHER_USER, OTHER_USER)
    os.lchown(folder, OTHER_USER, OTHER_USER)
    folder.chmod(0o700)


def invoke_unprivileged(args: list[str], env: dict[str, str] | None = None) -> Outcome:
    """``hpcllm <args>`` as nobody (see the module's docstring)."""
    if not AS_ROOT:
        return _invoke(args, env)
    _invoke(args, env)  # loads what the command imports lazily (see the module's docstring)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop every privilege, run, send the outcome, exit without cleanup
        try:
            os.close(read)
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            payload = _invoke(args, env).__dict__
        except BaseException:  # whatever happens, the parent must hear of it
            payload = {"exit_code": -1, "stdout": "", "stderr": traceback.format_exc(), "exception": "child failed"}
        with os.fdopen(write, "w") as fh:
            json.dump(payload, fh)
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as fh:
        payload = json.load(fh)
    os.waitpid(pid, 0)
    return Outcome(**payload)


def _invoke(args: list[str], env: dict[str, str] | None) -> Outcome:
    result = CliRunner().invoke(app, args, env=env)
    escaped = result.exception if result.exception and not isinstance(result.exception, SystemExit) else None
    return Outcome(result.exit_code, result.stdout, result.stderr, repr(escaped) if escaped else None)
