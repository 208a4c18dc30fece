"""Reading input text: files and globs of ``.txt`` / ``.jsonl``, optionally gzipped, streamed.

Nothing here holds more than one chunk (~1 MiB) of a file in memory, so inputs larger than RAM are
fine. A ``.txt`` file is one document, cut into line-aligned pieces; a ``.jsonl`` line is one
document: ``{"text": ...}`` for plain text, ``{"prompt": ..., "response": ...}`` for instruction
data (the field names are options). Parsing the JSON happens in the tokenizer workers, not here,
so the reader is never the bottleneck of ``prepare``.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from hpcllm.errors import ConfigError

CHUNK_BYTES = 1 << 20
SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")

ProgressFn = Callable[[int], None]  # called with on-disk bytes consumed since the last call


@dataclass(frozen=True)
class Fields:
    """Which JSON keys hold the text (plain documents) or the prompt/response (instruction data)."""

    text: str = "text"
    prompt: str = "prompt"
    response: str = "response"


@dataclass
class Piece:
    """Raw bytes of one .txt piece or one .jsonl line; ``ends_doc`` closes the current document."""

    data: bytes
    is_json: bool
    ends_doc: bool
    where: str  # "file:line" for error messages


@dataclass
class Task:
    """A batch of pieces, about CHUNK_BYTES of input, tokenized by one worker."""

    pieces: list[Piece] = field(default_factory=list)
    size: int = 0


def expand_inputs(patterns: list[str]) -> list[Path]:
    """Files named by ``patterns`` (paths, globs or directories), each checked for a known suffix."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        found = False
        for m in matches:
            p = Path(m)
            if p.is_dir():
                inner = sorted(q for q in p.rglob("*") if q.is_file() and _suffix_ok(q))
                files.extend(inner)
                found = found or bool(inner)
            elif p.is_file():
                if not _suffix_ok(p):
                    raise ConfigError(f"--input: {p}: unknown file type; allowed: {', '.join(SUFFIXES)}")
                files.append(p)
                found = True
        if not found:
            raise ConfigError(f"--input: {pattern!r} matches no {'/'.join(SUFFIXES)} file")
    return files


def _suffix_ok(p: Path) -> bool:
    return p.name.endswith(SUFFIXES)


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(stream to read, raw file whose position measures progress in on-disk bytes)."""
    raw = open(path, "rb")
    if path.name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


def _utf8_cut(buf: bytes) -> int:
    """A cut position in ``buf`` that does not split a UTF-8 character (prefer after a newline)."""
    nl = buf.rfind(b"\n")
    if nl >= 0:
        return nl + 1
    cut = len(buf)
    while cut > 0 and (buf[cut - 1] & 0xC0) == 0x80:  # back off continuation bytes
        cut -= 1
    if cut > 0 and buf[cut - 1] >= 0xC0:  # and the lead byte of the split character
        cut -= 1
    return cut or len(buf)


def iter_pieces(path: Path, progress: ProgressFn | None = None) -> Iterator[Piece]:
    """Stream a file as pieces; ``progress(n)`` is called with on-disk bytes consumed."""
    stream, raw = _open(path)
    is_json = path.name.endswith((".jsonl", ".jsonl.gz"))
    last_pos = 0
    try:
        if is_json:
            for lineno, line in enumerate(stream, 1):
                if line.strip():
                    yield Piece(line, True, True, f"{path}:{lineno}")
                if progress is not None and lineno % 1024 == 0:
                    pos = raw.tell()
                    progress(pos - last_pos)
                    last_pos = pos
        else:
            carry = b""
            part = 0
            while True:
                block = stream.read(CHUNK_BYTES)
                if not block:
                    break
                buf = carry + block
                cut = _utf8_cut(buf)
                carry = buf[cut:]
                part += 1
                yield Piece(buf[:cut], False, False, f"{path} (piece {part})")
                if progress is not None:
                    pos = raw.tell()
                    progress(pos - last_pos)
                    last_pos = pos
            if part or carry:  # an empty file is no document
                yield Piece(carry, False, True, f"{path} (end)")
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    finally:
        if progress is not None:
            progress(path.stat().st_size - last_pos)
        stream.close()
        raw.close()


def iter_tasks(files: list[Path], progress: ProgressFn | None = None) -> Iterator[Task]:
    """Group the pieces of all files into tasks of about CHUNK_BYTES."""
    task = Task()
    for path in files:
        for piece in iter_pieces(path, progress):
            task.pieces.append(piece)
            task.size += len(piece.data)
            if task.size >= CHUNK_BYTES:
                yield task
                task = Task()
    if task.pieces:
        yield task


def parse_json(piece: Piece, fields: Fields) -> tuple[str, str | None]:
    """(text, None) for a plain document, (prompt, response) for an instruction pair."""
    try:
        obj = json.loads(piece.data)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{piece.where}: invalid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{piece.where}: expected a JSON object, got {type(obj).__name__}")
    if fields.prompt in obj and fields.response in obj:
        prompt, response = obj[fields.prompt], obj[fields.response]
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise ConfigError(f"{piece.where}: {fields.prompt!r} and {fields.response!r} must be strings")
        return prompt, response
    if fields.text in obj:
        if not isinstance(obj[fields.text], str):
            raise ConfigError(f"{piece.where}: {fields.text!r} must be a string")
        return obj[fields.text], None
    raise ConfigError(
        f"{piece.where}: no {fields.text!r} key and no {fields.prompt!r}/{fields.response!r} pair "
        f"(keys: {', '.join(sorted(obj)) or 'none'}); choose the keys with --text-key/--prompt-key/"
        f"--response-key"
    )


def iter_texts(files: list[Path], fields: Fields, progress: ProgressFn | None = None) -> Iterator[str]:
    """Every document's text (prompt and response joined), e.g. to train a tokenizer on."""
    for path in files:
        for piece in iter_pieces(path, progress):
            if piece.is_json:
                text, response = parse_json(piece, fields)
                yield text if response is None else text + response
            elif piece.data:
                yield piece.data.decode("utf-8", errors="replace")


def total_bytes(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)
