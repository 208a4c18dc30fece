"""The temp folder a token store is built in, and what killed builds left of theirs.

``StoreWriter`` builds a store in ``.<name>.<random>.tmp`` beside its output and renames it into
place. A build killed with SIGKILL (or by the OOM killer, or a node that went away) cannot remove
that folder, and on a nearly full disk it holds the space the rerun needs. So the writer holds a
POSIX lock on a file inside its folder for its whole life, and the next build of the same output
removes every sibling temp folder whose lock it can take: the kernel released the lock of a dead
writer, never that of a live one (another ``data prepare`` of the same output, on this host or,
where the file system has coherent POSIX locks, another).

A folder without its lock file is left alone: its writer is between ``mkdtemp`` and taking the
lock, or is committing (the lock file goes just before the rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path

from hpcllm.fsutil import as_if_made

LOCK = ".writer.lock"


class Claim:
    """This writer's lock on its temp folder, held from creation to commit or abort."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    @classmethod
    def new(cls, output: Path) -> Claim:
        """A new temp folder beside ``output``, readable as the umask allows, locked."""
        folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
        as_if_made(folder)
        try:
            fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # a full disk, a quota: nothing of ours left behind
            shutil.rmtree(folder, ignore_errors=True)
            raise
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        return cls(folder, fd)

    def release(self) -> None:
        """Remove the lock file (before the folder is renamed into a store), then drop the lock; once."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):  # gone with its folder (an abort removed it first)
            (self.folder / LOCK).unlink()
        os.close(fd)


def temp_folders(output: Path) -> list[Path]:
    """The folders ``tempfile.mkdtemp(prefix=".<name>.", suffix=".tmp")`` makes for ``output``
    (8 random characters: a store named ``<name>.v2`` has temp folders of its own)."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.[a-z0-9_]{{8}}\.tmp")
    try:
        entries = list(output.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


def remove_abandoned(output: Path) -> list[str]:
    """Remove the temp folders of ``output`` whose writer is dead; return their names."""
    gone = []
    for folder in temp_folders(output):
        try:
            fd = os.open(folder / LOCK, os.O_RDWR)  # never O_CREAT: no lock file, no verdict
        except OSError:
            continue
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live writer holds it
        try:
            shutil.rmtree(folder)
        except OSError:
            continue
        finally:
            os.close(fd)
        gone.append(folder.name)
    return gone
