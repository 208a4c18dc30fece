"""The one reader of the files a run or a checkpoint leaves behind, for the login-node commands.

Total on purpose: a file that is missing, a directory, unreadable, a FIFO, socket or device, a link
loop, larger than any file of ours, not UTF-8, not JSON, JSON of another shape, becomes one
``RunFileProblem`` naming the file and the reason, never a hang, a traceback or a whole-file read of
a runaway log. ``collect``, ``status``, ``report`` and ``ckpt`` read through here, so one damaged run
costs one warning line and the other runs are still reported.

Never blocking: files are opened ``O_NONBLOCK`` and checked with ``fstat`` before a byte is read
(opening a FIFO for reading would otherwise wait for a writer forever). Bounded: JSON files are
read up to ``MAX_JSON_BYTES``; JSON-lines files are streamed a line at a time, each line bounded.
Fast: ``collect`` reads 10,000 summaries with this, so there is one ``open`` + ``fstat`` per file
and orjson parses.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from hpcllm.errors import HpcllmError

MAX_JSON_BYTES = 64 * 2**20  # a summary or manifest is kilobytes; a probe report with every trial, a few MiB
MAX_LINE_BYTES = 1 * 2**20  # one metrics or runtime record
MAX_TEXT_BYTES = 4096  # a pointer file (checkpoints/latest)
_CHUNK = 1 << 16


class RunFileProblem(HpcllmError):
    """A run's file cannot be used; ``str()`` is ``<path>: <reason>``, one line."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingFile(RunFileProblem):
    """The file does not exist (for most run files: not written yet, which is no damage)."""


