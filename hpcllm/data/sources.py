"""Reading input text: files and globs of ``.txt`` / ``.jsonl``, optionally gzipped, streamed.

Nothing here holds more than one chunk (~1 MiB) of a file in memory, so inputs larger than RAM are
fine. A ``.txt`` file is one document, cut into line-aligned pieces; a ``.jsonl`` line is one
document: ``{"text": ...}`` for plain text, ``{"prompt": ..., "response": ...}`` for instruction
data (the field names are options), ``{"segments": [{"text": ..., "weight": ...}, ...]}`` for
documents whose parts weigh differently in the loss (multi-turn dialogue). Parsing the JSON happens
in the tokenizer workers, not here, so the reader is never the bottleneck of ``prepare``.
"""

from __future__ import annotations

import glob
import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from hpcllm.errors import ConfigError

CHUNK_BYTES = 1 << 20
SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")

ProgressFn = Callable[[int], None]  # called with on-disk bytes consumed since the last call


@dataclass(frozen=True)
class Fields:
    """How JSON records are read: which keys hold the text (plain documents) or the prompt/response
    (instruction data), and the loss weight of a prompt that does not give its own."""

    text: str = "text"
    prompt: str = "prompt"
    response: str = "response"
    prompt_weight: float = 0.0  # 0: prompts are masked out of the loss


@dataclass(frozen=True)
class Segment:
    """A part of a document and the loss weight, in [0, 1], of each of its tokens."""

    text: str
    weight: float = 1.0


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
    raw = open(path, "rb")  # noqa: SIM115 - handed to the caller, who closes it
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


SEGMENTS = "segments"


def parse_record(piece: Piece, fields: Fields) -> list[Segment]:
    """One JSON line -> the weighted segments of its document, in order (keys as in ``fields``):

    - ``{"text": t, "weight": w}`` -> one segment; ``weight`` is optional (1);
    - ``{"prompt": p, "response": r, "prompt_weight": a, "response_weight": b}`` -> two segments;
      weights optional (``fields.prompt_weight``, by default 0, and 1);
    - ``{"segments": [{"text": t, "weight": w}, ...]}`` -> those segments (weight optional, 1).

    The EOS that ends the document takes the weight of the last segment.
    """
    try:
        obj = json.loads(piece.data)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{piece.where}: invalid JSON: {exc.msg}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{piece.where}: expected a JSON object, got {type(obj).__name__}")
    if SEGMENTS in obj:
        parts = obj[SEGMENTS]
        if not isinstance(parts, list) or not all(isinstance(x, dict) for x in parts):
            raise ConfigError(f'{piece.where}: {SEGMENTS!r} must be a list of {{"text": ..., "weight": ...}} objects')
        return [Segment(_string(x, "text", piece), _weight(x, "weight", 1.0, piece)) for x in parts]
    if fields.prompt in obj and fields.response in obj:
        return [
            Segment(_string(obj, fields.prompt, piece), _weight(obj, "prompt_weight", fields.prompt_weight, piece)),
            Segment(_string(obj, fields.response, piece), _weight(obj, "response_weight", 1.0, piece)),
        ]
    if fields.text in obj:
        return [Segment(_string(obj, fields.text, piece), _weight(obj, "weight", 1.0, piece))]
    raise ConfigError(
        f"{piece.where}: no {fields.text!r} key and no {fields.prompt!r}/{fields.response!r} pair or "
        f"{SEGMENTS!r} list (keys: {', '.join(sorted(obj)) or 'none'}); choose the keys with "
        f"--text-key/--prompt-key/--response-key"
    )


def _string(obj: dict[str, Any], key: str, piece: Piece) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{piece.where}: {key!r} must be a string, got {value!r}")
    return value


def _weight(obj: dict[str, Any], key: str, default: float, piece: Piece) -> float:
    value = obj.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{piece.where}: {key!r} must be a loss weight in [0, 1], got {value!r}")
    return float(value)


def iter_texts(files: list[Path], fields: Fields, progress: ProgressFn | None = None) -> Iterator[str]:
    """Every document's text (its segments joined), e.g. to train a tokenizer on."""
    for path in files:
        for piece in iter_pieces(path, progress):
            if piece.is_json:
                yield "".join(seg.text for seg in parse_record(piece, fields))
            elif piece.data:
                yield piece.data.decode("utf-8", errors="replace")


def total_bytes(files: list[Path]) -> int:
    return sum(p.stat().st_size for p in files)
