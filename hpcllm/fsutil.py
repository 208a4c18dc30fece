"""Crash-safe file writes: a reader sees the old file or the new one, never half of either."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hpcllm import runfiles


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def as_if_opened(path: Path) -> None:
    """Give ``path`` the mode a plain ``open(path, "w")`` would have (0644 under umask 022): for
    files that a library writes through a private temp file (safetensors: 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def atomic_write_text(path: Path, text: str, *, durable: bool = True, executable: bool = False) -> None:
    """Write ``text`` to a temp file in the same directory, fsync it, then rename over ``path``.

    The file gets the permissions a plain ``open(path, "w")`` would give (mkstemp's are 0600), so
    collaborators in the same project group can read manifests and summaries.

    ``durable=False`` skips the fsync: the rename still means no reader (and no crashed process)
    leaves half a file, but a power cut may lose it. For files that can be rendered again (batch
    scripts, run.yaml): an fsync costs milliseconds, i.e. seconds for a 1,000-point grid.
    ``executable``: with the execute bits the umask allows (a batch script), set before the rename.
    """
    path = Path(path)
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


def atomic_write_json(path: Path, data: Any, *, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", durable=durable)


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
