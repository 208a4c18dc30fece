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

No wait is silent or endless: a lock not free at once prints one line naming its holder (pid, host,
since when, command: written into the lock file by whoever holds it), and a writer gives up after
``HPCLLM_LOCK_TIMEOUT`` seconds (default 300) with an error naming the holder. Read-only commands
(``status``, ``collect``, ``report``) never wait at all: they take locks with ``timeout=0`` and leave
the recording to the holder (``LockBusy``).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from hpcllm.errors import HpcllmError, LockBusy
from hpcllm.fsutil import FS_ERRNOS, write_failure

LOCK_TIMEOUT_ENV = "HPCLLM_LOCK_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
WAIT = -1.0  # ``timeout``: the default (``$HPCLLM_LOCK_TIMEOUT`` or 300 s)

# Lock file path -> (descriptor, nesting depth), for the locks this process holds.
_held: dict[str, tuple[int, int]] = {}

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_BUSY = {errno.EAGAIN, errno.EACCES}


def default_timeout() -> float:
    """``$HPCLLM_LOCK_TIMEOUT``, refused in one line unless it is a finite number of seconds >= 0: ``nan``
    would wait forever without a word (no deadline compares true) and a typo must not silently mean 300 s."""
    text = os.environ.get(LOCK_TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise HpcllmError(f"${LOCK_TIMEOUT_ENV}={text!r}: give the seconds to wait for a lock, a finite number >= 0")
    return value


@contextmanager
def exclusive(lock_file: Path, *, timeout: float | None = WAIT, make_parents: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the ``with`` block.

    ``timeout``: seconds to wait (0: do not wait; None: wait as long as it takes, for the local
    runner's queue); past it, ``LockBusy`` names the holder. ``make_parents=False``: a missing folder
    is an error (a run's lock must not recreate a run folder that was moved). Re-entrant within a process; not a
    lock between threads.
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
    fd = _open(Path(key), make_parents)
    try:
        _acquire(fd, key, default_timeout() if timeout == WAIT else timeout)
    except BaseException:  # LockBusy, or a signal handler raised while waiting (the runner's cancel)
        os.close(fd)
        raise
    _held[key] = (fd, 1)
    _write_owner(fd)
    try:
        yield
    finally:
        del _held[key]
        with suppress(OSError):
            os.ftruncate(fd, 0)  # the next reader of the file must not name a holder that is gone
        os.close(fd)  # releases the lock


def _acquire(fd: int, key: str, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    pause, told = 0.02, False
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise HpcllmError(_lock_failure(key, exc)) from None
        if deadline is not None and time.monotonic() >= deadline:
            waited = f" after {timeout:g} s" if timeout else ""
            raise LockBusy(
                f"{key}: locked by {holder(Path(key))}{waited}; wait for it to finish, or stop it "
                f"(a stopped process keeps its locks); ${LOCK_TIMEOUT_ENV} sets how long to wait"
            )
        if not told:
            told = True
            limit = "" if deadline is None else f" (up to {timeout:g} s)"
            print(f"[hpcllm] waiting for {key}: held by {holder(Path(key))}{limit}", file=sys.stderr, flush=True)
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


def _write_owner(fd: int) -> None:
    """Who holds the lock, for the message of whoever waits for it (best effort: a full disk
    must not stop the lock from working)."""
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv[:3])),
    }
    with suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)


def holder(lock_file: Path) -> str:
    """The holder as its lock file names it: ``pid 12 on host n1 since <time> (hpcllm submit)``."""
    try:
        owner = json.loads(Path(lock_file).read_text())
        return f"pid {owner['pid']} on {owner['host']} since {owner['since']} ({owner['command']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it has not said which)"


def _open(path: Path, make_parents: bool) -> int:
    if not make_parents and not path.parent.is_dir():
        raise HpcllmError(f"{path.parent}: the folder is gone (moved or removed?); not creating it again")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write access: a POSIX exclusive lock needs a descriptor open for writing. 0o666 & umask,
        # like every other file of the run, so collaborators in the project group can lock it too.
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if exc.errno in FS_ERRNOS:
            raise write_failure(path, exc) from None
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
