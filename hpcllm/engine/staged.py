"""Write an export through a temp sibling that becomes the output only when complete.

torch's and safetensors' native writers turn a full or read-only disk into their own exceptions
(``RuntimeError: unexpected pos``, ``SafetensorError: ... (os error 28)``), which reached the user as
an internal error and left a torn file at the output path. Here the temp file or folder is removed on
any failure (Ctrl-C included), and a file-system refusal, read back from those exceptions, is
``fsutil.write_failure``'s one line naming the path and the free space.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from hpcllm.fsutil import FS_ERRNOS, write_failure

_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust's std::io::Error (safetensors) names an errno


class Sink:
    """A binary file for ``torch.save`` that keeps the OSError torch's writer replaces with its own."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def _refusal(exc: BaseException) -> OSError | None:
    """The file-system refusal behind ``exc``, if it is one."""
    if isinstance(exc, OSError):
        return exc if exc.errno in FS_ERRNOS else None
    found = _OS_ERROR.search(str(exc))
    if found and int(found.group(1)) in FS_ERRNOS:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


@contextmanager
def staged(output: Path) -> Iterator[Path]:
    """A temp path beside ``output`` (whose folder exists) to write, a file or a folder; renamed over
    ``output`` on success."""
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        _remove(tmp)
        yield tmp
        if tmp.is_dir() and output.is_dir() and not output.is_symlink():  # a folder export replaces its last one
            shutil.rmtree(output)
        os.replace(tmp, output)
    except BaseException as exc:
        _remove(tmp)
        refusal = _refusal(exc)
        if refusal is not None:
            raise write_failure(output, refusal) from None
        raise


def torch_save(obj: object, path: Path) -> None:
    """``torch.save`` to ``path``, keeping the OSError of a failed write (see ``Sink``)."""
    import torch

    with open(path, "wb") as fh:
        sink = Sink(fh)
        try:
            torch.save(obj, sink)  # type: ignore[arg-type]
        except RuntimeError as exc:
            if sink.error is not None:
                raise sink.error from exc
            raise
