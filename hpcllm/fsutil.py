"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hpcllm import runfiles
from hpcllm.errors import StorageWriteError

# Write failures that are the file system's, not the program's: each becomes one line naming the
# path and the free space (StorageWriteError), never a traceback.
FS_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENAMETOOLONG, errno.EFBIG})


def free_space(path: Path) -> str:
    """Free space of the file system holding ``path`` (its nearest existing folder), e.g. ``1.2 MiB``."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free = float(shutil.disk_usage(here).free)
    except OSError:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def write_failure(path: Path, exc: OSError) -> StorageWriteError:
    """The one line for a write the file system refused: what, where, and how much room is left."""
    if exc.errno == errno.ENAMETOOLONG:
        longest = max((len(p) for p in Path(path).parts), default=0)
        return StorageWriteError(
            f"{path}: path too long ({len(str(path))} characters, longest name {longest}); "
            "shorten the results root or the experiment's names"
        )
    why = {errno.EROFS: "the file system is read-only", errno.EDQUOT: "the disk quota is exceeded"}.get(
        exc.errno or 0, exc.strerror or str(exc)
    )
    return StorageWriteError(f"{path}: cannot write ({why}); {free_space(path)} free there")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a file-system refusal while writing ``path`` into ``write_failure``'s one line."""
    try:
        yield
    except OSError as exc:
        if exc.errno in FS_ERRNOS:
            raise write_failure(path, exc) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_if_opened(path: Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would have (0644 under umask 022): for
    files that a library writes through a private temp file (safetensors: 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def as_if_made(folder: Path) -> None:
    """Give ``folder`` the mode a plain ``mkdir`` would have (0755 under umask 022): for folders
    ``tempfile.mkdtemp`` makes (0700, which would hide them from collaborators)."""
    os.chmod(folder, 0o777 & ~_umask())


def atomic_write_text(
    path: Path, text: str, *, durable: bool = True, executable: bool = False, make_parents: bool = True
) -> None:
    """Write ``text`` to a temp file in the same directory, fsync it, then rename over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (mkstemp's are 0600), so
    collaborators in the same project group can read manifests and summaries.

    ``durable=False`` skips the fsync: the rename still means no reader (and no crashed process)
    leaves half a file, but a power cut may lose it. For files that can be rendered again (batch
    scripts, run.yaml): an fsync costs milliseconds, i.e. seconds for a 1,000-point grid.
    ``executable``: with the execute bits the umask allows (a batch script), set before the rename.
    ``make_parents=False`` for the files of a run: a run folder that was moved away while its job
    ended must not be created again (FileNotFoundError instead).
    """
    path = Path(path)
    with writing(path):
        if make_parents:
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, (0o777 if executable else 0o666) & ~_umask())
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``atomic_write_text`` for binary files (plots)."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def append_line(path: Path, line: str) -> None:
    """Append one line to an append-only log (metrics.jsonl) so that no torn line is ever built on:
    a file whose last line a crash or a full disk cut short gets a newline first, so the new line
    starts fresh (a reader skips the torn one), and a line that cannot be written whole is cut back off.

    Unbuffered on purpose: a buffered file would flush the rest of a line that failed half-way when
    it is closed, after the cut, into the room the cut made.
    """
    data = line.rstrip("\n").encode() + b"\n"
    with writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            start = os.fstat(fd).st_size
            if start > 0 and _last_byte(path, start) != b"\n":
                data = b"\n" + data
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                with suppress(OSError):
                    os.ftruncate(fd, start)  # whole lines only
                raise
        finally:
            os.close(fd)


def _last_byte(path: Path, size: int) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        return fh.read(1)


def atomic_write_json(path: Path, data: Any, *, durable: bool = True, make_parents: bool = True) -> None:
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_text(path, text, durable=durable, make_parents=make_parents)


def read_json(path: Path) -> Any | None:
    """The parsed file, or None if it does not exist (callers treat that as 'not yet written').

    Through the bounded, never-blocking reader (hpcllm.runfiles): anything else that is not JSON in
    a regular file (a FIFO, a directory, a link loop, a runaway file, bytes that are not UTF-8) is a
    ValueError naming the file and the reason, as torn JSON always was.
    """
    try:
        return runfiles.read_json(path)
    except runfiles.MissingFile:
        return None
    except runfiles.RunFileProblem as exc:
        raise ValueError(str(exc)) from None


# Run folders found gone by this process: each is reported once, not once per heartbeat.
_REPORTED_GONE: set[str] = set()


def make_folders_in(root: Path, folder: Path) -> None:
    """Create ``folder`` and the folders between ``root`` and it, never ``root`` nor anything above:
    FileNotFoundError when ``root`` is gone."""
    here = Path(root)
    for part in Path(folder).relative_to(root).parts:
        here = here / part
        with suppress(FileExistsError):
            here.mkdir()


def write_in_folder(root: Path, path: Path, write: Callable[[], object]) -> bool:
    """Run ``write`` (it writes ``path``, inside the run folder ``root``, creating no folder) unless
    ``root`` is gone; True when written.

    Every file a running job writes goes through here: a run folder moved or removed while its job
    runs is never created again (an empty half of the run at the old path). The folders between
    ``root`` and ``path`` are made without parents; once ``root`` is gone the job says so once on
    stderr and writes nothing more there, and training carries on.
    """
    try:
        make_folders_in(root, Path(path).parent)
        write()
        return True
    except FileNotFoundError:
        if os.path.isdir(root):
            raise  # something else is missing: not this case
    if str(root) not in _REPORTED_GONE:
        _REPORTED_GONE.add(str(root))
        print(
            f"[hpcllm] {root}: the run folder is gone (moved or removed); this job no longer writes "
            f"its files there (first: {Path(path).name}) and creates nothing again",
            file=sys.stderr,
            flush=True,
        )
    return False


def write_json_in(root: Path, path: Path, data: Any, *, durable: bool = True) -> bool:
    """``atomic_write_json`` of a file of the run folder ``root`` (``write_in_folder``)."""
    return write_in_folder(root, path, lambda: atomic_write_json(path, data, durable=durable, make_parents=False))


def append_line_in(root: Path, path: Path, line: str) -> bool:
    """``append_line`` to a log of the run folder ``root`` (``write_in_folder``)."""
    return write_in_folder(root, path, lambda: append_line(path, line))
