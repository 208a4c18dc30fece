"""Exclusive locks on files in the results folder, for several people (and processes) at once.

A run's ``manifest.json`` has several writers: ``hpcllm submit``, ``hpcllm status`` and
``cancel`` on login nodes, the local runner, and the batch script's hooks on compute nodes. Each
reads the manifest, changes it and writes it back; two of them interleaving would lose one update
(a restart record, a runner's result). The atomic rename keeps the file whole, not the update.
So every read-modify-write happens under the run directory's lock, and ``hpcllm submit`` holds
one lock per experiment and cluster while it decides what to submit and records it.

Why POSIX record locks (``fcntl``/``lockf``) and not ``flock``: results live on shared file
systems. On NFS, POSIX locks go through the server's lock manager; Lustre keeps them coherent
across clients when mounted with ``-o flock`` (``localflock`` makes them node-local, ``noflock``
refuses them: then this module stops with an error naming the file); GPFS grants them cluster-wide.
``flock`` is emulated with POSIX locks on Linux NFS clients but is not coherent everywhere.

POSIX locks belong to the process, and closing *any* descriptor of the file releases them, so a
process must open each lock file once: ``exclusive`` keeps one descriptor per file and counts
nested uses (a refresh inside an update takes the same lock again without deadlock or early release).
Locks are released by the kernel when the process dies, so a killed writer never leaves one behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hpcllm.errors import HpcllmError

# Lock file path -> (descriptor, nesting depth), for the locks this process holds.
_held: dict[str, tuple[int, int]] = {}

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the ``with`` block.

    Blocks until the lock is free. Re-entrant within a process; not a lock between threads.
    """
    key = os.path.abspath(lock_file)
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    fd = _open(Path(key))
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX)
    except OSError as exc:
        os.close(fd)
        raise HpcllmError(_lock_failure(key, exc)) from None
    except BaseException:  # a signal handler raised while waiting (the local runner's cancel)
        os.close(fd)
        raise
    _held[key] = (fd, 1)
    try:
        yield
    finally:
        del _held[key]
        os.close(fd)  # releases the lock


def _open(path: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write access: a POSIX exclusive lock needs a descriptor open for writing. 0o666 & umask,
        # like every other file of the run, so collaborators in the project group can lock it too.
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise HpcllmError(
            f"{path}: cannot open the lock file ({exc.strerror}); hpcllm needs write access "
            "to the results folder to record runs"
        ) from None


def _lock_failure(path: str, exc: OSError) -> str:
    if exc.errno in _UNSUPPORTED:
        return (
            f"{path}: the file system refuses POSIX locks ({exc.strerror}); on Lustre mount with "
            "-o flock, or put the results folder on a file system with locking (NFS, GPFS, local)"
        )
    return f"{path}: cannot lock ({exc.strerror})"