_KIND = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _open(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(descriptor, size) of a regular file, opened without blocking; RunFileProblem otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise MissingFile(path, "missing") from None
    except OSError as exc:
        raise RunFileProblem(path, _os_reason(exc)) from None
    try:
        st = os.fstat(fd)
    except OSError as exc:  # pragma: no cover - fstat of an open descriptor
        os.close(fd)
        raise RunFileProblem(path, _os_reason(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RunFileProblem(path, f"is {_KIND.get(stat.S_IFMT(st.st_mode), 'not a regular file')}, not a file")
    return fd, st.st_size


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symbolic link loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "unreadable (permission denied)"
    if exc.errno == errno.ENOTDIR:
        return "a folder on its path is a file"
    if exc.errno == errno.ENXIO:
        return "is a socket or device, not a file"
    if exc.errno == errno.EISDIR:
        return "is a directory, not a file"
    return f"unreadable ({exc.strerror or exc})"


def regular_size(path: str | os.PathLike[str]) -> int:
    """The size of ``path`` if it is a regular file, else RunFileProblem: for files a library opens itself
    (``np.load``, ``np.memmap``), which would block on a FIFO or map a device."""
    fd, size = _open(path)
    os.close(fd)
    return size


def read_bytes(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> bytes:
    """The whole file, at most ``limit`` bytes (a larger file is a RunFileProblem, not a long read)."""
    fd, size = _open(path)
    try:
        if size > limit:
            raise RunFileProblem(path, f"{size} bytes, more than the {limit} a file of this kind holds")
        chunks = []
        total = 0
        while chunk := os.read(fd, _CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while being read
                raise RunFileProblem(path, f"more than the {limit} bytes a file of this kind holds")
        return b"".join(chunks)
    except OSError as exc:  # EIO, or a file on a vanished network mount
        raise RunFileProblem(path, _os_reason(exc)) from None
    finally:
        os.close(fd)


def read_text(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> str:
    """The file as UTF-8 text (bounded, like ``read_bytes``)."""
    data = read_bytes(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileProblem(path, f"not UTF-8 text (byte {exc.start})") from None


def parse_json(data: bytes) -> Any:
    """orjson, and ``json`` for what only it reads: ``NaN``/``Infinity``, which Python's ``json.dumps``
    writes for a non-finite float (the summary of a run stopped by a non-finite loss). ValueError
    (UnicodeDecodeError included) when neither reads it."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def read_json(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> Any:
    """The file's JSON value; RunFileProblem when it is not JSON."""
    data = read_bytes(path, limit)
    try:
        return parse_json(data)
    except RecursionError:
        raise RunFileProblem(path, "not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        reason = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"not valid JSON ({exc})"
        raise RunFileProblem(path, reason.splitlines()[0]) from None


def read_json_object(path: str | os.PathLike[str], limit: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The file's JSON object; RunFileProblem for any other JSON value."""
    data = read_json(path, limit)
    if not isinstance(data, dict):
        raise RunFileProblem(path, f"holds a JSON {_json_kind(data)}, not an object")
    return data


def iter_json_lines(
    path: str | os.PathLike[str], max_line: int = MAX_LINE_BYTES, torn: list[int] | None = None
) -> Iterator[dict[str, Any]]:
    """Each line of a JSON-lines file that is a JSON object, streamed (never the whole file in memory).

    Torn lines and lines of another shape are skipped; a line longer than ``max_line`` is skipped
    without being held whole. ``torn`` receives the (1-based) number of each line that ends in a
    newline but is not JSON: a writer died in it (``fsutil.append_line`` starts the next line fresh).
    The last line without a newline is not one of them: a running writer may be writing it.
    MissingFile/RunFileProblem as ``read_bytes``.
    """
    fd, _ = _open(path)
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            number = 0
            while line := fh.readline(max_line + 1):
                number += 1
                if len(line) > max_line and not line.endswith(b"\n"):
                    while (rest := fh.readline(_CHUNK)) and not rest.endswith(b"\n"):
                        pass  # drop the rest of an overlong line, a chunk at a time
                    continue
                try:
                    record = parse_json(line)
                except (ValueError, RecursionError):
                    if torn is not None and line.endswith(b"\n"):
                        torn.append(number)
                    continue
                if isinstance(record, dict):
                    yield record
    except OSError as exc:
        raise RunFileProblem(path, _os_reason(exc)) from None
    finally:
        os.close(fd)


def tail_record(
    path: str | os.PathLike[str],
    accept: Callable[[dict[str, Any]], bool] | None = None,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    problems: list[str] | None = None,
) -> dict[str, Any] | None:
    """``last_json_line`` for a run's log that may not exist yet: None when it is missing (the run
    has not started: no damage), and None plus one line in ``problems`` when it cannot be read."""
    try:
        return last_json_line(path, accept, check=check, problems=problems)
    except MissingFile:
        return None
    except RunFileProblem as exc:
        if problems is not None:
            problems.append(str(exc))
        return None


def last_json_line(
    path: str | os.PathLike[str],
    accept: Callable[[dict[str, Any]], bool] | None = None,
    max_window: int = MAX_LINE_BYTES,
    check: Callable[[dict[str, Any]], str | None] | None = None,
    problems: list[str] | None = None,
) -> dict[str, Any] | None:
    """The last line of a JSON-lines file that is an object (and ``accept(record)`` when given), reading
    only the file's tail: 4 KiB first, growing to ``max_window`` only when no complete line is in it.

    ``problems`` (when given) receives one line, ``<path>: <reason>``, when a line in the tail read is
    damaged: torn (it ends in a newline but is not JSON: a writer died in it), not a JSON object, or
    refused by ``check`` (which returns why, or None). Only the tail is judged, never the whole file:
    ``status`` reads this for every run. A last line without a newline that starts like one of ours is
    one being written, not damage.
    """
    fd, size = _open(path)
    try:
        window = 4096
        while True:
            start = max(size - window, 0)
            data = os.pread(fd, min(window, size), start)
            found, damaged = _scan_tail(data, start, accept, check)
            if found is not None or start == 0 or window >= max_window:
                if damaged and problems is not None:
                    more = f" (and {len(damaged) - 1} more damaged line(s) near the end)" if len(damaged) > 1 else ""
                    problems.append(f"{os.fspath(path)}: {damaged[0]}{more}")
                return found
            window *= 4
    except OSError as exc:
        raise RunFileProblem(path, _os_reason(exc)) from None
    finally:
        os.close(fd)


def _scan_tail(
    data: bytes,
    start: int,
    accept: Callable[[dict[str, Any]], bool] | None,
    check: Callable[[dict[str, Any]], str | None] | None,
) -> tuple[dict[str, Any] | None, list[str]]:
    """(the last accepted object, why each damaged line is damaged) for the complete lines of a window
    read at byte ``start`` (its first line is cut unless the window starts the file)."""
    found: dict[str, Any] | None = None
    damaged: list[str] = []
    offset = start
    lines = data.split(b"\n")  # every piece but the last ended in a newline
    for index, body in enumerate(lines):
        at, offset = offset, offset + len(body) + 1
        complete = index < len(lines) - 1
        if (index == 0 and start > 0) or not body.strip():
            continue  # the cut start of the window, or an empty line
        try:
            record = parse_json(body)
        except (ValueError, RecursionError):
            if complete or not body.startswith(b"{"):
                torn = " (torn: a writer died in it)" if complete else ""
                damaged.append(f"the line at byte {at} is not JSON{torn}; skipped")
            continue  # else a line being written right now
        if not isinstance(record, dict):
            damaged.append(f"the line at byte {at} holds a JSON {_json_kind(record)}, not an object; skipped")
            continue
        reason = check(record) if check is not None else None
        if reason:
            damaged.append(f"the line at byte {at}: {reason}; skipped")
        elif accept is None or accept(record):
            found = record
    return found, damaged


def tail_text(path: str | os.PathLike[str], max_bytes: int = 1 << 16) -> str:
    """The last ``max_bytes`` of a text file (a log), undecodable bytes replaced: never the whole file."""
    fd, size = _open(path)
    try:
        start = max(size - max_bytes, 0)
        data = os.pread(fd, min(size, max_bytes), start)
    except OSError as exc:
        raise RunFileProblem(path, _os_reason(exc)) from None
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    return text.split("\n", 1)[-1] if start > 0 else text  # drop the cut first line


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "null" if value is None else type(value).__name__


def _shown(value: Any) -> str:
    """A JSON value for a message: a number as written, else its JSON kind."""
    return repr(value) if is_number(value) else f"a JSON {_json_kind(value)}"


def is_number(value: Any) -> bool:
    """A JSON number (bool is not one, though Python says it is an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


COUNT_LIMIT = 2**63  # a count beyond a signed 64-bit integer was never written by the engine


def wrong_field(
    data: dict[str, Any],
    numbers: tuple[str, ...] = (),
    texts: tuple[str, ...] = (),
    counts: tuple[str, ...] = (),
) -> str | None:
    """Why the first field of ``numbers`` that holds no number (or of ``texts`` no string, or of
    ``counts`` no whole number in [0, 2**63): ranks, batch sizes, parameters, steps, which readers pass
    to ``int()`` and divide by; ``1e400`` parses as infinity) is wrong, or None; absent and null fields
    pass (a column shows them empty)."""
    for key in numbers:
        value = data.get(key)
        if value is not None and not is_number(value):
            return f"field {key!r} holds a JSON {_json_kind(value)}, not a number"
    for key in counts:
        value = data.get(key)
        if value is None:
            continue
        whole = is_number(value) and math.isfinite(value) and value == int(value) and 0 <= value < COUNT_LIMIT
        if not whole:
            return f"field {key!r} holds {_shown(value)}, not a count (a whole number >= 0)"
    for key in texts:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            return f"field {key!r} holds a JSON {_json_kind(value)}, not a string"
    return None


def check_fields(
    path: str | os.PathLike[str],
    data: dict[str, Any],
    numbers: tuple[str, ...] = (),
    texts: tuple[str, ...] = (),
    counts: tuple[str, ...] = (),
) -> None:
    """RunFileProblem with ``wrong_field``'s reason, if any."""
    reason = wrong_field(data, numbers, texts, counts)
    if reason:
        raise RunFileProblem(path, reason)


def strict_json(data: Any, indent: int | None = 2) -> str:
    """``data`` as JSON that every parser reads: a non-finite float (NaN, Infinity are not JSON) becomes
    null, and the object holding it gets ``"non_finite": {key: "nan" | "inf" | "-inf"}`` saying why
    (a list's non-finite items are null). For every ``--format json`` output."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False, default=str)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _finite(v) for k, v in value.items()}
        why = {str(k): repr(v) for k, v in value.items() if isinstance(v, float) and not math.isfinite(v)}
        if why:
            out["non_finite"] = why
        return out
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
